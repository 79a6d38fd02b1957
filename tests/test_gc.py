"""`batchexec gc`: which sessions count as gone, what is removed, and what is never touched.

Sessions are made by hand here exactly as a client makes them (two tagged queues named after
the stack, objects under sessions/<id>/) in a stack of their own on the shared emulator, and
time is moved forward by handing `collect` a clock, since queues cannot be made old.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from batchexec import gc
from batchexec.aws import AwsClients
from batchexec.errors import ConfigurationError
from batchexec.stack import deploy_stack, describe_stack, session_queue_names

pytestmark = pytest.mark.timeout(120)

STACK = "gc-tests"
HOUR = 3600.0


@pytest.fixture(scope="module")
def clients(emulator):
    clients = AwsClients(region="us-east-1", endpoint_url=emulator.endpoint_url)
    deploy_stack(clients, STACK)
    return clients


@pytest.fixture(scope="module")
def stack(clients):
    return describe_stack(clients, STACK)


def make_session(clients, stack, session, *, heartbeat=None, objects=2, stack_tag=STACK):
    sqs, s3 = clients.client("sqs"), clients.client("s3")
    tags = {"batchexec:session": session, "batchexec:stack": stack_tag}
    if heartbeat is not None:
        tags[gc.HEARTBEAT_TAG] = str(int(heartbeat))
    urls = [sqs.create_queue(QueueName=name, tags=tags)["QueueUrl"]
            for name in session_queue_names(stack.name, session)]  # fmt: skip
    for i in range(objects):
        s3.put_object(Bucket=stack.bucket, Key=f"sessions/{session}/blob-{i}", Body=b"x")
    return urls


def queue_exists(clients, url) -> bool:
    name = url.rsplit("/", 1)[-1]
    urls = clients.client("sqs").list_queues(QueueNamePrefix=name).get("QueueUrls", [])
    return url in urls


def keys(clients, stack, session):
    listing = clients.client("s3").list_objects_v2(Bucket=stack.bucket,
                                                   Prefix=f"sessions/{session}/")  # fmt: skip
    return [o["Key"] for o in listing.get("Contents", [])]


def test_gone_sessions_are_removed_and_live_ones_kept(clients, stack):
    later = time.time() + 2 * HOUR
    dead = make_session(clients, stack, "dead0001")  # no heartbeat: judged by creation time
    beating = make_session(clients, stack, "live0001", heartbeat=later - 60)
    stale = make_session(clients, stack, "stale001", heartbeat=time.time() - HOUR)

    report = gc.collect(clients, stack, older_than=HOUR, now=lambda: later)

    assert [s.session for s in report.removed] == ["dead0001", "stale001"]
    assert [s.session for s in report.kept] == ["live0001"]
    assert not any(queue_exists(clients, u) for u in dead + stale)
    assert all(queue_exists(clients, u) for u in beating)
    assert keys(clients, stack, "dead0001") == keys(clients, stack, "stale001") == []
    assert len(keys(clients, stack, "live0001")) == 2
    lines = report.lines()
    assert any(line.startswith("removed session dead0001") and "no heartbeat" in line
               for line in lines)  # fmt: skip
    assert any(line.startswith("removed session stale001") and "no heartbeat" not in line
               and "2 object(s)" in line for line in lines)  # fmt: skip
    assert lines[-1] == "kept 1 live session(s): live0001"


def test_young_sessions_are_kept_even_without_a_heartbeat(clients, stack):
    urls = make_session(clients, stack, "young001")
    report = gc.collect(clients, stack, older_than=HOUR)
    assert "young001" in [s.session for s in report.kept]
    assert all(queue_exists(clients, u) for u in urls)


def test_dry_run_lists_but_removes_nothing(clients, stack):
    urls = make_session(clients, stack, "dryrun01")
    report = gc.collect(clients, stack, older_than=HOUR, dry_run=True,
                        now=lambda: time.time() + 2 * HOUR)  # fmt: skip
    assert "dryrun01" in [s.session for s in report.removed]
    assert any(line.startswith("would remove session dryrun01") for line in report.lines())
    assert all(queue_exists(clients, u) for u in urls)
    assert len(keys(clients, stack, "dryrun01")) == 2


def test_other_stacks_and_untagged_queues_are_never_touched(clients, stack):
    """Stack "gc-tests-b" extends this stack's name; a queue named like ours but not tagged
    as ours (someone else's) is left alone too."""
    sqs = clients.client("sqs")
    extended = sqs.create_queue(
        QueueName="gc-tests-b_other001-tasks",
        tags={"batchexec:session": "other001", "batchexec:stack": "gc-tests-b"},
    )["QueueUrl"]  # fmt: skip
    untagged = sqs.create_queue(QueueName="gc-tests_handmade-tasks")["QueueUrl"]
    foreign = make_session(clients, stack, "foreign1", stack_tag="someone-else", objects=0)

    report = gc.collect(clients, stack, older_than=HOUR, now=lambda: time.time() + 2 * HOUR)

    removed = {s.session for s in report.removed}
    assert not removed & {"other001", "foreign1", "handmade"}
    assert all(queue_exists(clients, u) for u in [extended, untagged, *foreign])


def test_payload_prefixes_without_queues_are_removed_when_old(clients, stack):
    s3 = clients.client("s3")
    s3.put_object(Bucket=stack.bucket, Key="sessions/orphan01/result-1", Body=b"x")
    s3.put_object(Bucket=stack.bucket, Key="data/keep-me", Body=b"x")

    report = gc.collect(clients, stack, older_than=HOUR)  # too young
    assert report.orphan_prefixes == []
    report = gc.collect(clients, stack, older_than=HOUR, now=lambda: time.time() + 2 * HOUR)
    assert ("orphan01", 1) in report.orphan_prefixes
    assert keys(clients, stack, "orphan01") == []
    assert s3.head_object(Bucket=stack.bucket, Key="data/keep-me")


@pytest.mark.parametrize("text, seconds", [
    ("90m", 5400), ("24h", 86400), ("1h30m", 5400), ("2d", 172800), ("3600", 3600),
    ("1.5h", 5400), ("1w", 604800),
])  # fmt: skip
def test_parse_duration(text, seconds):
    assert gc.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "5x", "1h 30m", "-1h", "24hours"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ConfigurationError, match="90m, 24h"):
        gc.parse_duration(text)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "batchexec", "gc", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_cli_refuses_durations_shorter_than_three_heartbeats(clients):
    r = run_cli("--name", STACK, "--older-than", "5m", "--endpoint-url", clients.endpoint_url)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "shorter than three client heartbeats" in r.stderr


def test_cli_lists_what_it_would_remove(clients, stack):
    make_session(clients, stack, "clidry01")
    r = run_cli("--name", STACK, "--dry-run", "--endpoint-url", clients.endpoint_url)
    assert r.returncode == 0, r.stderr
    assert "clidry01" in r.stdout and "kept" in r.stdout  # one minute old: live


def test_cli_on_a_missing_stack_is_one_line(clients):
    r = run_cli("--name", "no-such-stack", "--endpoint-url", clients.endpoint_url)
    assert r.returncode == 2 and "batchexec stack deploy --name no-such-stack" in r.stderr
