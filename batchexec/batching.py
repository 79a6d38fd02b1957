"""Deletes that wait a moment for company: one DeleteMessageBatch for several finished
messages instead of one call each.

Nothing waits on a delete: a result message is deleted once its future is resolved, a task
message once its results are sent. But every call costs the caller about a millisecond of
CPU (botocore builds, signs and parses it) and the emulator as much again; when tasks cross one
at a time, the two deletes are a third of the calls on a round trip, and on a busy machine they
delay the calls that matter. Waiting up to ``LINGER_SECONDS`` after the first receipt lets the
next ones join its call (up to SQS's 10 entries), like Nagle's algorithm for deletes.

Lingering is safe where the wait is far below the queue's visibility timeout: a message whose
delete is late is simply not seen again yet. One that is never deleted (its process died) is
received again and its results are duplicates, which the client ignores: delivery is at least
once either way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from queue import Empty, SimpleQueue

from .protocol import SQS_BATCH_ENTRIES
from .transport import MessageQueue, QueueGone, TransportError

log = logging.getLogger(__name__)

#: How long the first delete of a batch waits for others: a round trip of a small task is about
#: 10 ms on the emulator, so one-at-a-time tasks fill a batch of 10 well within it.
LINGER_SECONDS = 0.2


def gather(work: SimpleQueue, linger: float, enough: Callable[[list], bool]) -> list:
    """Block for one item, then take more until ``linger`` seconds have passed since it came,
    ``enough(items)`` holds, or a None (a stop request, included in the list) arrives."""
    items = [work.get()]
    deadline = time.monotonic() + linger
    while items[-1] is not None and not enough(items):
        left = deadline - time.monotonic()
        try:
            items.append(work.get(timeout=left) if left > 0 else work.get_nowait())
        except Empty:
            break
    return items


class MessageDeleter(threading.Thread):
    """Deletes received messages in the background, a batch at a time (the worker's task
    messages). A failed delete is logged: the message is redelivered, its results ignored."""

    def __init__(self, queue: MessageQueue, linger: float = LINGER_SECONDS):
        super().__init__(name="batchexec-deleter", daemon=True)
        self.queue = queue
        self.linger = linger
        self._work: SimpleQueue = SimpleQueue()

    def delete_later(self, receipt: str) -> None:
        self._work.put(receipt)

    def stop(self, timeout: float = 5.0) -> None:
        """Make the deletes still waiting (for at most ``timeout`` seconds) and end."""
        self._work.put(None)
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        gone = False
        while True:
            items = gather(self._work, self.linger, lambda got: len(got) >= SQS_BATCH_ENTRIES)
            receipts = [r for r in items if r is not None]
            if receipts and not gone:
                try:
                    self.queue.delete(receipts)
                except QueueGone:  # the session ended: nothing left to delete
                    gone = True
                except TransportError as exc:
                    log.warning("deleting %d finished message(s) failed (they will be "
                                "received again; their results are duplicates): %s",
                                len(receipts), exc)
            if items[-1] is None:
                return
