"""batchexec's three hot SQS calls answered straight from moto's SQS backend.

Why: every task crosses SQS four times (sent, received, its result sent and received), and
on the emulator the server runs on the same cores as the client and the workers. Measured
under dask's map_overlap (2026-11-25, 1,024 chunks, about 950 calls a graph), the server spent
2.3 s of CPU a graph, and about 40% of that was moto's machinery around its SQS backend:
parsing each request against the service model, the response class's set-up (headers, region,
account, authorization), the serializer walking the answer's shape, and werkzeug's request and
response objects. Answering SendMessageBatch, ReceiveMessage and DeleteMessageBatch here cut
the server's CPU over the graph from 2.5-2.9 s to 1.65-1.76 s (alternating runs with the
path turned off; docs/benchmarks.md).

What stays moto's: every change of state. Messages are sent, received (visibility, receive
counts, redrive to the dead-letter queue, long polling) and deleted by moto's ``SQSBackend``
methods, the ones moto's responder calls; region and account are found by moto's own
``SQSResponse`` methods. What is ours is only the translation that moto's ``SQSResponse``
does for these three actions (copied from moto 5.2's ``send_message_batch``,
``receive_message`` and ``delete_message_batch``) and the answer's JSON.

Anything this path does not handle exactly as moto would goes to moto's responder, untouched,
before the backend is touched: IAM enforcement on (``/moto-api/reset-auth``), moto's request
recorder on, a FIFO queue, a missing queue, parameters beyond what batchexec sends (delays,
group ids, binary attributes, ...), values out of range, malformed JSON. The backend's own
checks (entry ids, sizes) all run before it changes anything; when one refuses, the request
is handed to moto's responder, which refuses it the same way and answers with moto's error.
``BATCHEXEC_EMULATOR_SQS_FAST=0`` in the server's environment turns this path off.

Internal API, like speedups.py: tests/test_emulator_server.py sends the same calls through
this path and through moto's responder, batchexec's own and the ones left to moto, and
compares answers and state.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import orjson
import pybase64

from .. import jsonread
from .control import read_body
from .sqs_lock import SQS_BACKEND

#: moto's system attribute names, in the order its responder writes them.
_SYSTEM_ATTRIBUTES = ("AWSTraceHeader", "ApproximateFirstReceiveTimestamp",
                      "ApproximateReceiveCount", "MessageDeduplicationId", "MessageGroupId",
                      "SenderId", "SentTimestamp", "SequenceNumber")  # fmt: skip
_RECEIVE_KEYS = frozenset({"QueueUrl", "MaxNumberOfMessages", "WaitTimeSeconds",
                           "VisibilityTimeout", "AttributeNames",
                           "MessageSystemAttributeNames", "MessageAttributeNames"})  # fmt: skip
_BATCH_KEYS = frozenset({"QueueUrl", "Entries"})  # SendMessageBatch's and DeleteMessageBatch's
_SEND_ENTRY_KEYS = frozenset({"Id", "MessageBody", "MessageAttributes"})
_DELETE_ENTRY_KEYS = frozenset({"Id", "ReceiptHandle"})


class _NotHere(Exception):
    """This request is for moto's responder (raised before the backend is touched)."""


class _Changed(Exception):
    """Building the answer failed after the backend changed state (raised from the cause)."""


def enabled() -> bool:
    return os.environ.get("BATCHEXEC_EMULATOR_SQS_FAST", "1") != "0"


class SqsFastPath:
    """WSGI middleware: the three calls from moto's backend, everything else to ``app``."""

    def __init__(self, app: Any):
        from moto import settings
        from moto.core import responses
        from moto.core.authorization import ActionAuthenticatorMixin
        from moto.moto_api import recorder
        from moto.sqs.constants import DEFAULT_RECEIVED_MESSAGES, MAXIMUM_VISIBILITY_TIMEOUT
        from moto.sqs.models import sqs_backends
        from moto.sqs.responses import SQSResponse
        from moto.sqs.utils import validate_message_attributes
        from werkzeug.datastructures import EnvironHeaders

        self.app = app
        self._settings = settings
        self._responses = responses  # gen_amzn_requestid_long: speedups may replace it
        self._auth = ActionAuthenticatorMixin
        self._recorder = recorder
        self._backends = sqs_backends
        self._response_class = SQSResponse
        self._headers = EnvironHeaders
        self._validate_attributes = validate_message_attributes
        self._default_count = DEFAULT_RECEIVED_MESSAGES
        self._max_visibility = MAXIMUM_VISIBILITY_TIMEOUT
        self._handlers = {
            "AmazonSQS.SendMessageBatch": self._send_message_batch,
            "AmazonSQS.ReceiveMessage": self._receive_message,
            "AmazonSQS.DeleteMessageBatch": self._delete_message_batch,
        }

    def __call__(self, environ: dict, start_response: Any) -> Any:
        handler = self._handlers.get(environ.get("HTTP_X_AMZ_TARGET", ""))
        if (handler is None or environ.get("PATH_INFO") != "/"
                or environ.get("REQUEST_METHOD") != "POST" or environ.get("QUERY_STRING")
                or self._recorder._user_enabled  # recorded requests go through moto
                or self._auth.request_count >= self._settings.INITIAL_NO_AUTH_ACTION_COUNT):
            return self.app(environ, start_response)  # fmt: skip
        body = read_body(environ)  # and put back for moto's responder
        try:
            params = jsonread.loads(body)
            if not isinstance(params, dict) or not isinstance(params.get("QueueUrl"), str):
                raise _NotHere
            backend = self._backend(environ)
            queue_name = _queue_name(params["QueueUrl"])
            with SQS_BACKEND:  # see sqs_lock.py: moto's SQS backend is not thread-safe
                queue = backend.get_queue(queue_name)  # QueueDoesNotExist: moto's answer
                if queue.fifo_queue:
                    raise _NotHere
                answer = handler(backend, queue, queue_name, params)
        except _Changed as exc:  # the backend changed state: moto's responder must not repeat
            raise exc.__cause__  # noqa: B904 - a 500, as from moto's responder in debug mode
        except Exception:  # noqa: BLE001 - _NotHere, or anything moto refuses: moto answers
            return self.app(environ, start_response)
        data = orjson.dumps(answer, default=_blob)
        start_response("200 OK", [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("server", "amazon.com"),
            ("x-amzn-requestid", self._responses.gen_amzn_requestid_long()),
            ("Content-Length", str(len(data))),
            ("Access-Control-Allow-Origin", "*"),  # as flask-cors adds
        ])  # fmt: skip
        return [data]

    def _backend(self, environ: dict) -> Any:
        """moto's region and account for this request, found by moto's own methods."""
        headers = self._headers(environ)
        response = self._response_class()
        response.headers = headers
        response.querystring = {}
        url = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}/"
        region = response.get_region_from_url(SimpleNamespace(headers=headers), url)
        return self._backends[response.get_current_account()][region]

    def _counted(self) -> None:
        """What moto's authorization step does when enforcement is off: count the request."""
        self._auth.request_count += 1

    # -- the three calls, as moto's SQSResponse translates them -------------------------------

    def _send_message_batch(self, backend, queue, queue_name: str, params: dict) -> dict:
        entries = params.get("Entries")
        if (set(params) - _BATCH_KEYS or not isinstance(entries, list) or not entries
                or not all(_plain_entry(e, _SEND_ENTRY_KEYS, "MessageBody") for e in entries)):
            raise _NotHere  # fmt: skip
        batch = {}
        for i, entry in enumerate(entries):
            attributes = entry.get("MessageAttributes", {})
            if not _string_attributes(attributes):
                raise _NotHere
            self._validate_attributes(attributes)
            batch[str(i)] = {**entry, "MessageAttributes": attributes, "DelaySeconds": None}
        self._counted()
        try:
            messages, failed = backend.send_message_batch(queue_name, batch)
        except Exception:
            self._auth.request_count -= 1  # moto's responder counts it again
            raise
        try:
            successful = []
            for message in messages:
                item = {"Id": message.user_id, "MessageId": message.id,
                        "MD5OfMessageBody": message.body_md5}  # fmt: skip
                if message.message_attributes:
                    item["MD5OfMessageAttributes"] = message.attribute_md5
                successful.append(item)
        except Exception as exc:
            raise _Changed from exc
        return {"Successful": successful, "Failed": failed}

    def _receive_message(self, backend, queue, queue_name: str, params: dict) -> dict:
        count = params.get("MaxNumberOfMessages", self._default_count)
        wait = params.get("WaitTimeSeconds", None)
        visibility = params.get("VisibilityTimeout", None)
        lists = [params.get(k, []) for k in ("AttributeNames", "MessageSystemAttributeNames",
                                             "MessageAttributeNames")]  # fmt: skip
        if (set(params) - _RECEIVE_KEYS or type(count) is not int or not 1 <= count <= 10
                or not (wait is None or type(wait) is int and 0 <= wait <= 20)
                or not (visibility is None or type(visibility) is int
                        and 0 <= visibility <= self._max_visibility)
                or not all(map(_strings, lists))):
            raise _NotHere  # fmt: skip
        names = lists[0] + lists[1]
        attribute_names = lists[2]
        if wait is None:
            wait = int(queue.receive_message_wait_time_seconds)
        if visibility is None:
            visibility = queue.visibility_timeout
        wanted = [a for a in _SYSTEM_ATTRIBUTES if "All" in names or a in names]
        self._counted()
        try:
            messages = backend.receive_message(queue_name, count, wait, visibility,
                                               attribute_names)  # fmt: skip
            out = []
            for message in messages:
                item: dict[str, Any] = {"MessageId": message.id,
                                        "ReceiptHandle": message.receipt_handle,
                                        "MD5OfBody": message.body_md5, "Body": message.body}
                if message.message_attributes:
                    item["MessageAttributes"] = message.message_attributes
                    item["MD5OfMessageAttributes"] = message.attribute_md5
                if wanted:
                    item["Attributes"] = _system_attributes(message, wanted)
                out.append(item)
        except Exception as exc:
            raise _Changed from exc
        return {"Messages": out} if out else {}

    def _delete_message_batch(self, backend, queue, queue_name: str, params: dict) -> dict:
        entries = params.get("Entries")
        if (set(params) - _BATCH_KEYS or not isinstance(entries, list) or not entries
                or not all(_plain_entry(e, _DELETE_ENTRY_KEYS, "ReceiptHandle") for e in entries)
                or len({e["ReceiptHandle"] for e in entries}) != len(entries)):
            raise _NotHere  # fmt: skip
        self._counted()
        try:
            success, failed = backend.delete_message_batch(queue_name, entries)
        except Exception as exc:
            raise _Changed from exc
        return {"Successful": [{"Id": i} for i in success], "Failed": failed}


def _blob(value: Any) -> str:
    """A binary attribute value (moto keeps it decoded): base64, as moto's serializer writes
    blobs."""
    if isinstance(value, (bytes, bytearray)):
        return pybase64.b64encode_as_string(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _queue_name(url: str) -> str:
    """As moto's SQSResponse._get_queue_name: the URL's last part, or the name itself."""
    return url.split("/")[-1] if url.startswith(("http://", "https://")) else url


def _plain_entry(entry: Any, keys: frozenset, text_key: str) -> bool:
    return (isinstance(entry, dict) and not set(entry) - keys and isinstance(entry.get("Id"), str)
            and isinstance(entry.get(text_key), str))  # fmt: skip


def _strings(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


def _string_attributes(attributes: Any) -> bool:
    """Message attributes of the kinds batchexec sends: String and Number values, each one
    string (moto stores and returns them as given); Binary and list values go to moto."""
    return isinstance(attributes, dict) and all(
        isinstance(v, dict) and set(v) == {"DataType", "StringValue"}
        and isinstance(v["StringValue"], str) and isinstance(v["DataType"], str)
        and v["DataType"].startswith(("String", "Number")) for v in attributes.values())


def _system_attributes(message: Any, wanted: list[str]) -> dict[str, str]:
    """As moto's SQSResponse.receive_message writes them."""
    out: dict[str, str] = {}
    for name in wanted:
        if name == "SenderId":
            out[name] = message.sender_id
        elif name == "SentTimestamp":
            out[name] = str(message.sent_timestamp)
        elif name == "ApproximateReceiveCount":
            out[name] = str(message.approximate_receive_count)
        elif name == "ApproximateFirstReceiveTimestamp":
            out[name] = str(message.approximate_first_receive_timestamp)
        elif name == "MessageDeduplicationId" and message.deduplication_id is not None:
            out[name] = message.deduplication_id
        elif name == "MessageGroupId" and message.group_id is not None:
            out[name] = message.group_id
        elif name == "AWSTraceHeader" and (message.system_attributes or {}).get(name):
            out[name] = message.system_attributes[name].get("StringValue")
        elif name == "SequenceNumber" and message.sequence_number is not None:
            out[name] = message.sequence_number
    return out
