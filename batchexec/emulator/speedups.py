"""Caches and cheaper equivalents that make moto's server cheaper per request (the emulator's
round trip is its requests' cost: every task crosses four SQS calls, and the client, the
server and the workers share the machine's cores).

Measured with py-spy on `batchexec local` under a stream of SQS calls (2026-11-24): about a
third of the server's CPU went to moto re-listing its own package directory on every request
(``get_backend_for_host`` calls ``list_of_moto_modules``, ~175 stat calls), and every received
message rebuilt all of its queue's attributes just to read the retention period. Both answers
never change while the server runs, so they are computed once.

Measured with cProfile on moto's WSGI app in-process, batchexec's three SQS calls
(SendMessageBatch with the session's attributes, ReceiveMessage, DeleteMessageBatch;
2026-11-25, about 0.7 ms each): a further quarter of the app's time went to work whose answer
is fixed or whose result nobody inspects beyond its shape:

- ``method_names_from_class`` runs ``inspect.getmembers`` over the response class on every
  request to check the action exists: the class does not change, so once per class;
- ``camelcase_to_underscores`` (a per-character loop) converts the same few dozen names
  (every queue attribute, on every SendMessage, which reads all attributes to learn one);
- the request id (52 characters) and every receipt handle (185) are built one
  ``random.choice`` call per character: one ``choices`` call draws the same alphabet from
  the same seedable generator (moto's ``mock_random``, so `/moto-api/seed` still applies);
- SQS reads the clock through ``unix_time``, which builds two datetimes and subtracts them,
  for every message on every scan of a queue: ``time.time()`` is the same number.

Measured with py-spy on the server under dask's map_overlap (2026-11-25: thousands of SQS
calls carrying 20-100 KB bodies), a quarter of its busy time went to two more things: a
regular expression that looks for an XML <RequestId> through every response body, JSON ones
included (11.5%), and the MD5 of each message body, recomputed every time a message is
received (11%). The first now runs only on bodies that contain the tag; the second is computed
once per message body.

Measured with py-spy on the server under map_overlap with 80 KB chunks in 1 MiB messages
(2026-11-25): 12% of its busy time went to ``parse_qsl`` over JSON request bodies. moto parses
every body as a form, a query string, before it knows the protocol; for a JSON body the result
is one meaningless key that nothing reads (the JSON protocols take their parameters and action
from the body and the X-Amz-Target header). A body that opens with "{" is not parsed so.

Measured with py-spy (holding the GIL) on the server under map_overlap with 20 KB chunks in
1 MiB messages (2026-11-25): over a third of the time the server held the GIL went to the
standard library's JSON: json.dumps of every ReceiveMessage answer (23%: it scans each body,
about 450 MB/s) and json.loads of every request (13%). moto's JSON protocol answers are now
written by orjson (about 20 GB/s here), which writes the same JSON; a value orjson refuses (a
lone surrogate, an integer past 64 bits) falls back to the standard library, and
pretty-printed answers keep it. Requests are read through batchexec.jsonread, which asks
orjson and falls back to json.loads wherever their answers could differ (13% of the server's
GIL time was json.loads of request bodies, which hold the message bodies as escaped strings:
0.9 GB/s against orjson's 3.3).

Internal API, like jobs.py: tests/test_emulator.py checks the names still exist (setup.cfg
pins moto's range).
"""

from __future__ import annotations

import functools
import string
import time
from typing import Any

#: moto's alphabets: request ids are letters and digits, receipt handles lowercase letters.
_REQUEST_ID_ALPHABET = string.ascii_letters + string.digits
_REQUEST_ID_LENGTH = 52
_RECEIPT_HANDLE_LENGTH = 185

#: (module, attribute) pairs install() replaces; tests check each still exists in moto.
PATCHED = (
    ("moto.moto_server.werkzeug_app", "DomainDispatcherApplication.get_backend_for_host"),
    ("moto.sqs.models", "SQSBackend.is_message_valid_based_on_retention_period"),
    ("moto.core.responses", "method_names_from_class"),
    ("moto.core.responses", "camelcase_to_underscores"),
    ("moto.core.responses", "gen_amzn_requestid_long"),
    ("moto.sqs.models", "camelcase_to_underscores"),
    ("moto.sqs.models", "generate_receipt_handle"),
    ("moto.sqs.models", "unix_time"),
    ("moto.sqs.models", "unix_time_millis"),
    ("moto.core.responses", "BaseResponse._enrich_response"),
    ("moto.sqs.models", "Message.body_md5"),
    ("moto.core.responses", "parse_qsl"),
    ("moto.core.serialize", "BaseJSONSerializer._serialize_body"),
    ("moto.core.parse", "BaseJSONParser._parse_body_as_json"),
)


def install() -> None:
    """Patch moto's server in this process. Idempotent."""
    import moto.core.responses as responses
    import moto.sqs.models as sqs_models
    import orjson
    from moto.core.parse import BaseJSONParser
    from moto.core.serialize import BaseJSONSerializer
    from moto.moto_api._internal import mock_random
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    from moto.sqs.models import Message, SQSBackend

    from .. import jsonread

    if getattr(DomainDispatcherApplication, "_batchexec_cached", False):
        return
    lookup = DomainDispatcherApplication.get_backend_for_host
    hosts: dict[Any, Any] = {}

    def get_backend_for_host(self, host):
        try:
            return hosts[host]
        except KeyError:
            backend = hosts[host] = lookup(self, host)
            return backend

    def retained(self, queue_name: str, message) -> bool:
        period = int(self.get_queue(queue_name).message_retention_period)
        return period + message.sent_timestamp / 1000 > time.time()

    method_names = responses.method_names_from_class

    @functools.cache
    def method_names_from_class(cls) -> frozenset[str]:
        return frozenset(method_names(cls))  # call_action only asks `action in names`

    camel = functools.lru_cache(maxsize=4096)(responses.camelcase_to_underscores)

    def gen_amzn_requestid_long(headerdict: dict[str, Any] | None = None) -> str:
        req_id = "".join(mock_random.choices(_REQUEST_ID_ALPHABET, k=_REQUEST_ID_LENGTH))
        if isinstance(headerdict, dict):
            headerdict["x-amzn-requestid"] = req_id
        return req_id

    def generate_receipt_handle() -> str:
        return "".join(mock_random.choices(string.ascii_lowercase, k=_RECEIPT_HANDLE_LENGTH))

    def unix_time(dt=None) -> float:
        return time.time() if dt is None else original_unix_time(dt)

    def unix_time_millis(dt=None) -> float:
        return time.time() * 1000.0 if dt is None else original_unix_time(dt) * 1000.0

    enrich = responses.BaseResponse._enrich_response

    def enrich_response(headers, body):
        tag = "<RequestId>" if isinstance(body, str) else b"<RequestId>"
        if isinstance(body, (str, bytes)) and tag not in body:
            headers, _ = enrich(headers, "")  # its header work, without scanning the body
            return headers, body
        return enrich(headers, body)

    body_md5 = Message.body_md5.fget

    def cached_body_md5(self) -> str:
        try:
            cached, digest = self._batchexec_md5
            if cached is self.body:
                return digest
        except AttributeError:
            pass
        digest = body_md5(self)
        self._batchexec_md5 = (self.body, digest)
        return digest

    form_pairs = responses.parse_qsl

    def parse_qsl(qs, *args, **kwargs):
        if isinstance(qs, str) and qs.startswith("{"):  # a JSON body: not a query string
            return []
        return form_pairs(qs, *args, **kwargs)

    serialize_body = BaseJSONSerializer._serialize_body

    def fast_serialize_body(self, body):
        if not self.pretty_print:
            try:
                return orjson.dumps(body).decode()
            except TypeError:  # what orjson refuses: the standard library's answer
                pass
        return serialize_body(self, body)

    parse_body_as_json = BaseJSONParser._parse_body_as_json

    def fast_parse_body_as_json(self, body_contents):
        return jsonread.read_body(body_contents, lambda body: parse_body_as_json(self, body))

    original_unix_time = sqs_models.unix_time
    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host
    SQSBackend.is_message_valid_based_on_retention_period = retained
    responses.method_names_from_class = method_names_from_class
    responses.camelcase_to_underscores = camel
    responses.gen_amzn_requestid_long = gen_amzn_requestid_long
    sqs_models.camelcase_to_underscores = camel
    sqs_models.generate_receipt_handle = generate_receipt_handle
    sqs_models.unix_time = unix_time
    sqs_models.unix_time_millis = unix_time_millis
    responses.BaseResponse._enrich_response = staticmethod(enrich_response)
    Message.body_md5 = property(cached_body_md5)
    responses.parse_qsl = parse_qsl
    BaseJSONSerializer._serialize_body = fast_serialize_body
    BaseJSONParser._parse_body_as_json = fast_parse_body_as_json
    DomainDispatcherApplication._batchexec_cached = True
