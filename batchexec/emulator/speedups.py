"""Caches and shortcuts that make moto's server cheaper per request (the emulator's round trip
is its requests' cost: every task crosses four SQS calls).

Measured with py-spy on `batchexec local` under a stream of SQS calls (2026-11-24): about a
third of the server's CPU went to moto re-listing its own package directory on every request
(``get_backend_for_host`` calls ``list_of_moto_modules``, ~175 stat calls), and every received
message rebuilt all of its queue's attributes just to read the retention period. Both answers
never change while the server runs, so they are computed once.

Measured again under dask's map_overlap (2026-11-25: thousands of SQS calls carrying 20-100 KB
bodies), a quarter of the server's busy time went to two more things: a regular expression
that looks for an XML <RequestId> through every response body, JSON ones included (11.5%),
and the MD5 of each message body, recomputed every time a message is received (11%). The
first now runs only on bodies that contain the tag; the second is computed once per message
(a body never changes). Internal API, like jobs.py: tests/test_emulator.py checks the names
still exist (setup.cfg pins moto's range).
"""

from __future__ import annotations

from typing import Any


def install() -> None:
    """Patch moto's server in this process. Idempotent."""
    from moto.core.responses import BaseResponse
    from moto.core.utils import unix_time
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    from moto.sqs.models import Message, SQSBackend

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
        return period + message.sent_timestamp / 1000 > unix_time()

    enrich = BaseResponse._enrich_response

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

    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host
    SQSBackend.is_message_valid_based_on_retention_period = retained
    BaseResponse._enrich_response = staticmethod(enrich_response)
    Message.body_md5 = property(cached_body_md5)
    DomainDispatcherApplication._batchexec_cached = True
