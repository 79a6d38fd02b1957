"""Keeps the task message being worked on invisible to other workers.

It runs in the supervisor, which never runs user code: whatever a task does to its own
process (hold the GIL, stop, spin), the heartbeat goes on. It extends the message's
visibility by ``visibility_timeout`` every third of it, but never past SQS's ceiling of
12 hours from the receipt (the supervisor stops a task before that: max_task_seconds).
"""

from __future__ import annotations

import logging
import threading
import time

from ..config import SQS_MAX_VISIBILITY
from ..transport import MessageQueue, QueueGone, TransportError

log = logging.getLogger("batchexec.worker")


class Heartbeat(threading.Thread):
    def __init__(self, queue: MessageQueue, visibility_timeout: int):
        super().__init__(name="batchexec-heartbeat", daemon=True)
        self.queue = queue
        self.timeout = visibility_timeout
        self.interval = max(0.5, visibility_timeout / 3)
        self._held: tuple[str, float] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def hold(self, receipt: str | None, received_at: float = 0.0) -> None:
        """Keep this message (received at time.monotonic() ``received_at``) invisible;
        None: nothing to hold."""
        with self._lock:
            self._held = None if receipt is None else (receipt, received_at)

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            with self._lock:
                held = self._held
            if held is None:
                continue
            receipt, received_at = held
            # Seconds SQS still allows for this receipt, less a second of clock slack.
            allowed = SQS_MAX_VISIBILITY - (time.monotonic() - received_at) - 1
            seconds = int(min(self.timeout, allowed))
            if seconds <= 0:
                continue
            try:
                self.queue.extend(receipt, seconds)
            except QueueGone:
                return
            except TransportError as exc:  # the task may be redelivered; that is allowed
                log.warning("heartbeat failed: %s", exc)
