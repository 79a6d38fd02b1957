"""Messages are authenticated before anything is unpickled (issue 8, sessions that cannot
attack each other).

A principal who can put messages on a session's queues (another session's task code, anyone
with sqs:SendMessage) must not get code run: a forged or tampered message is never decoded or
unpickled, it goes to the dead-letter queue, and the session goes on. The "payloads" below
create a marker file when unpickled, so the tests see any unpickling at all.
"""

from __future__ import annotations

import json
import os
import pickle
import time

import boto3
import pytest
import taskfuncs as tf

from batchexec import protocol
from batchexec.protocol import ResultEntry, ResultMessage, TaskEntry, TaskMessage
from batchexec.serialization import digest


class Marker:
    """Unpickling this creates a file: proof that someone unpickled attacker data."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _sqs(endpoint):
    return boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _attrs(session, mac=None):
    attrs = {k: v for k, v in protocol.session_attributes(session).items()}
    if mac is not None:
        attrs[protocol.MAC_ATTRIBUTE] = {"DataType": "String", "StringValue": mac}
    return attrs


def _dead_letters_with(sqs, url, body, timeout=30):
    """Find `body` among the dead-letter queue's messages (others' are left alone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                     VisibilityTimeout=1,
                                     MessageAttributeNames=["All"]).get("Messages", []):
            if m["Body"] == body:
                return m
    return None


@pytest.mark.parametrize("mac", [None, "0" * 64], ids=["unsigned", "wrong-key"])
def test_a_forged_task_message_is_never_run_and_is_dead_lettered(make_executor, tmp_path, mac):
    ex = make_executor(1)
    assert ex.submit(tf.square, 2).result(timeout=60) == 4  # a worker is serving
    marker = tmp_path / "pwned"
    fn = pickle.dumps(Marker(str(marker)))
    body = TaskMessage(ex.session_id, [TaskEntry("999", digest(fn), args=fn)],
                       {digest(fn): fn}).encode()
    sqs = _sqs(ex.endpoint_url)
    sqs.send_message(QueueUrl=ex._session.settings.task_queue_url, MessageBody=body,
                     MessageAttributes=_attrs(ex.session_id, mac))
    found = _dead_letters_with(sqs, ex.stack.dead_letter_queue_url, body)
    assert found is not None, "the forged message did not reach the dead-letter queue"
    assert protocol.REJECTED_ATTRIBUTE in found["MessageAttributes"]
    assert not marker.exists(), "a forged task was unpickled on a worker"
    assert ex.submit(tf.square, 3).result(timeout=60) == 9  # the session goes on


def test_a_tampered_result_message_is_never_unpickled(make_executor, tmp_path):
    ex = make_executor(1)
    slow = ex.submit(tf.slow_pid, 7, 3.0)
    deadline = time.monotonic() + 60
    while not slow.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    in_flight_id = next(iter(ex._table._in_flight))  # the id a forger would guess
    marker = tmp_path / "pwned-client"
    settings = ex._session.settings
    good = ResultMessage(ex.session_id, "w", [ResultEntry(in_flight_id, True, 0.1,
                                                          data=pickle.dumps(1))]).encode()
    forged = json.loads(good)
    forged["results"][0]["data"] = protocol.b64(pickle.dumps(Marker(str(marker))))
    body = json.dumps(forged)
    sqs = _sqs(ex.endpoint_url)
    # Tampered: the MAC of the genuine body on a changed body.
    sqs.send_message(QueueUrl=settings.result_queue_url, MessageBody=body,
                     MessageAttributes=_attrs(ex.session_id, protocol.sign(settings.key, good)))
    assert slow.result(timeout=60)[0] == 7  # resolved by the real result, not the forgery
    assert not marker.exists(), "the client unpickled a tampered result"
    assert _dead_letters_with(sqs, ex.stack.dead_letter_queue_url, body) is not None
    assert ex.submit(tf.square, 4).result(timeout=60) == 16


def test_worker_processes_never_see_the_session_key(make_executor):
    ex = make_executor(1)
    name = "BATCHEXEC_SESSION_KEY"
    assert ex.submit(os.environ.get, name).result(timeout=60) is None


def test_the_key_is_not_in_reprs_or_s3(make_executor):
    ex = make_executor(1)
    settings = ex._session.settings
    assert settings.session_key not in repr(settings)
    s3 = boto3.client("s3", endpoint_url=ex.endpoint_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    assert ex.submit(tf.square, 5).result(timeout=60) == 25
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=ex.stack.bucket):
        for obj in page.get("Contents", []):
            data = s3.get_object(Bucket=ex.stack.bucket, Key=obj["Key"])["Body"].read()
            assert settings.session_key.encode() not in data


def test_session_queues_are_encrypted_and_refuse_requests_without_tls(make_executor):
    ex = make_executor(1)
    sqs = _sqs(ex.endpoint_url)
    settings = ex._session.settings
    for url in (settings.task_queue_url, settings.result_queue_url):
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert attrs["SqsManagedSseEnabled"] == "true"
        (statement,) = json.loads(attrs["Policy"])["Statement"]
        assert statement["Effect"] == "Deny" and statement["Action"] == "sqs:*"
        assert statement["Resource"] == attrs["QueueArn"]
        assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
