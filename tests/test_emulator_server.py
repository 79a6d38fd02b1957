"""The emulator's HTTP server: kept-alive connections, framing, long polls, stopping.

`batchexec local` keeps HTTP/1.1 connections open (batchexec/emulator/keepalive.py): each AWS
call no longer pays a TCP connect and a server thread. These tests hold it to what that
must not break: a body the application did not read must not be taken for the next request,
many clients long-polling at once must not starve anyone else (a fixed pool of request
threads would), and SIGTERM must still stop the server, and its jobs, with connections open.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading

import boto3
import botocore.config
import psutil
import pytest
from test_emulator import server_stderr, start_server, start_sleeper, stop_server, wait_gone

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def endpoint():
    proc, line = start_server()
    try:
        yield line.strip()
    finally:
        assert stop_server(proc) == 0, server_stderr(proc)


def sqs_client(endpoint: str, pool: int = 10):
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    ).client(
        "sqs",
        endpoint_url=endpoint,
        config=botocore.config.Config(max_pool_connections=pool, retries={"max_attempts": 0}),
    )


def connection(endpoint: str) -> http.client.HTTPConnection:
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=10)


def local_ports_to(port: int) -> set[int]:
    """This process's established TCP connections to `port`, by local port."""
    return {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    }


def test_boto3_calls_reuse_one_connection(endpoint):
    sqs = sqs_client(endpoint)
    port = int(endpoint.rsplit(":", 1)[1])
    url = sqs.create_queue(QueueName="keepalive")["QueueUrl"]
    seen = set()
    for i in range(20):  # bodies in, bodies out: the framing must hold across calls
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}")
        seen |= local_ports_to(port)
        got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)["Messages"]
        sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
        seen |= local_ports_to(port)
    # A server that closes connections leaves none open after a call (empty set); one that
    # keeps them serves all 60 calls on the first connection.
    assert len(seen) == 1, seen


def test_a_body_the_application_did_not_read_is_drained(endpoint):
    conn = connection(endpoint)
    conn.request("POST", "/_batchexec/no-such-endpoint", body=b"x" * 100_000)
    r = conn.getresponse()
    assert r.status == 404 and "no control endpoint" in json.loads(r.read())["error"]
    assert r.getheader("Connection") != "close"
    sock = conn.sock
    conn.request("GET", "/_batchexec/faults")  # parsed from where the socket really is
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read()) == []
    assert conn.sock is sock  # the same connection, not a reconnect
    conn.close()


def test_an_unread_chunked_body_is_drained_to_its_last_chunk(endpoint):
    conn = connection(endpoint)
    conn.request("POST", "/_batchexec/no-such-endpoint", body=iter([b"x" * 70_000, b"y" * 10]),
                 encode_chunked=True, headers={"Transfer-Encoding": "chunked"})  # fmt: skip
    r = conn.getresponse()
    assert r.status == 404, r.read()
    r.read()
    sock = conn.sock
    conn.request("GET", "/_batchexec/faults")
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read()) == []
    assert conn.sock is sock
    conn.close()


def test_a_chunked_body_reaches_whoever_reads_it(endpoint):
    """A body without Content-Length (chunked) is read whole, not taken as empty."""
    spec = {"operation": "GetQueueUrl", "count": 1, "code": "ThrottlingException",
            "status": 400}
    body = json.dumps(spec).encode()
    conn = connection(endpoint)
    conn.request("POST", "/_batchexec/faults", body=iter([body[:10], body[10:]]),
                 encode_chunked=True, headers={"Transfer-Encoding": "chunked"})  # fmt: skip
    r = conn.getresponse()
    assert r.status == 200, r.read()
    r.read()
    conn.request("GET", "/_batchexec/faults")
    armed = json.loads(conn.getresponse().read())
    conn.request("DELETE", "/_batchexec/faults")
    conn.getresponse().read()
    conn.close()
    assert [(f["operation"], f["code"]) for f in armed] == [("GetQueueUrl",
                                                             "ThrottlingException")]


def test_connection_close_and_http10_are_honoured(endpoint):
    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    for request in (b"GET /_batchexec/faults HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    b"GET /_batchexec/faults HTTP/1.0\r\n\r\n"):  # fmt: skip
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):  # returns b"" only when the server closes
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"200" and json.loads(body) == []


def test_many_long_polls_do_not_starve_other_requests(endpoint):
    """More clients long-polling at once than any fixed request pool would hold (a benchmark
    runs 64 workers that each long-poll): other calls still go through while every poll
    is waiting, and a message for each poll ends them all."""
    polls = 80
    sqs = sqs_client(endpoint, pool=polls + 5)
    url = sqs.create_queue(QueueName="many-polls")["QueueUrl"]
    other = sqs_client(endpoint)
    results: list[int] = []
    lock = threading.Lock()

    def poll():
        got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20, MaxNumberOfMessages=1)
        with lock:
            results.append(len(got.get("Messages", [])))

    threads = [threading.Thread(target=poll, daemon=True) for _ in range(polls)]
    for t in threads:
        t.start()
    port = int(endpoint.rsplit(":", 1)[1])
    deadline = 30
    while len(local_ports_to(port)) < polls and deadline:  # every poll is on the server
        threading.Event().wait(0.1)
        deadline -= 0.1
    # Other calls are answered while all the polls wait (none has returned yet).
    side = other.create_queue(QueueName="many-polls-side")["QueueUrl"]
    for i in range(5):
        other.send_message(QueueUrl=side, MessageBody=str(i))
    assert (
        other.get_queue_attributes(QueueUrl=side, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"
        ]["ApproximateNumberOfMessages"]
        == "5"
    )
    assert results == [], "a poll returned before any message was sent"
    for start in range(0, polls, 10):
        other.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(start, start + 10)],
        )
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [1] * polls


def test_sigterm_stops_the_server_and_its_jobs_with_connections_open(tmp_path):
    proc, line = start_server()
    try:
        endpoint = line.strip()
        pids = start_sleeper(endpoint, "sigterm", tmp_path / "pids")
        # An idle kept-alive connection and a long poll in progress while the signal comes.
        idle = connection(endpoint)
        idle.request("GET", "/_batchexec/faults")
        idle.getresponse().read()
        sqs = sqs_client(endpoint)
        url = sqs.create_queue(QueueName="sigterm")["QueueUrl"]
        poller = threading.Thread(
            target=lambda: _swallow(sqs.receive_message, QueueUrl=url, WaitTimeSeconds=20),
            daemon=True,
        )
        poller.start()
        threading.Event().wait(0.5)
    finally:
        rc = stop_server(proc)  # SIGTERM; fails the test if it does not exit within 15 s
    assert rc == 0, server_stderr(proc)
    assert wait_gone(pids) == []
    idle.close()


def _swallow(fn, **kwargs):
    try:
        fn(**kwargs)
    except Exception:  # the server went away under the poll: expected here
        pass


def test_moto_internals_the_speedups_patch_still_exist():
    """setup.cfg pins moto because speedups.py replaces these; fail loudly when they move."""
    code = textwrap.dedent("""
        import importlib
        from batchexec.emulator import speedups, sqs_lock
        for module, name in speedups.PATCHED + sqs_lock.PATCHED:
            obj = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
            assert callable(obj) or isinstance(obj, property), (module, name)
        speedups.install()
        speedups.install()  # idempotent
        sqs_lock.install()
        sqs_lock.install()
        from moto.sqs.models import Queue
        assert Queue.wait_for_messages._batchexec_lets_go
        inner = [c.cell_contents for c in Queue.wait_for_messages.__closure__
                 if callable(c.cell_contents)]
        assert not any(hasattr(f, "_batchexec_lets_go") for f in inner)  # not wrapped twice
        import moto.core.responses as r
        from moto.sqs.responses import SQSResponse
        assert "send_message" in r.method_names_from_class(SQSResponse)
        assert r.camelcase_to_underscores("MessageRetentionPeriod") == "message_retention_period"
        headers = {}
        assert len(r.gen_amzn_requestid_long(headers)) == 52 and headers["x-amzn-requestid"]
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MOTO_PORT": "5000"})  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_sqs_calls_answered_without_flask_match_moto_app_answers():
    """sqs_direct.py takes SQS's JSON calls past moto's Flask app: same status, headers and
    body as through the app, errors and IAM enforcement included (in a fresh process: the
    comparison drives moto's global state)."""
    code = textwrap.dedent("""
        import json
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.test import Client
        from batchexec.emulator import moto_fixes, speedups
        from batchexec.emulator.sqs_direct import SqsDirect

        moto_fixes.install()
        speedups.install()
        via_flask = DomainDispatcherApplication(create_backend_app)
        direct = SqsDirect(via_flask)

        def call(app, op, body, key="AKIAIOSFODNN7EXAMPLE"):
            auth = (f"AWS4-HMAC-SHA256 Credential={key}/20261125/us-east-1/sqs/aws4_request, "
                    "SignedHeaders=host, Signature=00")
            r = Client(app).post("/", data=json.dumps(body), headers={
                "X-Amz-Target": "AmazonSQS." + op, "Authorization": auth,
                "Content-Type": "application/x-amz-json-1.0", "Host": "localhost:5000"})
            headers = {k: v for k, v in r.headers.items()
                       if k.lower() not in ("date", "x-amzn-requestid")}
            data = r.get_data()
            return r.status, headers, json.loads(data) if data.startswith(b"{") else data

        url = call(via_flask, "CreateQueue", {"QueueName": "q"})[2]["QueueUrl"]
        entry = {"Id": "0", "MessageBody": "hello", "MessageAttributes": {
            "a": {"DataType": "String", "StringValue": "b"}}}
        for op, body in [
            ("GetQueueUrl", {"QueueName": "q"}),
            ("GetQueueUrl", {"QueueName": "missing"}),
            ("ReceiveMessage", {"QueueUrl": url + "-missing"}),
            ("GetQueueAttributes", {"QueueUrl": url, "AttributeNames": ["VisibilityTimeout"]}),
            ("SendMessageBatch", {"QueueUrl": url, "Entries": [entry, {**entry, "Id": "1"}]}),
        ]:
            a, b = call(via_flask, op, body), call(direct, op, body)
            if op == "SendMessageBatch":  # message ids differ; the rest must not
                for r in (a, b):
                    for ok in r[2]["Successful"]:
                        ok.pop("MessageId")
            assert a == b, (op, a, b)
        received = call(direct, "ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 10,
                                                   "MessageAttributeNames": ["All"]})
        assert received[0] == "200 OK" and len(received[2]["Messages"]) == 4, received
        assert received[2]["Messages"][0]["MessageAttributes"]["a"]["StringValue"] == "b"

        # IAM enforcement on: an unknown key is refused the same way on both paths.
        Client(via_flask).post("/moto-api/reset-auth", data="0",
                               headers={"Content-Type": "text/plain"})
        a = call(via_flask, "GetQueueUrl", {"QueueName": "q"}, key="AKIAUNKNOWNKEY000000")
        b = call(direct, "GetQueueUrl", {"QueueName": "q"}, key="AKIAUNKNOWNKEY000000")
        assert a == b and a[0].startswith("403"), (a, b)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MOTO_PORT": "5000"})  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


SQS_FAST_COMPARISON = textwrap.dedent("""
    import json, sys
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.test import Client
    from batchexec.emulator import moto_fixes, speedups
    from batchexec.emulator.sqs_direct import SqsDirect
    from batchexec.emulator.sqs_fast import SqsFastPath

    moto_fixes.install()
    speedups.install()
    slow = SqsDirect(DomainDispatcherApplication(create_backend_app))
    fast = SqsFastPath(slow)
    passed_on = []  # the three calls, when the fast path handed them to moto's responder
    HOT = ("SendMessageBatch", "ReceiveMessage", "DeleteMessageBatch")

    def spy(environ, start):
        if environ["HTTP_X_AMZ_TARGET"][10:] in HOT:
            passed_on.append(environ["HTTP_X_AMZ_TARGET"][10:])
        return slow(environ, start)

    fast.app = spy

    # The same calls in two regions, which moto keeps apart: moto's responder answers in one,
    # the fast path in the other, so their states and answers must stay alike.
    def call(app, region, op, body, key="AKIAIOSFODNN7EXAMPLE"):
        auth = (f"AWS4-HMAC-SHA256 Credential={key}/20261125/{region}/sqs/aws4_request, "
                "SignedHeaders=host, Signature=00")
        r = Client(app).post("/", data=json.dumps(body), headers={
            "X-Amz-Target": "AmazonSQS." + op, "Authorization": auth,
            "Content-Type": "application/x-amz-json-1.0", "Host": "localhost:5000"})
        headers = sorted((k.lower(), v) for k, v in r.headers.items()
                         if k.lower() not in ("date", "x-amzn-requestid", "content-length"))
        data = r.get_data()
        answer = json.loads(data) if data.startswith(b"{") else data
        handles = {}
        if isinstance(answer, dict):  # ids differ between the regions: compare their shape
            for item in answer.get("Successful", []) + answer.get("Messages", []):
                if "ReceiptHandle" in item:
                    handles[item["MessageId"]] = item.pop("ReceiptHandle")
                item.pop("MessageId", None)
                for stamp in ("SentTimestamp", "ApproximateFirstReceiveTimestamp"):
                    if stamp in item.get("Attributes", {}):  # a millisecond apart
                        item["Attributes"][stamp] = "a time"
        return (r.status, headers, answer), handles

    def both(op, body, **kw):
        a, ha = call(slow, "us-east-1", op, body, **kw)
        b, hb = call(fast, "eu-west-1", op, body, **kw)
        assert a == b, (op, body, a, b)
        return a, list(ha.values()), list(hb.values())

    def created(name, **attributes):
        urls = [call(app, region, "CreateQueue", {"QueueName": name, "Attributes": {
                    k: v.replace("REGION", region) for k, v in attributes.items()}})
                [0][2]["QueueUrl"] for app, region in ((slow, "us-east-1"), (fast, "eu-west-1"))]
        assert urls[0] == urls[1], urls
        return urls[0]

    url = created("q", VisibilityTimeout="30")
    dlq = created("dlq")
    redriven = created("r", RedrivePolicy=json.dumps({
        "deadLetterTargetArn": "arn:aws:sqs:REGION:123456789012:dlq", "maxReceiveCount": 1}))
    mac = {"DataType": "String", "StringValue": "m" * 44}
    version = {"DataType": "Number", "StringValue": "4"}
    entry = {"Id": "0", "MessageBody": '{"v": 4, "caf\\u00e9": "\\\\"}',
             "MessageAttributes": {"bx-mac": mac, "bx-v": version}}
    plain = [
        ("SendMessageBatch", {"QueueUrl": url, "Entries": [entry, {**entry, "Id": "1"}]}),
        ("SendMessageBatch", {"QueueUrl": url, "Entries": [{"Id": "p", "MessageBody": "x"}]}),
        ("ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 1, "WaitTimeSeconds": 0,
                            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
                            "MessageAttributeNames": ["All"]}),
        ("ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 10,
                            "AttributeNames": ["All"], "MessageAttributeNames": ["bx-v"]}),
        ("ReceiveMessage", {"QueueUrl": url, "WaitTimeSeconds": 0}),  # empty: {}
    ]
    for op, body in plain:
        answer, slow_handles, fast_handles = both(op, body)
    assert passed_on == [], passed_on  # batchexec's own calls never reach moto's responder
    receipts = both("ReceiveMessage", {"QueueUrl": url, "VisibilityTimeout": 0,
                                       "MaxNumberOfMessages": 10})
    # (all three are invisible for 30 s: none to receive)
    assert receipts[0][2] == {}, receipts

    # Visibility 0, then received again: receive counts move alike.
    both("SendMessageBatch", {"QueueUrl": redriven, "Entries": [{"Id": "a", "MessageBody": "y"}]})
    first = both("ReceiveMessage", {"QueueUrl": redriven, "VisibilityTimeout": 0,
                                    "AttributeNames": ["All"]})
    # maxReceiveCount 1: the second receive moves it to the dead-letter queue, on both paths
    both("ReceiveMessage", {"QueueUrl": redriven, "AttributeNames": ["All"]})
    moved = both("ReceiveMessage", {"QueueUrl": dlq, "MessageSystemAttributeNames": ["All"],
                                    "VisibilityTimeout": 0})
    assert len(moved[0][2].get("Messages", [])) == 1, moved

    # Deletes: good receipts, an unknown one, and the answer for each.
    got = both("ReceiveMessage", {"QueueUrl": dlq, "VisibilityTimeout": 0})
    entries = lambda handles: [{"Id": "d0", "ReceiptHandle": handles[0]},
                               {"Id": "d1", "ReceiptHandle": "not-a-receipt"}]
    a, _ = call(slow, "us-east-1", "DeleteMessageBatch",
                {"QueueUrl": dlq, "Entries": entries(got[1])})
    b, _ = call(fast, "eu-west-1", "DeleteMessageBatch",
                {"QueueUrl": dlq, "Entries": entries(got[2])})
    assert a == b and a[2]["Successful"] == [{"Id": "d0"}], (a, b)
    assert passed_on == [], passed_on

    # What the fast path leaves to moto: each is answered as moto answers it.
    before = len(passed_on)
    odd = [
        ("SendMessageBatch", {"QueueUrl": url, "Entries": [{**entry, "DelaySeconds": 1}]}),
        ("SendMessageBatch", {"QueueUrl": url, "Entries": [{**entry, "MessageAttributes": {
            "b": {"DataType": "Binary", "BinaryValue": "AAEC"}}}]}),
        ("SendMessageBatch", {"QueueUrl": url, "Entries": [{**entry, "MessageAttributes": {
            "s": {"DataType": "Stringy", "StringValue": "x"}}}]}),  # not a type moto knows
        ("SendMessageBatch", {"QueueUrl": url, "Entries": [entry, entry]}),  # ids not distinct
        ("SendMessageBatch", {"QueueUrl": url, "Entries": [{**entry, "Id": "no spaces"}]}),
        ("SendMessageBatch", {"QueueUrl": url, "Entries": [{**entry, "Id": str(i)}
                                                           for i in range(11)]}),
        ("SendMessageBatch", {"QueueUrl": url, "Entries": []}),
        ("SendMessageBatch", {"QueueUrl": url + "-missing", "Entries": [entry]}),
        ("ReceiveMessage", {"QueueUrl": url, "MaxNumberOfMessages": 11}),
        ("ReceiveMessage", {"QueueUrl": url + "-missing"}),
        ("DeleteMessageBatch", {"QueueUrl": url, "Entries": []}),
        ("DeleteMessageBatch", {"QueueUrl": url, "Entries": [
            {"Id": "a", "ReceiptHandle": "r"}, {"Id": "b", "ReceiptHandle": "r"}]}),
    ]
    for op, body in odd:
        both(op, body)
    assert len(passed_on) == before + len(odd), passed_on
    # The binary attribute, sent through moto, comes back through the fast path as moto's.
    box = created("b")
    both("ReceiveMessage", {"QueueUrl": box, "WaitTimeSeconds": 0})
    both("SendMessageBatch", {"QueueUrl": box, "Entries": [{**entry, "MessageAttributes": {
        "b": {"DataType": "Binary", "BinaryValue": "AAEC"}}}]})
    before = len(passed_on)
    binary = both("ReceiveMessage", {"QueueUrl": box, "MessageAttributeNames": ["All"]})
    assert binary[0][2]["Messages"][0]["MessageAttributes"]["b"]["BinaryValue"] == "AAEC", binary
    assert len(passed_on) == before, passed_on

    # FIFO queues are moto's.
    fifo = created("f.fifo", FifoQueue="true", ContentBasedDeduplication="true")
    both("SendMessageBatch", {"QueueUrl": fifo, "Entries": [{**entry, "MessageGroupId": "g"}]})
    both("ReceiveMessage", {"QueueUrl": fifo, "AttributeNames": ["All"]})
    assert passed_on[-2:] == ["SendMessageBatch", "ReceiveMessage"], passed_on

    # IAM enforcement on: moto's responder decides, the same way for both.
    Client(slow).post("/moto-api/reset-auth", data="0", headers={"Content-Type": "text/plain"})
    before = len(passed_on)
    a = both("SendMessageBatch", {"QueueUrl": url, "Entries": [entry]}, key="AKIAUNKNOWNKEY000000")
    assert a[0][0].startswith("403") and len(passed_on) == before + 1, (a, passed_on)
    print("ok")
""")


def test_sqs_fast_path_answers_as_moto_does():
    """sqs_fast.py answers batchexec's three hot SQS calls from moto's backend: the same
    answers and the same state as moto's responder, for what batchexec sends and for what it
    leaves to moto (which must reach moto's responder untouched)."""
    r = subprocess.run([sys.executable, "-c", SQS_FAST_COMPARISON], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "MOTO_PORT": "5000"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-4000:]


def test_the_sqs_fast_path_can_be_turned_off(monkeypatch):
    """BATCHEXEC_EMULATOR_SQS_FAST=0: every SQS call through moto's responder (to rule the
    fast path out when an emulator answer looks wrong, and for before/after benchmarks)."""
    from batchexec.emulator import sqs_fast

    monkeypatch.delenv("BATCHEXEC_EMULATOR_SQS_FAST", raising=False)
    assert sqs_fast.enabled()
    monkeypatch.setenv("BATCHEXEC_EMULATOR_SQS_FAST", "0")
    assert not sqs_fast.enabled()


SQS_CONCURRENCY = textwrap.dedent("""
    import json, sys, threading, time
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.test import Client
    from batchexec.emulator import moto_fixes, speedups, sqs_lock
    from batchexec.emulator.sqs_direct import SqsDirect
    from batchexec.emulator.sqs_fast import SqsFastPath

    moto_fixes.install()
    speedups.install()
    sqs_lock.install()
    slow = SqsDirect(DomainDispatcherApplication(create_backend_app))
    AUTH = ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261125/us-east-1/sqs/"
            "aws4_request, SignedHeaders=host, Signature=00")

    def call(app, op, body):
        r = Client(app).post("/", data=json.dumps(body), headers={
            "X-Amz-Target": "AmazonSQS." + op, "Authorization": AUTH,
            "Content-Type": "application/x-amz-json-1.0", "Host": "localhost:5000"})
        return r.status_code, r.get_data()

    sys.setswitchinterval(1e-6)  # threads switch as often as they can: races show up
    for name, app in (("through-moto", slow), ("fast", SqsFastPath(slow))):
        url = json.loads(call(app, "CreateQueue", {"QueueName": name})[1])["QueueUrl"]
        errors, sent, got, done = [], [0], [0], threading.Event()
        counting = threading.Lock()  # += is not atomic across threads
        deadline = time.monotonic() + 40

        def sender():
            for i in range(120):
                status, data = call(app, "SendMessageBatch", {"QueueUrl": url, "Entries": [
                    {"Id": str(j), "MessageBody": "x" * 100, "MessageAttributes": {
                        "a": {"DataType": "String", "StringValue": "b"}}} for j in range(10)]})
                if status != 200:
                    errors.append(("send", status, data[:300]))
                else:
                    sent[0] += 10
            done.set()

        def receiver():
            while time.monotonic() < deadline and not (done.is_set() and got[0] >= sent[0]):
                try:
                    status, data = call(app, "ReceiveMessage", {
                        "QueueUrl": url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 1})
                except Exception as exc:  # what moto's debug-mode server turns into a 500
                    errors.append(("receive", repr(exc)))
                    continue
                if status != 200:
                    errors.append(("receive", status, data[:300]))
                    continue
                messages = json.loads(data).get("Messages", [])
                with counting:
                    got[0] += len(messages)
                if messages:
                    call(app, "DeleteMessageBatch", {"QueueUrl": url, "Entries": [
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(messages)]})

        threads = [threading.Thread(target=sender)] + [
            threading.Thread(target=receiver) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and got[0] == sent[0] == 1200, (name, sent, got, errors[:3])
    print("ok")
""")


def test_concurrent_sqs_calls_lose_no_message():
    """moto's SQS backend is not thread-safe: a receive racing a send failed after marking
    messages received, which then stayed invisible for their visibility timeout (a 60 s
    stall). sqs_lock.py serializes the calls; both paths must deliver every message, with
    threads switching as often as they can."""
    r = subprocess.run([sys.executable, "-c", SQS_CONCURRENCY], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "MOTO_PORT": "5000"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-4000:]
