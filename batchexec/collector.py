"""Threads that resolve futures: the result collector and the dead-letter watcher.

Both claim a task through TaskTable.resolve, which hands each task id out once: a result
delivered twice (a worker died after sending it, and the task ran again) is ignored.

The collector long-polls the result queue only while tasks are outstanding, so an idle executor
makes no requests. It also deletes payloads that are no longer needed (a resolved task's
arguments in S3, a result once read) and hands forwarded task output to the printer.

The dead-letter watcher is a backstop: workers report the tasks they give up on through the
result queue, so the dead-letter queue only receives messages whose workers died outright
max_attempts times. It checks that queue every DEAD_LETTER_POLL_SECONDS while tasks are
outstanding, waiting on an event in between, so shutdown stops it at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue

import botocore.exceptions

from . import protocol
from .batching import LINGER_SECONDS, gather
from .config import SQS_MAX_VISIBILITY
from .errors import SerializationError, TaskDeadLetteredError, WorkersUnavailableError
from .held import HeldBuffers
from .output import OutputPrinter
from .protocol import (
    SQS_BATCH_ENTRIES,
    OutputMessage,
    ResultEntry,
    ResultMessage,
    TaskMessage,
    WorkerEvent,
)
from .serialization import digest, loads
from .tasks import TaskTable
from .threads import ServiceThread, settle
from .transport import MessageQueue, PayloadStore, QueueGone, Received, TransportError

log = logging.getLogger(__name__)
_futures_log = logging.getLogger("concurrent.futures")

#: Consecutive failed polls (each already retried by botocore) before the executor gives up.
MAX_POLL_FAILURES = 5
#: A dead-lettered message of another live session is made visible again this many seconds
#: after we received it: none. Its owner's watcher only sees it while it is visible, and
#: watchers poll on the same period: a hide of any fixed length ends just before the hider's
#: next poll (it received the message a poll earlier), so the hider received it again each
#: time and the owner almost never did (a 180 s test timed out, its shutdown waited for
#: ever). Visible at once, it is out of its owner's sight only for the milliseconds another
#: watcher holds it. The price is one ChangeMessageVisibility per foreign message per poll,
#: while we have tasks outstanding and the owner has not yet claimed it.
FOREIGN_HIDE_SECONDS = 0
#: ... and of a session that has ended, this long: it stays in the queue for operators to
#: inspect until its retention period ends. SQS counts a message's 12-hour visibility limit from
#: the receive, not from this call, so asking for the full 43,200 s a moment after receiving is
#: refused; ten minutes of margin covers the liveness lookup's retries in between.
ENDED_HIDE_SECONDS = SQS_MAX_VISIBILITY - 600
#: How long "session X is alive" is believed: sessions end, and then their dead letters
#: must be parked for 12 hours rather than re-hidden every few seconds for 14 days.
ALIVE_CACHE_SECONDS = 60
#: Seconds between checks of the dead-letter queue while tasks are outstanding (a backstop:
#: see the module docstring). Each check is one short receive.
DEAD_LETTER_POLL_SECONDS = 5

BreakHandler = Callable[[BaseException], None]


class QueuePoller(ServiceThread):
    """Long-polls one queue while tasks are outstanding and hands what arrives to handle().

    A poll that fails (after botocore's own retries) is tried again; MAX_POLL_FAILURES in a
    row, or the queue being deleted under us, break the executor: the futures this thread
    serves could not be resolved otherwise. A failure after shutdown began is no error.
    """

    def __init__(self, name: str, table: TaskTable, queue: MessageQueue,
                 on_broken: BreakHandler):
        super().__init__(name, on_broken)
        self.table = table
        self.queue = queue

    def serve(self) -> None:
        failures = 0
        while self.table.wait_for_work() and self.table.broken is None:
            try:
                received = self.queue.receive()
            except TransportError as exc:
                if self.table.closing or self.table.broken is not None:
                    return  # shut down mid-poll: the endpoint may be gone already
                failures += 1
                log.warning("polling %s failed (%d/%d): %s", self.queue, failures,
                            MAX_POLL_FAILURES, exc)
                if isinstance(exc, QueueGone) or failures >= MAX_POLL_FAILURES:
                    self.on_broken(WorkersUnavailableError(f"cannot poll {self.queue}: {exc}"))
                    return
                continue
            failures = 0
            if received:
                self.handle(received)
            del received  # message bodies hold pickled results: keep none of them

    def handle(self, received: list[Received]) -> None:
        raise NotImplementedError


class ResultCollector(QueuePoller):
    def __init__(
        self,
        table: TaskTable,
        queue: MessageQueue,
        store: PayloadStore,
        session: str,
        on_broken: BreakHandler,
        printer: OutputPrinter | None = None,
        dead_letters: MessageQueue | None = None,
        held: HeldBuffers | None = None,
    ):
        super().__init__("batchexec-collector", table, queue, on_broken)
        self.held = held or HeldBuffers(0)
        self.store = store
        self.session = session
        self.dead_letters = dead_letters
        self.printer = printer or OutputPrinter()
        self._garbage: list[str] = []  # S3 payloads to delete after this batch
        self.janitor = Janitor(queue, store, on_broken)

    def handle(self, received: list[Received]) -> None:
        for message in received:
            self._handle(message)
        # Deleting is off the critical path: the next poll starts at once.
        self.janitor.discard([m.receipt for m in received], self._garbage)
        self._garbage = []

    def _handle(self, message: Received) -> None:
        if not message.authentic:
            self._reject(message)
            return
        try:
            msg = protocol.decode(message.body)
        except protocol.ProtocolError as exc:
            version = message.attributes.get(protocol.VERSION_ATTRIBUTE)
            if version is not None and version != str(protocol.PROTOCOL_VERSION):
                self.on_broken(protocol.ProtocolError(
                    f"a worker speaks batchexec protocol version {version}, this client "
                    f"version {protocol.PROTOCOL_VERSION}: install the same batchexec version "
                    f"on the client and in the worker image"
                ))
            else:
                log.warning("ignoring an unreadable message on the result queue: %s", exc)
            return
        if msg.session != self.session:
            log.warning("ignoring a message of session %s on our result queue", msg.session)
        elif isinstance(msg, ResultMessage):
            for entry in msg.results:
                self._resolve(entry, msg.worker)
        elif isinstance(msg, OutputMessage):
            self.printer.print(msg)
        elif isinstance(msg, WorkerEvent):
            self._worker_event(msg)

    def _reject(self, message: Received) -> None:
        """A message that nobody with the session's key wrote: never decoded or unpickled.
        It goes to the dead-letter queue for inspection (deleted here with the batch)."""
        log.error("a message on %s failed authentication (forged, or tampered with): moved "
                  "to the dead-letter queue without reading it", self.queue)
        if self.dead_letters is not None:
            try:
                self.dead_letters.send_each([message.body], self.session,
                                            rejected="unauthenticated result message")
            except TransportError as exc:
                log.warning("could not dead-letter it: %s", exc)

    def _worker_event(self, msg: WorkerEvent) -> None:
        if msg.event == WorkerEvent.INITIALIZER_FAILED:
            cause = None
            if msg.error is not None:
                try:
                    cause = loads(msg.error, "initializer's exception").rebuild()
                except SerializationError as exc:
                    cause = exc
            # As the standard executors do: logged at CRITICAL on "concurrent.futures", with
            # the (remote) traceback.
            _futures_log.critical("Exception in initializer (batchexec worker %s):",
                                  msg.worker, exc_info=cause)
            error = WorkersUnavailableError(
                f"the initializer raised in worker {msg.worker}: "
                f"{type(cause).__name__}: {cause}; no task can run (see the cause above)"
            )
            error.__cause__ = cause
            self.on_broken(error)
        elif msg.event in (WorkerEvent.VERSION_MISMATCH, WorkerEvent.PROTOCOL_MISMATCH):
            detail = msg.message or msg.event
            error_type = (protocol.ProtocolError if msg.event == WorkerEvent.PROTOCOL_MISMATCH
                          else WorkersUnavailableError)
            self.on_broken(error_type(f"worker {msg.worker} cannot serve this client: {detail}"))
        else:
            if msg.event == WorkerEvent.STARTED:
                self.held.started(msg.worker)  # it holds no buffer yet
            log.debug("worker %s: %s", msg.worker, msg.event)

    def _resolve(self, entry: ResultEntry, worker: str) -> None:
        if entry.missing is not None:  # not run: its worker lacks buffers its message named
            record = self.table.requeue(entry.task_id)
            if record is not None:
                self.held.delivered(record.message, worker)
                log.debug("task %s: worker %s does not hold %d buffer(s); sending it again "
                          "with them", entry.task_id, worker, len(entry.missing))
            return
        if entry.ref:
            self._garbage.append(entry.ref)  # read below, or a duplicate's: either way done
        record = self.table.resolve(entry.task_id, entry.seconds)
        if record is None:
            return  # a duplicate: the task was already resolved
        self.held.delivered(record.message, worker)
        self._garbage.extend(record.garbage)
        try:
            data = self.store.get(entry.ref) if entry.ref else entry.data
            if entry.ref and digest(data) != entry.sha:
                raise SerializationError(
                    f"the result of task {entry.task_id} ({record.label}) at "
                    f"s3://{self.store.bucket}/{entry.ref} does not match the digest its worker "
                    f"sent: it was changed after the worker wrote it, so it is not unpickled"
                )
            value = loads(data, f"result of task {entry.task_id} ({record.label})")
        except (SerializationError, TransportError) as exc:
            settle(record.future, error=exc)
            return
        if entry.ok:
            settle(record.future, result=value)
        else:
            settle(record.future, error=value.rebuild())


class Janitor(ServiceThread):
    """Deletes what the collector is done with (result messages, S3 payloads) in the
    background: a delete on the collector's own path would add a request's time to the round
    trip of the next result. The first delete waits up to ``linger`` seconds for more to share
    its call (batching.py). A failed delete is harmless (a result message seen again is a
    duplicate, ignored; payloads go with the session's prefix at shutdown)."""

    def __init__(self, queue: MessageQueue, store: PayloadStore, on_broken: BreakHandler,
                 linger: float = LINGER_SECONDS):  # fmt: skip
        super().__init__("batchexec-janitor", on_broken)
        self.queue = queue
        self.store = store
        self.linger = linger
        self._work: SimpleQueue = SimpleQueue()

    def discard(self, receipts: list[str], keys: list[str]) -> None:
        if receipts or keys:
            self._work.put((receipts, keys))

    def stop(self) -> None:
        self._work.put(None)

    def serve(self) -> None:
        def enough(items: list) -> bool:
            return sum(len(item[0]) for item in items) >= SQS_BATCH_ENTRIES

        while True:
            items = gather(self._work, self.linger, enough)
            receipts = [r for item in items if item is not None for r in item[0]]
            keys = [k for item in items if item is not None for k in item[1]]
            try:
                if receipts:
                    self.queue.delete(receipts)
                if keys:
                    self.store.delete(keys)
            except TransportError as exc:
                log.debug("cleaning up after results failed (harmless): %s", exc)
            if items[-1] is None:
                return


class DeadLetterWatcher(ServiceThread):
    """Fails the futures of this session's tasks that reached the stack's dead-letter queue."""

    def __init__(
        self,
        table: TaskTable,
        queue: MessageQueue,
        session: str,
        max_attempts: int,
        session_alive: Callable[[str], bool],
        on_broken: BreakHandler,
        interval: float = DEAD_LETTER_POLL_SECONDS,
    ):
        super().__init__("batchexec-dead-letters", on_broken)
        self.table = table
        self.queue = queue
        self.session = session
        self.max_attempts = max_attempts
        self.session_alive = session_alive
        self.interval = interval
        self._stopping = threading.Event()
        self._alive_cache: dict[str, tuple[bool, float]] = {}

    def stop(self) -> None:
        self._stopping.set()

    def serve(self) -> None:
        failures = 0
        while not self._stopping.wait(self.interval):
            if not self.table.outstanding() or self.table.broken is not None:
                continue
            try:
                received = self.queue.receive(wait=0)
            except TransportError as exc:
                failures += 1
                if self._stopping.is_set():
                    return
                log.warning("polling %s failed (%d/%d): %s", self.queue, failures,
                            MAX_POLL_FAILURES, exc)
                if failures >= MAX_POLL_FAILURES:
                    self.on_broken(WorkersUnavailableError(f"cannot poll {self.queue}: {exc}"))
                    return
                continue
            failures = 0
            for message in received:
                try:
                    self._handle(message)
                except (TransportError, botocore.exceptions.ClientError,
                        botocore.exceptions.BotoCoreError) as exc:
                    log.warning("handling a dead-lettered message failed: %s", exc)
            del received

    def _handle(self, message: Received) -> None:
        owner = message.attributes.get(protocol.SESSION_ATTRIBUTE)
        msg = None
        if message.authentic:  # JSON only: nothing here is ever unpickled
            try:
                msg = protocol.decode(message.body)
                owner = msg.session
            except protocol.ProtocolError:
                pass
        if owner != self.session or not isinstance(msg, TaskMessage) or not message.authentic:
            # Another session's messages are signed with its key, so never authentic here: the
            # unsigned session attribute only decides how long we hide them. One that claims
            # to be ours without our signature is forged or damaged: parked, never acted on.
            self._release(message, None if owner == self.session else owner)
            return
        for task in msg.tasks:
            record = self.table.resolve(task.task_id)
            if record is not None:
                settle(record.future, error=TaskDeadLetteredError(
                    task.task_id, self.max_attempts, record.label))
        self.queue.delete([message.receipt])

    def _alive(self, owner: str) -> bool:
        now = time.monotonic()
        cached = self._alive_cache.get(owner)
        if cached is None or now - cached[1] > ALIVE_CACHE_SECONDS:
            cached = self._alive_cache[owner] = (self.session_alive(owner), now)
        return cached[0]

    def _release(self, message: Received, owner: str | None) -> None:
        alive = owner is not None and self._alive(owner)
        self.queue.extend(message.receipt, FOREIGN_HIDE_SECONDS if alive else ENDED_HIDE_SECONDS)
