"""jsonread: orjson's speed, json.loads's answers; and the botocore parsers that use it."""

from __future__ import annotations

import json

import botocore.parsers
import pytest
from botocore.loaders import Loader
from botocore.model import ServiceModel

from batchexec import jsonread
from batchexec.aws import AwsClients, FastJsonParsers

#: Documents where orjson and json.loads could disagree, and ordinary ones.
DOCUMENTS = [
    '{"Messages": [{"Body": "{\\"v\\": 4}", "MessageId": "a"}]}',
    "18446744073709551616",  # past 64 bits: orjson would give a float
    "18446744073709551615",  # orjson's largest integer
    "-9223372036854775808",  # ... and its smallest
    "[9223372036854775807.0, 1e300, -1.5e-7, 0.1]",  # floats from float literals
    '{"a": [1, {"b": -9223372036854775809}]}',  # ... however deep
    '[1.5, 2, "x"]',
    '{"a": 1, "a": 2}',
    '"\\ud800"',  # a lone surrogate: orjson refuses, json.loads takes it
    '{"n": NaN, "i": -Infinity}',  # beyond the standard: json.loads takes them
    '"caf\\u00e9 \\ud83d\\ude00"',
    " {} ",
    "[" * 200 + "1.5" + "]" * 200,  # the walk for floats goes all the way down
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_loads_gives_json_loads_answer(text):
    expected = json.loads(text)
    for given in (text, text.encode()):
        got = jsonread.loads(given)
        assert got == expected or (got != got and expected != expected)  # NaN: compare reprs
        assert repr(got) == repr(expected)


@pytest.mark.parametrize("text", ['{"a": 1,}', "", "[1] x", b"\xff\xfe{}"])
def test_loads_refuses_what_json_loads_refuses(text):
    with pytest.raises(ValueError) as expected:
        json.loads(text)
    with pytest.raises(type(expected.value)):
        jsonread.loads(text)


def test_loads_reads_ordinary_documents_without_json_loads(monkeypatch):
    """The point of the module: an ordinary document never reaches the slow reader."""
    def refuse(*args, **kwargs):
        raise AssertionError("json.loads was called")

    monkeypatch.setattr(jsonread.json, "loads", refuse)
    assert jsonread.loads(DOCUMENTS[0])["Messages"][0]["MessageId"] == "a"
    assert jsonread.loads('{"seconds": 0.0123, "n": 1}')["seconds"] == 0.0123  # a duration
    with pytest.raises(AssertionError):
        jsonread.loads("18446744073709551616")


def _sqs_operation(name):
    loader = Loader()
    return ServiceModel(loader.load_service_model("sqs", "service-2")).operation_model(name)


@pytest.mark.parametrize("status, body", [
    (200, b'{"Messages": [{"MessageId": "m", "ReceiptHandle": "r", "MD5OfBody": "x", '
          b'"Body": "{\\"v\\": 4, \\"big\\": 18446744073709551616}", '
          b'"Attributes": {"SentTimestamp": "1"}}]}'),
    (200, b""),
    (200, b"{}"),
    (400, b'{"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "no queue"}'),
    (400, b"<html><body>not AWS</body></html>"),  # not JSON: botocore's own answer
    (500, b"\xff not UTF-8"),
    (200, '{"Messages": []}'.encode("utf-16")),  # json.loads would read it; botocore does not
])
def test_fast_parsers_answer_as_botocores_own(status, body):
    operation = _sqs_operation("ReceiveMessage")
    response = {"status_code": status, "headers": {"x-amzn-requestid": "req"}, "body": body}
    own = botocore.parsers.ResponseParserFactory().create_parser("json")
    fast = FastJsonParsers().create_parser("json")
    try:
        expected = own.parse(dict(response), operation.output_shape)
    except Exception as exc:  # noqa: BLE001 - the same exception, whatever it is
        with pytest.raises(type(exc)):
            fast.parse(dict(response), operation.output_shape)
    else:
        assert fast.parse(dict(response), operation.output_shape) == expected


def test_clients_read_json_answers_through_jsonread():
    clients = AwsClients.for_emulator("us-east-1", "http://127.0.0.1:1")
    sqs = clients.client("sqs")
    factory = sqs._endpoint._response_parser_factory  # botocore's, per client
    assert isinstance(factory, FastJsonParsers)
    parser = factory.create_parser("json")
    assert parser._parse_body_as_json.func is jsonread.read_body
    # the XML protocols have no JSON step and are left as botocore makes them
    assert isinstance(factory.create_parser("query"), botocore.parsers.QueryParser)
