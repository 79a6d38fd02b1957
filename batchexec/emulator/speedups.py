"""Two caches that make moto's server cheaper per request (the emulator's round trip is its
requests' cost: every task crosses four SQS calls).

Measured with py-spy on `batchexec local` under a stream of SQS calls (2026-11-24): about a
third of the server's CPU went to moto re-listing its own package directory on every request
(``get_backend_for_host`` calls ``list_of_moto_modules``, ~175 stat calls), and every received
message rebuilt all of its queue's attributes just to read the retention period. Both answers
never change while the server runs, so they are computed once. Internal API, like jobs.py:
tests/test_emulator.py checks the names still exist (setup.cfg pins moto's range).
"""

from __future__ import annotations

from typing import Any


def install() -> None:
    """Patch moto's server in this process. Idempotent."""
    from moto.core.utils import unix_time
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    from moto.sqs.models import SQSBackend

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

    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host
    SQSBackend.is_message_valid_based_on_retention_period = retained
    DomainDispatcherApplication._batchexec_cached = True
