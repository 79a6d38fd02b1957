"""The client's task table: every task from submit() until its future is resolved.

It is the one piece of state the executor's threads share, and it is guarded by one lock:

    submit() ──reserve──▶ preparing ──add──▶ pending ──take_packs──▶ dispatching
              (pickling in the          (cancellable)   (dispatcher:  │ register_message
               caller's thread)                          S3 uploads)  ▼
                                  done ◀──resolve (collector, dead-letter watcher)── in flight
                                        returns the credit when its message is finished

Every accepted task is in exactly one of these places until it is resolved, so shutdown can wait
for all of them (``wait_done``) and breaking the executor can fail all of them (``drain_all``),
including a task still being pickled or uploaded. ``reserve`` is the atomic acceptance: once
``closing`` is set (shutdown) or the table is ``broken``, nothing more is accepted.

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
from dataclasses import dataclass, field

#: A pack should run about this long: long enough that per-message requests are noise beside
#: the work, short enough that the last packs of a map finish together on all workers.
TARGET_MESSAGE_SECONDS = 0.5
#: Until task durations are measured, packs hold at most this many tasks.
INITIAL_PACK = 4
#: Upper bound on tasks per message whatever their size (bounds the work lost to a crash).
MAX_PACK = 256
#: Weight of a new observation in the running mean of task duration.
_EWMA = 0.2


class NotAccepted(Exception):
    """reserve() refused: the executor is shutting down or broken (args[0] says which)."""


@dataclass
class WorkItem:
    """A submitted task with its pickled call, not yet sent.

    ``blobs`` are the content-addressed payloads the task needs in S3 (a large callable or
    large argument objects): uploaded once per session, whatever the number of tasks.
    ``buffers`` are the raw out-of-band buffers of its arguments by digest, and
    ``buffer_order`` their digests in the order unpickling takes them: each travels once per
    message (or, when large, once per session in S3).
    """

    task_id: str
    future: Future
    label: str
    fn_bytes: bytes
    fn_digest: str
    args_bytes: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)
    buffers: dict[str, bytes] = field(default_factory=dict)
    buffer_order: tuple[str, ...] = ()
    #: Its message names buffers the worker should hold (kept until resolved, to resend).
    names_held: bool = False
    #: Sent again, whole, after its worker did not hold a named buffer (already running).
    resend: bool = False

    @property
    def size(self) -> int:
        return len(self.fn_bytes) + len(self.args_bytes)

    @property
    def shared(self) -> tuple[str, ...]:
        """Digests of the content-addressed objects this task may need in S3."""
        return (self.fn_digest, *self.blobs, *self.buffers)


@dataclass
class InFlight:
    """A task whose message was sent: what is needed to resolve it and return its credit.

    ``payload`` is the S3 key of the task's own arguments, when they travelled there: deleted
    once the task is resolved. Nothing else of the task (callable, arguments) is kept, except
    for a task whose message named buffers the worker should hold: ``retained`` keeps it
    until it is resolved, to send it again whole if the worker does not hold them.
    """

    future: Future
    label: str
    message: int
    payload: str | None = None
    shared: tuple[str, ...] = ()
    garbage: list[str] = field(default_factory=list)  # S3 keys freed by its resolution
    retained: WorkItem | None = None


class TaskTable:
    def __init__(self, credits: int):
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._preparing = 0
        self._preparing_futures: set[Future] = set()
        self._pending: deque[WorkItem] = deque()
        self._dispatching: dict[str, Future] = {}
        self._in_flight: dict[str, InFlight] = {}
        self._messages: dict[int, int] = {}  # message number -> tasks not yet resolved
        self._next_message = 0
        self.credits = credits
        self.closing = False
        self.broken: BaseException | None = None
        self.resolved = 0  # tasks resolved so far (the monitor's measure of progress)
        self.mean_seconds: float | None = None
        # Content-addressed S3 objects (large callables, blobs): how many outstanding tasks
        # need each, and where it was uploaded. When the count falls to zero the object is
        # garbage; a later task that needs it again uploads a new generation under a new key,
        # so deleting the old one can never race with its re-upload.
        self._shared_refs: dict[str, int] = {}
        self._uploaded: dict[str, str] = {}

    # -- acceptance ---------------------------------------------------------------------------

    def reserve(self, future: Future) -> None:
        """Accept a task before it is pickled; raises NotAccepted after shutdown or breaking.

        From here on the task counts as outstanding: shutdown(wait=True) waits for it and
        breaking fails it, even while the caller is still pickling its arguments.
        """
        with self._lock:
            if self.broken is not None:
                raise NotAccepted("broken")
            if self.closing:
                raise NotAccepted("shutdown")
            self._preparing += 1
            self._preparing_futures.add(future)

    def add(self, item: WorkItem) -> bool:
        """Queue a reserved task; False when it was failed or cancelled meanwhile."""
        with self._lock:
            self._preparing -= 1
            self._preparing_futures.discard(item.future)
            live = self.broken is None and not item.future.done()
            if live:
                self._pending.append(item)
                for key in item.shared:
                    self._shared_refs[key] = self._shared_refs.get(key, 0) + 1
            # Wake the threads only when this can change what they wait for: the dispatcher
            # needs a credit, the collector work where there was none, shutdown an empty
            # table. A wake-up per submit while all credits are taken (a large map) would be a
            # thread switch per task for nothing.
            if not live or self.credits > 0 or self._outstanding() <= 1:
                self._changed.notify_all()
            return live

    def abandon(self, future: Future) -> None:
        """A reserved task that will not be queued (its pickling failed)."""
        with self._lock:
            self._preparing -= 1
            self._preparing_futures.discard(future)
            self._changed.notify_all()

    # -- queries ------------------------------------------------------------------------------

    def outstanding(self) -> int:
        with self._lock:
            return self._outstanding()

    def _outstanding(self) -> int:
        return (self._preparing + len(self._pending) + len(self._dispatching)
                + len(self._in_flight))

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block until some task is outstanding or the table closes; True if work exists."""
        with self._lock:
            self._changed.wait_for(lambda: self._outstanding() or self.closing, timeout)
            return bool(self._outstanding())

    def wait_done(self, timeout: float | None = None) -> bool:
        """Block until nothing is outstanding."""
        with self._lock:
            return self._changed.wait_for(lambda: not self._outstanding(), timeout)

    def close(self) -> None:
        """No new tasks from now on (shutdown)."""
        with self._lock:
            self.closing = True
            self._changed.notify_all()

    # -- the dispatcher -----------------------------------------------------------------------

    def take_packs(self, max_messages: int) -> list[list[WorkItem]] | None:
        """Wait for a credit and pending work; return up to max_messages packs of tasks.

        Returns None once the table is closing (or broken) and nothing is left to send. The
        items move to "dispatching" until register_message or drop_dispatching.
        """
        with self._lock:
            self._changed.wait_for(
                lambda: (self._pending and self.credits > 0)
                or self.broken is not None
                or (self.closing and not self._pending and not self._preparing)
            )
            if self.broken is not None or not (self._pending and self.credits > 0):
                return None
            n_messages = min(self.credits, max_messages)
            pack = self._pack_size()
            packs = []
            for _ in range(n_messages):
                items = []
                while self._pending and len(items) < pack:
                    item = self._pending.popleft()
                    self._dispatching[item.task_id] = item.future
                    items.append(item)
                if not items:
                    break
                packs.append(items)
            return packs

    def _pack_size(self) -> int:
        per_message = math.ceil(len(self._pending) / max(1, self.credits))
        if self.mean_seconds is None:
            by_duration = INITIAL_PACK
        else:
            by_duration = max(1, int(TARGET_MESSAGE_SECONDS / max(self.mean_seconds, 1e-6)))
        return max(1, min(per_message, by_duration, MAX_PACK))

    def register_message(self, entries: list[tuple[WorkItem, str | None]]) -> int | None:
        """Record that these tasks went out in one message (consumes one credit).

        ``entries`` pairs each item with the S3 key of its own payload, if any. Returns None
        when the executor broke meanwhile (their futures were failed by drain_all).
        """
        with self._lock:
            if self.broken is not None:
                return None
            number = self._next_message
            self._next_message += 1
            self._messages[number] = len(entries)
            self.credits -= 1
            for item, payload in entries:
                self._dispatching.pop(item.task_id, None)
                self._in_flight[item.task_id] = InFlight(
                    item.future, item.label, number, payload, item.shared,
                    retained=item if item.names_held else None)
            # The collectors wait for tasks in flight: wake them.
            self._changed.notify_all()
            return number

    def drop_dispatching(self, item: WorkItem) -> list[str]:
        """A task the dispatcher could not send (cancelled, upload failed); returns the S3
        keys of shared objects no task needs any more."""
        with self._lock:
            self._dispatching.pop(item.task_id, None)
            self._changed.notify_all()
            return self._release(item.shared)

    def uploaded_key(self, digest: str) -> str | None:
        with self._lock:
            return self._uploaded.get(digest)

    def set_uploaded(self, digest: str, key: str) -> None:
        with self._lock:
            self._uploaded[digest] = key

    def _release(self, shared) -> list[str]:
        garbage = []
        for digest in shared:
            left = self._shared_refs.get(digest, 0) - 1
            if left > 0:
                self._shared_refs[digest] = left
                continue
            self._shared_refs.pop(digest, None)
            key = self._uploaded.pop(digest, None)
            if key is not None:
                garbage.append(key)
        return garbage

    def sendable(self) -> int:
        """How many pending tasks the free credits would send right now (for cancel_futures:
        those count as queued for execution, as ProcessPoolExecutor's call queue does)."""
        with self._lock:
            return min(len(self._pending), self.credits * self._pack_size())

    # -- the collector and the dead-letter watcher --------------------------------------------

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
            left = self._message_done(record.message)
            record.retained = None  # nothing of the task is kept past its resolution
            record.garbage = self._release(record.shared)
            if record.payload:
                record.garbage.append(record.payload)
            if not left or not self._outstanding():  # a credit came back, or all done
                self._changed.notify_all()
            return record

    def requeue(self, task_id: str) -> InFlight | None:
        """A task whose worker did not hold the buffers its message named: back to the front
        of the queue, to be sent again with every buffer inline. None for a duplicate answer
        (the task was resolved, or was sent again already)."""
        with self._lock:
            record = self._in_flight.get(task_id)
            if record is None or record.retained is None:
                return None
            del self._in_flight[task_id]
            self._message_done(record.message)
            item, record.retained = record.retained, None
            item.names_held, item.resend = False, True
            self._pending.appendleft(item)
            self._changed.notify_all()
            return record

    def _message_done(self, message: int) -> int:
        """One task of a message has left it (resolved, or put back to be sent again); the
        message's credit comes back with its last task. Returns how many of its tasks are
        left."""
        left = self._messages[message] - 1
        if left:
            self._messages[message] = left
        else:
            del self._messages[message]
            self.credits += 1
        return left

    # -- cancellation and failure -------------------------------------------------------------

    def drain_pending(self, keep: int = 0) -> list[WorkItem]:
        """Remove the tasks not yet sent, except the first ``keep`` (for cancel_futures) and
        those waiting to be sent again (they were sent for execution: they finish)."""
        with self._lock:
            kept: deque[WorkItem] = deque()
            items = []
            for i, item in enumerate(self._pending):
                (kept if i < keep or item.resend else items).append(item)
            self._pending = kept
            for item in items:
                self._release(item.shared)  # the objects stay until the session is removed
            self._changed.notify_all()
            return items

    def break_(self, error: BaseException) -> list[Future] | None:
        """Mark the table broken and remove every outstanding task, wherever it is.

        Returns the futures to fail (the caller fails them outside the lock), or None when it
        was broken already. Tasks still being pickled are failed here too; their add() then
        finds them done and drops them.
        """
        with self._lock:
            if self.broken is not None:
                return None
            self.broken = error
            futures = list(self._preparing_futures)
            futures += [i.future for i in self._pending]
            futures += list(self._dispatching.values())
            futures += [r.future for r in self._in_flight.values()]
            self._pending.clear()
            self._dispatching.clear()
            self._in_flight.clear()
            self._messages.clear()
            self._changed.notify_all()
            return futures
