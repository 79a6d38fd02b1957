"""The supervisor's sender: task output and results, packed and sent on a timer.

Results and output lines are queued here as the runner produces them and a thread sends
them at most ``flush_seconds`` after the first of them was queued, whatever the rest of the
pack is doing: a finished task reports within ~0.2 s even when its pack-mates run for hours.
Each send puts the output messages before the result messages, and a task's lines are queued
before its result, so a task's output is sent before its result.

``flush()`` sends everything queued now and waits until SQS accepted it: the supervisor
calls it before deleting a task message (results durable first: delivery at least once). A
send that fails (after botocore's retries) is tried again; the queue being gone (session
ended) is reported to the waiter as QueueGone.
"""

from __future__ import annotations

import logging
import threading
import time

from .. import protocol
from ..protocol import OutputLine, OutputMessage, ResultEntry, ResultMessage
from ..transport import MessageQueue, QueueGone, TransportError

log = logging.getLogger("batchexec.worker")

#: Results and output wait at most this long before being sent: short tasks share a message,
#: long tasks report as soon as they finish.
FLUSH_SECONDS = 0.2
#: Pause before sending again after SQS refused a send.
RETRY_SECONDS = 1.0


class Outbox(threading.Thread):
    def __init__(self, queue: MessageQueue, session: str, worker: str,
                 flush_seconds: float = FLUSH_SECONDS):  # fmt: skip
        super().__init__(name="batchexec-outbox", daemon=True)
        self.queue = queue
        self.session = session
        self.worker = worker
        self.flush_seconds = flush_seconds
        self._cond = threading.Condition()
        self._pending: list[OutputLine | ResultEntry] = []
        self._first_at = 0.0
        self._queued = 0  # items ever queued
        self._sent = 0  # items ever sent (a prefix of the queued ones)
        self._urgent = False
        self._stopping = False
        self._gone: QueueGone | None = None

    # -- producers ------------------------------------------------------------------------

    def add_output(self, line: OutputLine) -> None:
        self._add(line)

    def add_result(self, entry: ResultEntry) -> None:
        self._add(entry)

    def _add(self, item) -> None:
        with self._cond:
            first = not self._pending
            if first:
                self._first_at = time.monotonic()
            self._pending.append(item)
            self._queued += 1
            if first:
                # Only the first item arms the timer; waking the thread for every later one
                # (it would go back to waiting) cost a thread switch per task.
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued so far now; wait until sent. False on timeout; QueueGone
        when the session's result queue no longer exists."""
        with self._cond:
            target = self._queued
            self._urgent = True
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: self._sent >= target or self._gone, timeout)
            if self._gone is not None:
                raise self._gone
            return bool(done)

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is left (for at most timeout seconds) and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self.is_alive():
            self.join(timeout)

    # -- the thread -----------------------------------------------------------------------

    def run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping)
                if not self._pending:
                    return
                while not (self._urgent or self._stopping):
                    left = self._first_at + self.flush_seconds - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch, self._pending = self._pending, []
                self._urgent = False
            try:
                self.queue.send(self.encode(batch), self.session)
            except QueueGone as exc:
                with self._cond:
                    self._gone = exc
                    self._cond.notify_all()
                return
            except TransportError as exc:
                log.warning("sending %d results/output lines failed, retrying: %s",
                            len(batch), exc)
                with self._cond:
                    self._pending[:0] = batch
                    self._urgent = True  # it was due: again as soon as the pause is over
                    stopping = self._stopping
                if stopping:
                    return
                time.sleep(RETRY_SECONDS)
                continue
            with self._cond:
                self._sent += len(batch)
                self._cond.notify_all()

    def encode(self, batch: list[OutputLine | ResultEntry]) -> list[str]:
        """Bodies for one send: output messages first, then results; each under the limit."""
        lines = [x for x in batch if isinstance(x, OutputLine)]
        results = [x for x in batch if isinstance(x, ResultEntry)]

        def make_output(pack):
            return OutputMessage(self.session, self.worker, pack).encode()

        def make_results(pack):
            return ResultMessage(self.session, self.worker, pack).encode()

        return _packed(lines, make_output) + _packed(results, make_results)


def _packed(items: list, make) -> list[str]:
    bodies, pack, size = [], [], 0
    for item in items:
        n = item.encoded_size()
        if pack and size + n > protocol.MESSAGE_BODY_LIMIT:
            bodies.append(make(pack))
            pack, size = [], 0
        pack.append(item)
        size += n
    if pack:
        bodies.append(make(pack))
    return bodies
