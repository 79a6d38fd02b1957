"""MessageQueue against a real SQS API (moto): what is sent is what is received."""

from __future__ import annotations

import json

import boto3
import pytest

from batchexec.protocol import ResultEntry, ResultMessage, TaskEntry, TaskMessage, decode
from batchexec.transport import MessageQueue


@pytest.fixture
def sqs(moto_endpoint):
    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _messages():
    """Bodies with ready-made literals (large payloads, odd ids) beside plain strings, one of
    them spelling a placeholder."""
    tasks = TaskMessage("s\u00e9ssion", [TaskEntry('q"\\1', "f", b"\x00" * 70_000, None, [], None,
                                                   []),
                                         TaskEntry("2", "f", b"y", None, [], None, [])],
                        {"f": b"fn"}, 0, {}, {"b": bytes(range(256)) * 40})
    results = ResultMessage("s", "w\n1", [ResultEntry("1", True, 0.5, b"r" * 9_000)])
    return [tasks.encode(), '{"plain": "batchexec-body-literal:0"}', results.encode(),
            '"batchexec-body-literal:1"']


def test_bodies_with_literals_arrive_as_written_beside_plain_ones(sqs):
    url = sqs.create_queue(QueueName="literal-bodies")["QueueUrl"]
    queue = MessageQueue(sqs, url, b"k" * 32)
    bodies = _messages()
    sent = []
    sqs.meta.events.register("before-send.sqs.SendMessageBatch",
                             lambda request, **kw: sent.append(request.body))
    queue.send(bodies, session="s")
    received = []
    while len(received) < len(bodies):
        got = queue.receive(wait=1)
        assert got, "messages missing"
        received += got
    assert sorted(m.body for m in received) == sorted(bodies)
    assert all(m.authentic for m in received)  # the MAC covers the real bodies
    (request,) = sent
    assert json.loads(request)["Entries"][0]["MessageBody"] == bodies[0]  # not a placeholder
    assert decode(next(m.body for m in received if m.body == bodies[0])).tasks[0].task_id \
        == 'q"\\1'


def test_a_client_without_botocore_hooks_gets_the_bodies_themselves():
    class Recording:
        def __init__(self):
            self.entries = []

        def send_message_batch(self, QueueUrl, Entries):
            self.entries += Entries
            return {"Successful": [{"Id": e["Id"]} for e in Entries]}

    sqs = Recording()
    bodies = _messages()
    MessageQueue(sqs, "http://q/x").send(bodies, session="s")
    assert [e["MessageBody"] for e in sqs.entries] == bodies
