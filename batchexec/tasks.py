"""The client's task table: every task from submit() until its future is resolved.

It is the one piece of state the executor's threads share, and it is guarded by one lock:

    submit() ──add──▶ pending ──take_pack (dispatcher)──▶ in flight ──resolve (collector,
                      (cancellable)   consumes a message credit      dead-letter watcher)──▶ done
                                                                      returns the credit when
                                                                      its message is finished

Futures are completed *outside* the lock (resolve returns the record, the caller sets the
result), because user callbacks run inside set_result and may call submit().

Credits bound the task messages in flight (about two per worker); packing decides how many
tasks share a message: one when little waits (low latency), more when many wait and tasks are
short (few requests), sized from the measured task duration so a pack runs for about
TARGET_MESSAGE_SECONDS and the workers stay evenly loaded.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

#: A pack should run about this long: long enough that per-message requests are noise beside
#: the work, short enough that the last packs of a map finish together on all workers.
TARGET_MESSAGE_SECONDS = 0.5
#: Until task durations are measured, packs hold at most this many tasks.
INITIAL_PACK = 4
#: Upper bound on tasks per message whatever their size (bounds the work lost to a crash).
MAX_PACK = 256
#: Weight of a new observation in the running mean of task duration.
_EWMA = 0.2


@dataclass
class WorkItem:
    """A submitted task with its pickled call, not yet sent."""

    task_id: str
    future: Future
    label: str
    fn_bytes: bytes
    fn_digest: str
    args_bytes: bytes

    @property
    def size(self) -> int:
        return len(self.fn_bytes) + len(self.args_bytes)


@dataclass
class InFlight:
    """A task whose message was sent: what is needed to resolve it and return its credit."""

    future: Future
    label: str
    message: int


class TaskTable:
    def __init__(self, credits: int):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: deque[WorkItem] = deque()
        self._in_flight: dict[str, InFlight] = {}
        self._messages: dict[int, int] = {}  # message number -> tasks not yet resolved
        self._next_message = 0
        self.credits = credits
        self.closing = False
        self.resolved = 0  # tasks resolved so far (the monitor's measure of progress)
        self.mean_seconds: float | None = None

    # -- producers / queries ----------------------------------------------------------------

    def add(self, item: WorkItem) -> None:
        with self._lock:
            self._pending.append(item)
            self._changed.notify_all()

    def outstanding(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._in_flight)

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block until some task is outstanding or the table closes; True if work exists."""
        with self._lock:
            self._changed.wait_for(
                lambda: self._pending or self._in_flight or self.closing, timeout
            )
            return bool(self._pending or self._in_flight)

    def wait_done(self, timeout: float | None = None) -> bool:
        """Block until nothing is outstanding."""
        with self._lock:
            return self._changed.wait_for(
                lambda: not self._pending and not self._in_flight, timeout
            )

    def close(self) -> None:
        with self._lock:
            self.closing = True
            self._changed.notify_all()

    # -- the dispatcher ---------------------------------------------------------------------

    def take_packs(self, max_messages: int) -> list[list[WorkItem]] | None:
        """Wait for a credit and pending work; return up to max_messages packs of tasks.

        Returns None when the table is closing and nothing can be sent. Each returned pack
        has consumed one credit; cancelled futures are dropped here.
        """
        with self._lock:
            self._changed.wait_for(lambda: (self._pending and self.credits > 0) or self.closing)
            if not (self._pending and self.credits > 0):
                return None
            n_messages = min(self.credits, max_messages)
            per_message = math.ceil(len(self._pending) / self.credits)
            pack = max(1, min(per_message, self._pack_for_duration(), MAX_PACK))
            packs = []
            for _ in range(n_messages):
                items = []
                while self._pending and len(items) < pack:
                    items.append(self._pending.popleft())
                if not items:
                    break
                packs.append(items)
            return packs

    def _pack_for_duration(self) -> int:
        if self.mean_seconds is None:
            return INITIAL_PACK
        return max(1, int(TARGET_MESSAGE_SECONDS / max(self.mean_seconds, 1e-6)))

    def register_message(self, items: list[WorkItem]) -> int:
        """Record that items went out in one message; consumes one credit."""
        with self._lock:
            number = self._next_message
            self._next_message += 1
            self._messages[number] = len(items)
            self.credits -= 1
            for item in items:
                self._in_flight[item.task_id] = InFlight(item.future, item.label, number)
            # The collectors wait for "pending or in flight": a task that left pending before
            # they looked must wake them now that it is in flight, or its result is never read.
            self._changed.notify_all()
            return number

    # -- the collector and the dead-letter watcher ------------------------------------------

    def resolve(self, task_id: str, seconds: float | None = None) -> InFlight | None:
        """Claim a task for resolution: exactly once; None for duplicates and strangers."""
        with self._lock:
            record = self._in_flight.pop(task_id, None)
            if record is None:
                return None
            self.resolved += 1
            if seconds is not None:
                m = self.mean_seconds
                self.mean_seconds = seconds if m is None else (1 - _EWMA) * m + _EWMA * seconds
            left = self._messages[record.message] - 1
            if left:
                self._messages[record.message] = left
            else:
                del self._messages[record.message]
                self.credits += 1
            self._changed.notify_all()
            return record

    # -- cancellation and failure -----------------------------------------------------------

    def drain_pending(self) -> list[WorkItem]:
        """Remove every task not yet sent (for cancel_futures and a broken executor)."""
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._changed.notify_all()
            return items

    def drain_all(self) -> list[Future]:
        """Remove every outstanding task, sent or not; the caller fails their futures."""
        with self._lock:
            futures = [i.future for i in self._pending]
            futures += [r.future for r in self._in_flight.values()]
            self._pending.clear()
            self._in_flight.clear()
            self._messages.clear()
            self._changed.notify_all()
            return futures
