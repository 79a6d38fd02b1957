"""One lock around moto's SQS backend, let go while a long poll waits.

Why: moto's server answers requests on many threads, and its SQS backend is not safe for
that. ReceiveMessage deep-copies every message it hands out and reads the queue's set of
in-flight messages; meanwhile SendMessageBatch sets an attribute on a message that is already
in the queue (``user_id``, and our cached body MD5), and other receives and deletes change the
in-flight set. Either copy can then fail with "dictionary changed size during iteration" or
"Set changed size during iteration", after the receive has already marked messages as
received. The caller gets a 500 and those messages stay invisible for their visibility
timeout: a dask graph stalled for 60 s (2026-11-25), and a stress test of one sender and
three receivers on one queue lost 39 of 3,000 messages that way through moto's own
responder (92 through the fast path, which answers faster and so overlaps more).

So every SQS call the emulator answers (sqs_direct.py's and sqs_fast.py's) runs holding
`SQS_BACKEND`, and moto's long poll (``Queue.wait_for_messages``, called inside
ReceiveMessage while no message is visible) lets go of it while it waits, so that a waiting
receive does not hold up the sends it waits for. Lock order: this lock, then a queue's own
condition (moto's add_message notifies under it); the wait takes the condition only after
letting go of this lock, so the two are never taken the other way round.

Internal API: tests/test_emulator_server.py checks the patched name and runs the stress.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class BackendLock:
    """A lock that knows whether the current thread holds it (to let go while waiting)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> BackendLock:
        self._lock.acquire()
        self._owner = threading.get_ident()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._owner = None
        self._lock.release()

    @contextmanager
    def let_go(self) -> Iterator[None]:
        """Release the lock for the block, if this thread holds it; take it back after."""
        if self._owner != threading.get_ident():
            yield
            return
        self.__exit__()
        try:
            yield
        finally:
            self.__enter__()


#: The one lock of this server's SQS backend.
SQS_BACKEND = BackendLock()

#: (module, attribute) pairs install() replaces; tests check each still exists in moto.
PATCHED = (("moto.sqs.models", "Queue.wait_for_messages"),)


def install() -> None:
    """Make moto's long poll let go of SQS_BACKEND while it waits. Idempotent."""
    from moto.sqs.models import Queue

    if getattr(Queue.wait_for_messages, "_batchexec_lets_go", False):
        return
    wait_for_messages = Queue.wait_for_messages

    def wait_letting_go(self: Any, timeout: int) -> None:
        with SQS_BACKEND.let_go():
            wait_for_messages(self, timeout)

    wait_letting_go._batchexec_lets_go = True  # type: ignore[attr-defined]
    Queue.wait_for_messages = wait_letting_go
