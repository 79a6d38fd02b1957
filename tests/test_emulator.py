"""The embedded emulator: Batch jobs as local processes, request counting, fault injection,
`batchexec local`, and EmbeddedEmulator.

Everything runs against a real `batchexec local` server process (never moto's in-process
mock in the same process as a server). One server serves the module; tests that stop a
server start their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

import boto3
import botocore.config
import botocore.exceptions
import psutil
import pytest

from batchexec.aws import AwsClients
from batchexec.emulator.control import EmulatorControl
from batchexec.stack import deploy_stack, describe_stack

pytestmark = pytest.mark.timeout(120)

#: Slow the pre-RUNNING transitions down enough to observe them (4 x 0.15 s per job).
TRANSITION_DELAY = "0.15"
STACK = "emu"


def start_server(**env_overrides) -> tuple[subprocess.Popen, str]:
    """`python -m batchexec local --port 0`; returns the process and its first stdout line.
    Its stderr goes to a temporary file (`proc.stderr_log`), which nothing has to drain."""
    env = {**os.environ, **env_overrides}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchexec", "local", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        start_new_session=True,
    )
    proc.stderr_log = log
    line = proc.stdout.readline().decode()
    return proc, line


def server_stderr(proc: subprocess.Popen) -> str:
    proc.stderr_log.seek(0)
    return proc.stderr_log.read().decode(errors="replace")[-3000:]


def stop_server(proc: subprocess.Popen) -> int:
    assert proc.poll() is None, f"the server died early ({proc.returncode}): {server_stderr(proc)}"
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@pytest.fixture(scope="module")
def server():
    proc, line = start_server(BATCHEXEC_EMULATOR_TRANSITION_DELAY=TRANSITION_DELAY)
    endpoint = line.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", endpoint), line
    clients = AwsClients(region="us-east-1", endpoint_url=endpoint)
    deploy_stack(clients, STACK, {"DefaultWorkers": "3"})
    try:
        yield endpoint, clients, describe_stack(clients, STACK)
    finally:
        stop_server(proc)


@pytest.fixture()
def batch(server):
    return server[1].client("batch")


def submit(server, command, *, env=None, size=None, name="job"):
    _, clients, stack = server
    overrides = {"command": command}
    if env:
        overrides["environment"] = [{"name": k, "value": v} for k, v in env.items()]
    kwargs = {"arrayProperties": {"size": size}} if size else {}
    r = clients.client("batch").submit_job(
        jobName=name,
        jobQueue=stack.job_queue,
        jobDefinition=stack.job_definition,
        containerOverrides=overrides,
        **kwargs,
    )
    return r["jobId"]


def describe(batch, job_id):
    return batch.describe_jobs(jobs=[job_id])["jobs"][0]


def wait_for(batch, job_id, statuses=("SUCCEEDED", "FAILED"), timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = describe(batch, job_id)
        if job["status"] in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


def py(code: str) -> list[str]:
    return ["python", "-c", textwrap.dedent(code)]


# -- jobs as local processes --------------------------------------------------------------------


def test_job_runs_as_local_process_with_overrides(server, batch, tmp_path):
    out = tmp_path / "out.json"
    job_id = submit(
        server,
        py("""
            import json, os, sys
            keys = ["AWS_BATCH_JOB_ID", "AWS_BATCH_JQ_NAME", "AWS_ENDPOINT_URL", "AWS_REGION",
                    "BATCHEXEC_STACK", "MY_SETTING", "AWS_ACCESS_KEY_ID"]
            env = {k: os.environ.get(k) for k in keys}
            env["executable"] = sys.executable
            json.dump(env, open(os.environ["OUT"], "w"))
        """),
        env={"OUT": str(out), "MY_SETTING": "on"},
    )
    job = wait_for(batch, job_id)
    assert job["status"] == "SUCCEEDED", job.get("statusReason")
    assert job["container"]["exitCode"] == 0
    seen = json.loads(out.read_text())
    assert seen["AWS_BATCH_JOB_ID"] == job_id
    assert seen["AWS_BATCH_JQ_NAME"] == f"{STACK}-queue"
    assert seen["AWS_ENDPOINT_URL"] == server[0]  # the emulator's own endpoint by default
    assert seen["AWS_REGION"] == "us-east-1"
    assert seen["BATCHEXEC_STACK"] == STACK  # from the job definition's environment
    assert seen["MY_SETTING"] == "on"  # from containerOverrides
    assert seen["AWS_ACCESS_KEY_ID"]
    assert seen["executable"] == sys.executable  # "python" is the server's interpreter


def test_endpoint_override_reaches_the_job(server, batch, tmp_path):
    out = tmp_path / "endpoint"
    job_id = submit(
        server,
        py("import os; open(os.environ['OUT'], 'w').write(os.environ['AWS_ENDPOINT_URL'])"),
        env={"OUT": str(out), "AWS_ENDPOINT_URL": "http://proxy.invalid:1234"},
    )
    assert wait_for(batch, job_id)["status"] == "SUCCEEDED"
    assert out.read_text() == "http://proxy.invalid:1234"


def test_status_transitions_are_observable(server, batch):
    job_id = submit(server, py("import time; time.sleep(0.6)"))
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = describe(batch, job_id)["status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in ("SUCCEEDED", "FAILED"):
            break
        time.sleep(0.03)
    order = ["SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"]
    assert seen == sorted(seen, key=order.index), seen  # never goes backwards
    assert {"PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED"} <= set(seen), seen
    job = describe(batch, job_id)
    assert job["createdAt"] <= job["startedAt"] <= job["stoppedAt"]


def test_failing_exit_code_fails_the_job(server, batch):
    job_id = submit(server, py("import sys; sys.exit(7)"))
    job = wait_for(batch, job_id)
    assert job["status"] == "FAILED"
    assert job["container"]["exitCode"] == 7
    assert job["statusReason"] == "Essential container in task exited"


def test_array_children_each_see_their_index(server, batch, tmp_path):
    job_id = submit(
        server,
        py("""
            import os, pathlib
            i = os.environ["AWS_BATCH_JOB_ARRAY_INDEX"]
            (pathlib.Path(os.environ["OUT"]) / i).write_text(os.environ["AWS_BATCH_JOB_ID"])
        """),
        env={"OUT": str(tmp_path)},
        size=4,
    )
    parent = wait_for(batch, job_id)
    assert parent["status"] == "SUCCEEDED"
    assert parent["arrayProperties"]["size"] == 4
    assert parent["arrayProperties"]["statusSummary"]["SUCCEEDED"] == 4
    written = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert written == {str(i): f"{job_id}:{i}" for i in range(4)}
    children = batch.list_jobs(arrayJobId=job_id)["jobSummaryList"]
    assert sorted(c["jobId"] for c in children) == [f"{job_id}:{i}" for i in range(4)]


def test_array_parent_fails_when_a_child_fails(server, batch):
    job_id = submit(
        server, py("import os, sys; sys.exit(int(os.environ['AWS_BATCH_JOB_ARRAY_INDEX']))"), size=2
    )
    parent = wait_for(batch, job_id)
    assert parent["status"] == "FAILED"
    summary = parent["arrayProperties"]["statusSummary"]
    assert (summary["SUCCEEDED"], summary["FAILED"]) == (1, 1)
    child = describe(batch, f"{job_id}:1")
    assert child["container"]["exitCode"] == 1


SLEEPER = py("""
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(os.environ["OUT"] + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.rename(os.environ["OUT"] + ".tmp", os.environ["OUT"])
    time.sleep(300)
""")


def start_sleeper(endpoint: str, stack_name: str, out) -> list[int]:
    """Deploy a stack in the server at endpoint and run a SLEEPER job in it: its pids."""
    clients = AwsClients(region="us-east-1", endpoint_url=endpoint)
    deploy_stack(clients, stack_name)
    stack = describe_stack(clients, stack_name)
    clients.client("batch").submit_job(
        jobName="sleeper",
        jobQueue=stack.job_queue,
        jobDefinition=stack.job_definition,
        containerOverrides={
            "command": SLEEPER,
            "environment": [{"name": "OUT", "value": str(out)}],
        },
    )
    return read_pids(out)


def read_pids(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    return [int(p) for p in path.read_text().split()]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(gone(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if not gone(p)]


def test_terminate_kills_the_process_and_its_children(server, batch, tmp_path):
    out = tmp_path / "pids"
    job_id = submit(server, SLEEPER, env={"OUT": str(out)})
    pids = read_pids(out)
    assert describe(batch, job_id)["status"] == "RUNNING"
    assert not any(gone(p) for p in pids)
    batch.terminate_job(jobId=job_id, reason="test says stop")
    job = wait_for(batch, job_id, timeout=15)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "test says stop"
    assert job["container"]["exitCode"] == 128 + signal.SIGTERM
    assert wait_gone(pids) == []


def test_terminating_an_array_parent_stops_every_child(server, batch, tmp_path):
    job_id = submit(server, SLEEPER, env={"OUT": str(tmp_path / "pids")}, size=2)
    # both children write the same file name; wait until both are RUNNING instead
    deadline = time.monotonic() + 30
    while describe(batch, job_id)["arrayProperties"]["statusSummary"]["RUNNING"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    batch.terminate_job(jobId=job_id, reason="shutdown")
    parent = wait_for(batch, job_id, timeout=15)
    assert parent["status"] == "FAILED"
    assert parent["arrayProperties"]["statusSummary"]["FAILED"] == 2
    for i in range(2):
        assert describe(batch, f"{job_id}:{i}")["statusReason"] == "shutdown"


def test_cancel_before_start_never_runs_the_job(server, batch, tmp_path):
    out = tmp_path / "ran"
    job_id = submit(server, py("import os; open(os.environ['OUT'], 'w')"), env={"OUT": str(out)})
    batch.cancel_job(jobId=job_id, reason="changed my mind")  # within the 0.6 s before start
    job = wait_for(batch, job_id)
    assert job["status"] == "FAILED"
    assert job["statusReason"] == "changed my mind"
    assert not out.exists()


def test_output_lands_in_cloudwatch_logs(server, batch):
    _, clients, stack = server
    job_id = submit(
        server, py("import sys; print('hello stdout'); print('hello stderr', file=sys.stderr)")
    )
    job = wait_for(batch, job_id)
    stream = job["container"]["logStreamName"]
    assert stream == f"{STACK}-worker/default/{job_id}"
    events = clients.client("logs").get_log_events(
        logGroupName=stack.log_group, logStreamName=stream
    )["events"]
    assert sorted(e["message"] for e in events) == ["hello stderr", "hello stdout"]


# -- request accounting and fault injection -------------------------------------------------


def client(server, service, mode="standard", attempts=1):
    """A boto3 client making at most `attempts` attempts (botocore's `max_attempts` counts
    retries, `total_max_attempts` counts the first try too)."""
    config = botocore.config.Config(retries={"mode": mode, "total_max_attempts": attempts})
    return boto3.client(
        service,
        endpoint_url=server[0],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    )


@pytest.fixture()
def counts(server):
    """Counts of this test's requests only (the module's jobs make none: their commands
    are plain Python)."""
    control = EmulatorControl(server[0])
    control.clear_faults()
    control.reset_requests()
    yield control.requests
    control.clear_faults()


def test_requests_are_counted_per_operation_and_reset(server, counts):
    sqs, s3 = client(server, "sqs"), client(server, "s3")
    sqs.list_queues()
    sqs.list_queues()
    s3.put_object(Bucket=server[2].bucket, Key="sessions/x", Body=b"1")
    s3.get_object(Bucket=server[2].bucket, Key="sessions/x")
    client(server, "cloudformation").describe_stacks(StackName=STACK)
    client(server, "batch").describe_job_queues()
    assert counts() == {
        "sqs.ListQueues": 2,
        "s3.PutObject": 1,
        "s3.GetObject": 1,
        "cloudformation.DescribeStacks": 1,
        "batch.DescribeJobQueues": 1,
    }  # and the control-plane GETs themselves are not counted
    EmulatorControl(server[0]).reset_requests()
    assert counts() == {}


@pytest.mark.parametrize(
    "service, call, code, status",
    [
        ("sqs", lambda c: c.list_queues(), "ThrottlingException", 400),  # JSON, query-compatible
        ("logs", lambda c: c.describe_log_groups(), "ThrottlingException", 400),  # JSON
        ("s3", lambda c: c.list_buckets(), "SlowDown", 503),  # rest-xml
        ("batch", lambda c: c.describe_job_queues(), "TooManyRequestsException", 429),
        ("cloudformation", lambda c: c.list_stacks(), "Throttling", 400),  # query
        ("ec2", lambda c: c.describe_vpcs(), "RequestLimitExceeded", 503),  # ec2
    ],
)
def test_injected_faults_parse_as_that_aws_error(server, counts, service, call, code, status):
    op = {"sqs": "ListQueues", "logs": "DescribeLogGroups", "s3": "ListBuckets",
          "batch": "DescribeJobQueues", "cloudformation": "ListStacks",
          "ec2": "DescribeVpcs"}[service]  # fmt: skip
    EmulatorControl(server[0]).add_fault(f"{service}.{op}", code=code, status=status)
    c = client(server, service, attempts=1)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call(c)
    assert info.value.response["Error"]["Code"] == code
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    call(c)  # the fault was used up: the next call succeeds
    assert counts() == {f"{service}.{op}": 2}


@pytest.mark.parametrize("mode", ["standard", "adaptive"])
def test_botocore_retries_injected_throttling_then_succeeds(server, counts, mode):
    sqs = client(server, "sqs", mode=mode, attempts=4)
    url = sqs.create_queue(QueueName=f"{STACK}-faults-{mode}")["QueueUrl"]
    control = EmulatorControl(server[0])
    control.add_fault("SendMessageBatch", count=2, code="ThrottlingException")
    r = sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "1", "MessageBody": "x"}])
    assert [e["Id"] for e in r["Successful"]] == ["1"]
    assert r["ResponseMetadata"]["RetryAttempts"] == 2
    assert counts()["sqs.SendMessageBatch"] == 3
    assert control.faults() == []


def test_more_faults_than_retries_surface_the_throttling(server, counts):
    s3 = client(server, "s3", attempts=2)
    control = EmulatorControl(server[0])
    control.add_fault("s3.PutObject", count=5, code="SlowDown", status=503)
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.put_object(Bucket=server[2].bucket, Key="sessions/y", Body=b"2")
    assert info.value.response["Error"]["Code"] == "SlowDown"
    assert counts()["s3.PutObject"] == 2
    assert control.faults()[0]["count"] == 3


def test_an_entry_fault_refuses_one_entry_as_sqs_reports_a_partial_batch_failure(server, counts):
    sqs = client(server, "sqs")
    url = sqs.create_queue(QueueName=f"{STACK}-partial-tasks")["QueueUrl"]
    other = sqs.create_queue(QueueName=f"{STACK}-partial-results")["QueueUrl"]
    control = EmulatorControl(server[0])
    control.add_fault("SendMessageBatch", entry=1, queue="-tasks", code="InvalidMessageContents")
    entries = [{"Id": str(i), "MessageBody": f"body {i}"} for i in range(3)]
    assert not sqs.send_message_batch(QueueUrl=other, Entries=entries).get("Failed")  # queue
    single = sqs.send_message_batch(QueueUrl=url, Entries=entries[:1])  # no entry 1: untouched
    assert [e["Id"] for e in single["Successful"]] == ["0"] and not single.get("Failed")
    r = sqs.send_message_batch(QueueUrl=url, Entries=entries)
    assert sorted(e["Id"] for e in r["Successful"]) == ["0", "2"]
    (failed,) = r["Failed"]
    assert failed["Id"] == "1" and failed["Code"] == "InvalidMessageContents"
    assert failed["SenderFault"] is True
    assert control.faults() == []  # used up, but the refused body stays refused on a retry
    again = sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "x", "MessageBody": "body 1"}])
    assert again["Successful"] == [] and again["Failed"][0]["Id"] == "x"
    bodies = sorted(m["Body"] for m in sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10)["Messages"])
    assert bodies == ["body 0", "body 0", "body 2"]  # what SQS accepted, and only that
    control.clear_faults()
    assert not sqs.send_message_batch(QueueUrl=url, Entries=entries[1:2]).get("Failed")


def test_bad_fault_spec_is_a_400(server):
    with pytest.raises(urllib.error.HTTPError) as info:
        EmulatorControl(server[0]).add_fault("X", bogus=1)
    assert info.value.code == 400


# -- `batchexec local` and EmbeddedEmulator ----------------------------------------------------


def test_local_prints_endpoint_first_and_leaves_no_orphans_on_sigterm(tmp_path):
    proc, line = start_server()
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+\n", line), line
        pids = start_sleeper(line.strip(), "orphans", tmp_path / "pids")
    finally:
        rc = stop_server(proc)
    assert rc == 0, server_stderr(proc)
    assert wait_gone(pids) == []


def test_local_reports_a_busy_port_in_one_line(server):
    port = server[0].rsplit(":", 1)[1]
    r = subprocess.run(
        [sys.executable, "-m", "batchexec", "local", "--port", port],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "cannot serve" in r.stderr


def test_embedded_emulator_start_deploy_and_close(tmp_path, monkeypatch):
    # A module importable only through the client's sys.path: workers must import it too.
    (tmp_path / "usermod_for_emulator.py").write_text("VALUE = 'imported by reference'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from batchexec.emulator import EmbeddedEmulator

    t0 = time.monotonic()
    emulator = EmbeddedEmulator.start(stack_name="embedded", parameters={"MaxvCpus": "16"})
    elapsed = time.monotonic() - t0
    try:
        assert elapsed < 20, elapsed  # typically ~2 s
        clients = AwsClients(region="us-east-1", endpoint_url=emulator.endpoint_url)
        stack = describe_stack(clients, emulator.stack_name)
        assert stack.default_workers == os.cpu_count()
        out = tmp_path / "out"
        job_id = clients.client("batch").submit_job(
            jobName="import",
            jobQueue=stack.job_queue,
            jobDefinition=stack.job_definition,
            containerOverrides={
                "command": py(
                    "import os, usermod_for_emulator as m; open(os.environ['OUT'], 'w')"
                    ".write(m.VALUE)"
                ),
                "environment": [{"name": "OUT", "value": str(out)}],
            },
        )["jobId"]
        job = wait_for(clients.client("batch"), job_id)
        assert job["status"] == "SUCCEEDED", job.get("statusReason")
        assert out.read_text() == "imported by reference"
        server_pid = emulator.pid
    finally:
        emulator.close()
    assert not emulator.running
    assert gone(server_pid)
    emulator.close()  # idempotent
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        client((emulator.endpoint_url,), "sqs").list_queues()


def test_embedded_emulator_failure_is_clear(tmp_path, monkeypatch):
    from batchexec.emulator import EmbeddedEmulator, EmulatorStartError

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'boom: no moto here' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    with pytest.raises(EmulatorStartError) as info:
        EmbeddedEmulator.start(timeout=10)
    assert "status 3" in str(info.value) and "boom: no moto here" in str(info.value)


def test_moto_internals_we_patch_still_exist():
    """setup.cfg pins moto because jobs.py replaces these; fail loudly when they move."""
    code = textwrap.dedent("""
        import moto
        from moto.batch.models import BatchBackend, Job
        for name in ("run", "describe_short", "_container_details", "_get_container_property",
                     "terminate", "_mark_stopped", "_start_attempt", "_add_parameters_to_command",
                     "_get_attempt_duration", "_wait_for_dependencies"):
            assert callable(getattr(Job, name)), name
        assert callable(BatchBackend.cancel_job)
        from batchexec.emulator import jobs
        jobs.install("http://127.0.0.1:1")
        assert Job.run is jobs.run_local_job
        print(moto.__version__)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    major, minor = (int(x) for x in r.stdout.strip().split(".")[:2])
    assert (5, 1) <= (major, minor) < (5, 3), "moto outside the range setup.cfg pins"


def test_the_speedups_leave_moto_answers_unchanged():
    """speedups.py replaces moto internals to save CPU; the answers must stay moto's (that
    the names exist is test_emulator_server's test of speedups.PATCHED)."""
    code = textwrap.dedent(r"""
        import hashlib
        from moto.core.responses import BaseResponse
        from moto.sqs.models import Message
        from batchexec.emulator import speedups
        speedups.install()
        m = Message("id", "h\u00e9llo")
        assert m.body_md5 == hashlib.md5("h\u00e9llo".encode()).hexdigest() == m.body_md5
        m.body = "changed"  # never done by moto, but a cache must not hide it
        assert m.body_md5 == hashlib.md5(b"changed").hexdigest()
        headers, body = BaseResponse._enrich_response({"status": 200},
                                                      "<R><RequestId>old</RequestId></R>")
        assert body == f"<R><RequestId>{headers['x-amzn-requestid']}</RequestId></R>"
        assert headers["status"] == "200"
        headers, body = BaseResponse._enrich_response({"status": 200}, '{"Messages": []}')
        assert body == '{"Messages": []}' and len(headers["x-amzn-requestid"]) == 52
        assert headers["status"] == "200"
        import moto.core.responses as responses
        assert responses.parse_qsl("Action=ListQueues&b=%7B") == [("Action", "ListQueues"),
                                                                   ("b", "{")]
        assert responses.parse_qsl('{"QueueUrl": "q=1&x"}') == []
        import json
        from moto.core.serialize import BaseJSONSerializer
        class Serializer:
            pretty_print = False
        body = {"Messages": [{"Body": 'q"\\\u00e9\n' + "A" * 5000, "N": 2**40, "F": 0.1}]}
        assert json.loads(BaseJSONSerializer._serialize_body(Serializer(), body)) == body
        odd = {"Body": "\ud800", "Big": 2**70}  # orjson refuses both: the library's answer
        assert BaseJSONSerializer._serialize_body(Serializer(), odd) == json.dumps(odd)
        Serializer.pretty_print = True
        assert BaseJSONSerializer._serialize_body(Serializer(), body) == json.dumps(body, indent=4)
        from moto.core.parse import BaseJSONParser
        class Parser:
            DEFAULT_ENCODING = "utf-8"
        send = '{"QueueUrl": "q", "Entries": [{"Id": "1", "MessageBody": "{\\"v\\": 4}"}]}'
        for request in [send, '{"Big": 18446744073709551616, "F": 0.5}', '{"N": NaN}',
                        "not JSON", "", '{"S": "\\ud800"}', '{"a": 1}'.encode("utf-16"),
                        b'{"b": 2}']:
            got = BaseJSONParser._parse_body_as_json(Parser(), request)
            want = json.loads(request) if request and request != "not JSON" else (
                {"message": request} if request else {})
            assert repr(got) == repr(want), (request, got, want)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


CLIENT = textwrap.dedent("""
    import sys, time
    from batchexec.emulator import EmbeddedEmulator
    emulator = EmbeddedEmulator.start(stack_name="client")
    print(emulator.pid, flush=True)
    if sys.argv[1] == "hang":
        time.sleep(300)
    # "forget": once told (so the test saw the server alive first), exit without close();
    # weakref.finalize must stop the server
    sys.stdin.readline()
""")


@pytest.mark.parametrize("how", ["forget", "hang"])
def test_a_client_that_forgets_or_is_killed_leaks_no_emulator(how):
    client_proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, how], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )
    try:
        server_pid = int(client_proc.stdout.readline())
        assert not gone(server_pid)
        if how == "hang":
            client_proc.kill()  # SIGKILL: no finalizer runs; the server must notice by itself
        else:
            client_proc.stdin.write("exit\n")
            client_proc.stdin.flush()
        client_proc.wait(timeout=30)
    finally:
        if client_proc.poll() is None:
            client_proc.kill()
    assert wait_gone([server_pid], timeout=15) == []
