"""Threads that resolve futures: the result collector and the dead-letter watcher.

Both poll only while some task is outstanding, so an idle executor makes no requests, and
both claim a task through TaskTable.resolve, which hands each task id out once: a result
delivered twice (a worker died after sending it, and the task ran again) is ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import botocore.exceptions

from . import protocol
from .errors import SerializationError, TaskDeadLetteredError, WorkersUnavailableError
from .output import OutputPrinter
from .protocol import OutputMessage, ResultEntry, ResultMessage, TaskMessage, WorkerEvent
from .serialization import loads
from .tasks import TaskTable
from .threads import ServiceThread
from .transport import MessageQueue, PayloadStore, QueueGone, Received, TransportError

log = logging.getLogger(__name__)

#: Consecutive failed polls (each already retried by botocore) before the executor gives up.
MAX_POLL_FAILURES = 5
#: A dead-lettered message of another live session is hidden from us this long: short, because
#: its owner's watcher only sees it once it is visible again; long enough that we do not
#: receive it over and over while the owner claims it.
FOREIGN_HIDE_SECONDS = 2
#: ... and of a session that has ended, this long (SQS's maximum, 12 hours): it stays in the
#: queue for operators to inspect until its retention period ends.
ENDED_HIDE_SECONDS = 43200

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
        while self.table.wait_for_work():
            try:
                received = self.queue.receive()
            except TransportError as exc:
                if self.table.closing:  # shut down mid-poll: the endpoint may be gone already
                    return
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
    ):
        super().__init__("batchexec-collector", table, queue, on_broken)
        self.store = store
        self.session = session
        self.printer = OutputPrinter()

    def handle(self, received: list[Received]) -> None:
        for message in received:
            self._handle(message)
        try:
            self.queue.delete(m.receipt for m in received)
        except TransportError as exc:  # they will be seen again and ignored as duplicates
            log.warning("deleting result messages failed: %s", exc)

    def _handle(self, message: Received) -> None:
        try:
            msg = protocol.decode(message.body)
        except protocol.ProtocolError as exc:
            log.warning("ignoring an unreadable message on the result queue: %s", exc)
            return
        if msg.session != self.session:
            log.warning("ignoring a message of session %s on our result queue", msg.session)
        elif isinstance(msg, ResultMessage):
            for entry in msg.results:
                self._resolve(entry)
        elif isinstance(msg, OutputMessage):
            self.printer.print(msg)
        elif isinstance(msg, WorkerEvent) and msg.event in (WorkerEvent.VERSION_MISMATCH,
                                                            WorkerEvent.PROTOCOL_MISMATCH):
            self.on_broken(WorkersUnavailableError(msg.message))
        elif isinstance(msg, WorkerEvent) and msg.event == WorkerEvent.INITIALIZER_FAILED:
            cause = None
            if msg.error is not None:
                try:
                    cause = loads(msg.error, "initializer's exception").rebuild()
                except SerializationError as exc:
                    cause = exc
            error = WorkersUnavailableError(
                f"the initializer raised in worker {msg.worker}: "
                f"{type(cause).__name__}: {cause}; no task can run (see the cause above)"
            )
            error.__cause__ = cause
            self.on_broken(error)

    def _resolve(self, entry: ResultEntry) -> None:
        record = self.table.resolve(entry.task_id, entry.seconds)
        if record is None:
            return  # a duplicate: the task was already resolved
        try:
            data = self.store.get(entry.ref) if entry.ref else entry.data
            value = loads(data, f"result of task {entry.task_id} ({record.label})")
        except (SerializationError, TransportError) as exc:
            record.future.set_exception(exc)
            return
        if entry.ok:
            record.future.set_result(value)
        else:
            record.future.set_exception(value.rebuild())


class DeadLetterWatcher(QueuePoller):
    """Fails the futures of this session's tasks that reached the stack's dead-letter queue."""

    def __init__(
        self,
        table: TaskTable,
        queue: MessageQueue,
        session: str,
        max_attempts: int,
        session_alive: Callable[[str], bool],
        on_broken: BreakHandler,
    ):
        super().__init__("batchexec-dead-letters", table, queue, on_broken)
        self.session = session
        self.max_attempts = max_attempts
        self.session_alive = session_alive
        self._alive_cache: dict[str, bool] = {}

    def handle(self, received: list[Received]) -> None:
        for message in received:
            try:
                self._handle(message)
            except (TransportError, botocore.exceptions.ClientError,
                    botocore.exceptions.BotoCoreError) as exc:
                log.warning("handling a dead-lettered message failed: %s", exc)

    def _handle(self, message: Received) -> None:
        owner = message.attributes.get(protocol.SESSION_ATTRIBUTE)
        msg = None
        try:
            msg = protocol.decode(message.body)
            owner = msg.session
        except protocol.ProtocolError:
            pass
        if owner != self.session or not isinstance(msg, TaskMessage):
            self._release(message, owner)
            return
        for task in msg.tasks:
            record = self.table.resolve(task.task_id)
            if record is not None:
                record.future.set_exception(
                    TaskDeadLetteredError(task.task_id, self.max_attempts, record.label)
                )
        self.queue.delete([message.receipt])

    def _release(self, message: Received, owner: str | None) -> None:
        if owner is None:
            alive = False
        else:
            if owner not in self._alive_cache:
                self._alive_cache[owner] = self.session_alive(owner)
            alive = self._alive_cache[owner]
        self.queue.extend(message.receipt, FOREIGN_HIDE_SECONDS if alive else ENDED_HIDE_SECONDS)
