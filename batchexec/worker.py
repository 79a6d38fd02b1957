"""The worker: the job definition's container command, ``batchexec worker``.

One worker is one AWS Batch array child (or, on the emulator, one local process). It serves
exactly one executor session, described by the BATCHEXEC_* environment (config.SessionSettings):

    receive one task message (long poll)
      ├─ redelivered pack of several tasks? split it into one message per task, delete it
      ├─ single task past max_attempts?     forward it to the dead-letter queue, delete it
      └─ otherwise: heartbeat keeps the message invisible while its tasks run one by one;
         results are packed and sent (flushed at least every RESULT_FLUSH_SECONDS), and only
         after the last send succeeded is the task message deleted (delivery at least once).

It exits 0 after ``idle_timeout`` seconds without work or as soon as its session's queues are
gone (the client shut down), and 1 if the initializer raised (after reporting it to the client).
Tasks run in the main thread, one at a time: a GPU worker owns its device.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict

import cloudpickle

from . import protocol
from .aws import AwsClients
from .config import SessionSettings
from .errors import SerializationError
from .protocol import ResultEntry, ResultMessage, TaskEntry, TaskMessage, WorkerEvent
from .serialization import PICKLE_PROTOCOL, BlobTable, describe, dumps_exception, loads
from .transport import MessageQueue, PayloadStore, QueueGone, Received, TransportError

log = logging.getLogger("batchexec.worker")

#: Results wait at most this long in the worker before being sent: short tasks share a
#: message, long tasks report as soon as they finish.
RESULT_FLUSH_SECONDS = 0.2
#: Distinct callables kept unpickled (a map sends the same callable with every pack).
FUNCTION_CACHE_SIZE = 64


class Heartbeat(threading.Thread):
    """Extends the visibility of the message being worked on every third of the timeout."""

    def __init__(self, queue: MessageQueue, visibility_timeout: int):
        super().__init__(name="batchexec-heartbeat", daemon=True)
        self.queue = queue
        self.timeout = visibility_timeout
        self.interval = max(0.5, visibility_timeout / 3)
        self._receipt: str | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def hold(self, receipt: str | None) -> None:
        with self._lock:
            self._receipt = receipt

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            with self._lock:
                receipt = self._receipt
            if receipt is None:
                continue
            try:
                self.queue.extend(receipt, self.timeout)
            except QueueGone:
                return
            except TransportError as exc:  # the task may be redelivered; that is allowed
                log.warning("heartbeat failed: %s", exc)


class ResultSender:
    """Packs results into as few messages and calls as SQS allows."""

    def __init__(self, queue: MessageQueue, settings: SessionSettings, worker_id: str):
        self.queue = queue
        self.settings = settings
        self.worker_id = worker_id
        self.pending: list[ResultEntry] = []
        self.first_at = 0.0

    def add(self, entry: ResultEntry) -> None:
        if not self.pending:
            self.first_at = time.monotonic()
        self.pending.append(entry)

    def due(self) -> bool:
        return bool(self.pending) and time.monotonic() - self.first_at >= RESULT_FLUSH_SECONDS

    def flush(self) -> None:
        if not self.pending:
            return
        bodies, pack, size = [], [], 0
        for entry in self.pending:
            n = entry.encoded_size()
            if pack and size + n > protocol.MESSAGE_BODY_LIMIT:
                bodies.append(self._encode(pack))
                pack, size = [], 0
            pack.append(entry)
            size += n
        bodies.append(self._encode(pack))
        self.queue.send(bodies, self.settings.session)
        self.pending = []

    def _encode(self, entries: list[ResultEntry]) -> str:
        return ResultMessage(self.settings.session, self.worker_id, entries).encode()


class Worker:
    def __init__(self, settings: SessionSettings, clients: AwsClients, worker_id: str):
        self.settings = settings
        self.worker_id = worker_id
        sqs = clients.client("sqs")
        self.tasks = MessageQueue(sqs, settings.task_queue_url)
        self.results = MessageQueue(sqs, settings.result_queue_url)
        self.dead_letters = MessageQueue(sqs, settings.dead_letter_queue_url)
        self.store = PayloadStore(clients.client("s3"), settings.bucket, settings.prefix)
        self.sender = ResultSender(self.results, settings, worker_id)
        self.functions: OrderedDict[str, object] = OrderedDict()
        self.tasks_run = 0

    # -- life cycle ------------------------------------------------------------------------

    def run(self) -> int:
        try:
            if not self._initialize():
                return 1
            heartbeat = Heartbeat(self.tasks, self.settings.visibility_timeout)
            heartbeat.start()
            try:
                self._serve(heartbeat)
            finally:
                heartbeat.stop()
        except QueueGone:
            log.info("session %s has ended (its queues are gone): exiting", self.settings.session)
        log.info("worker %s exiting after %d tasks", self.worker_id, self.tasks_run)
        return 0

    def _initialize(self) -> bool:
        key = self.settings.initializer_key
        if not key:
            return True
        try:
            initializer, initargs = loads(self.store.get(key), "initializer")
            initializer(*initargs)
            return True
        except Exception as exc:
            log.exception("the initializer raised: reporting to the client and exiting")
            event = WorkerEvent(
                self.settings.session,
                self.worker_id,
                WorkerEvent.INITIALIZER_FAILED,
                dumps_exception(exc),
            )
            self.results.send([event.encode()], self.settings.session)
            return False

    def _serve(self, heartbeat: Heartbeat) -> None:
        idle_since = time.monotonic()
        while True:
            remaining = self.settings.idle_timeout - (time.monotonic() - idle_since)
            if remaining <= 0:
                log.info("no task for %.0f s: exiting", self.settings.idle_timeout)
                return
            received = self.tasks.receive(max_messages=1, wait=math.ceil(min(remaining, 20)))
            for message in received:
                self._handle(message, heartbeat)
                idle_since = time.monotonic()

    # -- one message ------------------------------------------------------------------------

    def _handle(self, message: Received, heartbeat: Heartbeat) -> None:
        try:
            msg = protocol.decode(message.body)
            if not isinstance(msg, TaskMessage):
                raise protocol.ProtocolError(f"expected a task message, got {type(msg).__name__}")
        except protocol.ProtocolError as exc:
            log.error("unreadable task message %s (%s): moving it to the dead-letter queue",
                      message.message_id, exc)
            self._dead_letter(message)
            return

        attempts = msg.prior_attempts + message.receive_count
        if len(msg.tasks) > 1 and message.receive_count > 1:
            # A worker died while running this pack. Retrying the whole pack would let one
            # poison task fail its neighbours: give each task its own message. Which task
            # killed the worker is unknown, so each is charged the pack's failed runs, but never
            # so many that it loses its own solo attempt.
            log.warning("pack %s was redelivered: splitting its %d tasks",
                        message.message_id, len(msg.tasks))
            prior = min(attempts - 1, self.settings.max_attempts - 1)
            singles = [msg.single(t, prior).encode() for t in msg.tasks]
            self.tasks.send(singles, self.settings.session)
            self.tasks.delete([message.receipt])
            return
        if attempts > self.settings.max_attempts:
            log.error("task %s failed on %d attempts: moving it to the dead-letter queue",
                      msg.tasks[0].task_id, attempts - 1)
            self._dead_letter(message)
            return

        heartbeat.hold(message.receipt)
        try:
            for entry in msg.tasks:
                self.sender.add(self._execute(msg, entry))
                if self.sender.due():
                    self.sender.flush()
            self.sender.flush()
        finally:
            heartbeat.hold(None)
        self.tasks.delete([message.receipt])

    def _dead_letter(self, message: Received) -> None:
        self.dead_letters.send([message.body], self.settings.session)
        self.tasks.delete([message.receipt])

    # -- one task ---------------------------------------------------------------------------

    def _execute(self, msg: TaskMessage, entry: TaskEntry) -> ResultEntry:
        started = time.perf_counter()
        try:
            fn, args, kwargs = self._load_call(msg, entry)
        except (SerializationError, TransportError) as exc:
            return self._result(entry.task_id, False, dumps_exception(exc), started)
        try:
            value = fn(*args, **kwargs)
        except (Exception, SystemExit) as exc:
            return self._result(entry.task_id, False, dumps_exception(exc), started)
        finally:
            self.tasks_run += 1
        try:
            data = cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
        except Exception as exc:
            error = SerializationError(
                f"the result of {describe(fn)} (a {type(value).__name__}) cannot be pickled: "
                f"{type(exc).__name__}: {exc}; return plain data (numbers, strings, arrays, "
                f"dicts) or write large outputs to storage and return their location"
            )
            return self._result(entry.task_id, False, dumps_exception(error), started)
        return self._result(entry.task_id, True, data, started)

    def _load_call(self, msg: TaskMessage, entry: TaskEntry):
        fn = self._function(msg, entry.fn)
        args_bytes = self.store.get(entry.ref) if entry.ref is not None else entry.args
        refs = msg.refs
        blobs = BlobTable(lambda key: self.store.get(refs[key])) if entry.blobs else None
        args, kwargs = loads(args_bytes, f"arguments of task {entry.task_id}", blobs)
        return fn, args, kwargs

    def _function(self, msg: TaskMessage, digest: str):
        fn = self.functions.get(digest)
        if fn is None:
            data = msg.fns[digest] if digest in msg.fns else self.store.get(msg.refs[digest])
            fn = loads(data, "callable", BlobTable(lambda key: self.store.get(msg.refs[key])))
            self.functions[digest] = fn
            if len(self.functions) > FUNCTION_CACHE_SIZE:
                self.functions.popitem(last=False)
        else:
            self.functions.move_to_end(digest)
        return fn

    def _result(self, task_id: str, ok: bool, data: bytes, started: float) -> ResultEntry:
        seconds = time.perf_counter() - started
        if len(data) > self.settings.inline_limit:
            key = self.store.put(f"results/{task_id}-{uuid.uuid4().hex[:8]}", data)
            return ResultEntry(task_id, ok, seconds, ref=key)
        return ResultEntry(task_id, ok, seconds, data=data)


def worker_id() -> str:
    """The Batch job id (with array index) when there is one, else host:pid."""
    job = os.environ.get("AWS_BATCH_JOB_ID")
    if job:
        index = os.environ.get("AWS_BATCH_JOB_ARRAY_INDEX")
        return f"{job}:{index}" if index is not None and ":" not in job else job
    return f"{socket.gethostname()}:{os.getpid()}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("BATCHEXEC_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = SessionSettings.from_env()
    clients = AwsClients.resolve()
    wid = worker_id()
    log.info("worker %s serving session %s", wid, settings.session)
    return Worker(settings, clients, wid).run()
