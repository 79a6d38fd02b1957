"""The supervisor: the worker's main process. It owns the queues and never runs user code.

    receive one task message (long poll; none once the worker is too old to finish a task
    before Batch's job timeout)
      ├─ another protocol version?            report "protocol_mismatch", dead-letter it
      ├─ redelivered pack of several tasks?   split it into one message per task, delete it
      ├─ single task past max_attempts?       forward it to the dead-letter queue, delete it
      └─ otherwise, while the heartbeat keeps the message invisible, for each task, in
         order, up to PIPELINE_DEPTH of them in the runner at a time (_run_pack):
           ├─ too close to SQS's 12 h or to the job timeout to start it? hand the rest back
           │  as a new message, stop here (checked here before sending to an idle runner,
           │  and by the runner, through not_after, before starting a task queued there)
           ├─ download a large payload (raw bytes), send the call to the runner; replies:
           │    result           → result (and the task's output) to the outbox: sent ≤ 0.2 s
           │    runner died      → replaced at once; the running task (the oldest one
           │                       unanswered) is charged one attempt and retried, failing
           │                       with TaskCrashedError at max_attempts; the tasks queued
           │                       behind it never started: sent again, uncharged
           │    max_task_seconds → runner replaced, task fails with TaskTimeoutError
           └─ then: outbox flushed (results durable), task message deleted

User pickles may run code when loaded, so the supervisor never unpickles them: it moves
them as bytes to the runner (runner.py), which unpickles, calls and pickles. A task can
therefore do anything to its own process (crash it, stop it, hold its GIL) and the
supervisor still heartbeats, reports and replaces the runner.

Exit status: 0 after ``idle_timeout`` without work, when the session's queues are gone,
or when too old to take more work; 1 when the initializer (or the client's script) raised or
the worker's versions do not match the client's (each reported to the client first);
128 + N when stopped by signal N (the runner's process group is killed first).
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

import cloudpickle

from .. import protocol
from ..batching import LINGER_SECONDS, MessageDeleter
from ..config import SQS_MAX_VISIBILITY, SessionSettings
from ..errors import (
    ConfigurationError,
    InitializerCrashedError,
    TaskCrashedError,
    TaskTimeoutError,
    describe_exit,
)
from ..protocol import ResultEntry, TaskEntry, TaskMessage, WorkerEvent
from ..serialization import digest as content_digest
from ..serialization import dumps_exception
from ..transport import MessageQueue, PayloadStore, QueueGone, Received, TransportError
from .buffer_cache import BufferCache
from .capture import OutputCapture
from .heartbeat import Heartbeat
from .outbox import Outbox
from .process import Crashed, Finished, RunnerProcess, Skipped, TimedOut

log = logging.getLogger("batchexec.worker")

#: Receives that fail in a row (each already retried by botocore) before the worker gives up
#: and exits 1; its held work, if any, is redelivered.
MAX_RECEIVE_FAILURES = 5
#: A task is not started unless SQS's 12-hour ceiling (from the message's receipt) leaves it
#: max_task_seconds plus this margin (for sending its result and deleting the message).
HAND_BACK_MARGIN_SECONDS = 60
#: Content-addressed objects (large callables and buffers) kept after download, in bytes.
DOWNLOAD_CACHE_BYTES = 512 * 2**20
#: Tasks of one message in the runner at a time: the one running and the next ones, queued
#: in its channel so that it starts each as soon as the last is done instead of waiting for
#: the supervisor (a round trip costs more than a no-op task). It is topped up once half of
#: them are back, so tasks go out several to a write and wake the runner once. More buys
#: nothing once the runner never waits; each costs a payload held early (and frames are
#: only sent ahead while they fit the socket's buffer, see RunnerProcess.fits_ahead).
PIPELINE_DEPTH = 8


@dataclass
class _Pending:
    """One task of the message being worked on: its payload once fetched, its place in the
    runner's order once sent, and how often it crashed a runner in this delivery."""

    entry: TaskEntry
    payload: tuple | None = None
    seq: int = 0
    sent_at: float = 0.0
    crashes: int = 0


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def version_mismatch(settings: SessionSettings) -> str:
    """What to do when this worker cannot load the client's pickles; "" when it can."""
    problems, fixes = [], []
    here_py, here_cp = python_version(), cloudpickle.__version__
    if settings.client_python and settings.client_python != here_py:
        problems.append(f"Python {settings.client_python} on the client, {here_py} here")
        fixes.append(f"build the worker image with Python {settings.client_python} (docker "
                     f"build --build-arg PYTHON_VERSION={settings.client_python} ...)")
    if settings.client_cloudpickle and settings.client_cloudpickle != here_cp:
        problems.append(f"cloudpickle {settings.client_cloudpickle} on the client, "
                        f"{here_cp} here")
        fixes.append(f"install cloudpickle=={settings.client_cloudpickle} in the image (or "
                     f"cloudpickle=={here_cp} on the client)")
    if not problems:
        return ""
    return (f"the worker cannot run this client's tasks: {'; '.join(problems)}. Pickled "
            f"functions only load under the Python and cloudpickle versions that pickled "
            f"them: {'; and '.join(fixes)}, then push the image and run again")


class InitializerFailed(Exception):
    """The runner could not import the client's script or run the initializer;
    ``error`` is the pickled RemoteException to report."""

    def __init__(self, error: bytes):
        super().__init__("the initializer failed")
        self.error = error


class BuffersMissing(Exception):
    """A task names buffers its message lists as held, and this worker does not hold them."""

    def __init__(self, digests: list[str]):
        super().__init__(digests)
        self.digests = digests


class Supervisor:
    def __init__(self, settings: SessionSettings, worker_id: str, tasks: MessageQueue,
                 results: MessageQueue, dead_letters: MessageQueue,
                 store: PayloadStore):  # fmt: skip
        self.settings = settings
        self.worker_id = worker_id
        self.tasks = tasks
        self.results = results
        self.dead_letters = dead_letters
        self.store = store
        self.outbox = Outbox(results, settings.session, worker_id)
        self.capture = OutputCapture(settings.output_limit, self.outbox.add_output)
        self.heartbeat = Heartbeat(tasks, settings.visibility_timeout)
        # A finished message's delete waits for others to share its call (batching.py); far
        # below the visibility timeout, so it is never redelivered meanwhile.
        self.deleter = MessageDeleter(tasks, min(LINGER_SECONDS, settings.visibility_timeout / 10))
        self.runner: RunnerProcess | None = None
        self.started_at = time.monotonic()
        self.retiring = False
        self.tasks_run = 0
        self.runners_started = 0
        self._init_blobs: tuple[bytes, bytes] | None = None
        self._seq = 0  # numbers the tasks sent to runners (boundary marks name them)
        self._downloads = BufferCache(DOWNLOAD_CACHE_BYTES)  # content-addressed S3 objects
        self._held = BufferCache(settings.buffer_cache_bytes)  # what messages' "held" name

    # -- life cycle ------------------------------------------------------------------------

    def run(self) -> int:
        handling_signals = threading.current_thread() is threading.main_thread()
        if handling_signals:
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self.outbox.start()
        self.deleter.start()
        try:
            self._event(WorkerEvent.STARTED, info={
                "python": python_version(),
                "cloudpickle": cloudpickle.__version__,
                "protocol": protocol.PROTOCOL_VERSION,
            })
            mismatch = version_mismatch(self.settings)
            if mismatch:
                log.error("%s", mismatch)
                self._event(WorkerEvent.VERSION_MISMATCH, message=mismatch)
                return 1
            try:
                self._ensure_runner()
                self.heartbeat.start()
                self._serve()
            except InitializerFailed as failed:
                log.error("the initializer (or the client's script) failed: reporting it to "
                          "the client and exiting")
                self.outbox.flush(timeout=30)  # what it printed goes first
                self._event(WorkerEvent.INITIALIZER_FAILED, error=failed.error)
                return 1
        except QueueGone:
            log.info("session %s has ended (its queues are gone): exiting", self.settings.session)
        finally:
            self.heartbeat.stop()
            self._stop_runner()
            self.outbox.stop()
            self.deleter.stop()
            if handling_signals:
                signal.signal(signal.SIGTERM, previous)
        log.info("worker %s exiting after %d tasks (%d runner processes)", self.worker_id,
                 self.tasks_run, self.runners_started)
        return 0

    def _on_sigterm(self, signum, frame) -> None:
        """Batch (or the emulator) stops the job: the runner's group is not in the job's
        process group, so take it down first, then unwind."""
        runner = self.runner
        if runner is not None:
            runner.kill_group()
        raise SystemExit(128 + signum)

    def _event(self, event: str, **fields) -> None:
        body = WorkerEvent(self.settings.session, self.worker_id, event, **fields).encode()
        self.results.send([body], self.settings.session)

    def _serve(self) -> None:
        idle_since = time.monotonic()
        failures = 0
        while not self.retiring:
            if self._too_old_for_a_task():
                log.info("worker is %.0f s old: a new task might not finish before the job "
                         "timeout (%.0f s); exiting so that a fresh worker takes over",
                         time.monotonic() - self.started_at, self.settings.job_timeout)
                return
            remaining = self.settings.idle_timeout - (time.monotonic() - idle_since)
            if remaining <= 0:
                log.info("no task for %.0f s: exiting", self.settings.idle_timeout)
                return
            received_at = time.monotonic()
            try:
                received = self.tasks.receive(max_messages=1,
                                              wait=math.ceil(min(remaining, 20)))  # fmt: skip
                failures = 0
            except QueueGone:
                raise
            except TransportError as exc:
                failures += 1
                log.warning("receiving a task failed (%d/%d): %s", failures,
                            MAX_RECEIVE_FAILURES, exc)
                if failures >= MAX_RECEIVE_FAILURES:
                    raise
                time.sleep(1.0)
                continue
            for message in received:
                self._handle(message, received_at)
                idle_since = time.monotonic()

    def _too_old_for_a_task(self) -> bool:
        age = time.monotonic() - self.started_at
        return age + self.settings.max_task_seconds > self.settings.job_timeout

    # -- one message ------------------------------------------------------------------------

    def _handle(self, message: Received, received_at: float) -> None:
        if not message.authentic:
            # Not signed with this session's key: forged, tampered with, or another
            # session's. It is never decoded, let alone unpickled or run.
            log.error("task message %s failed authentication: moving it to the dead-letter "
                      "queue unread", message.message_id)
            self.dead_letters.send_each([message.body], self.settings.session,
                                        rejected="unauthenticated task message")
            self.tasks.delete([message.receipt])
            return
        try:
            msg = protocol.decode(message.body)
            if not isinstance(msg, TaskMessage):
                raise protocol.ProtocolError(f"expected a task message, got {type(msg).__name__}")
        except protocol.ProtocolVersionError as exc:
            text = (f"worker {self.worker_id} received a task message of batchexec protocol "
                    f"version {exc.version}, but it speaks version {exc.expected}; the message "
                    f"went to the dead-letter queue unexecuted. Install the same batchexec "
                    f"version on the client and in the worker image")
            log.error("%s", text)
            self._event(WorkerEvent.PROTOCOL_MISMATCH, message=text)
            self._dead_letter(message)
            return
        except protocol.ProtocolError as exc:
            log.error("unreadable task message %s (%s): moving it to the dead-letter queue",
                      message.message_id, exc)
            self._dead_letter(message)
            return

        attempts = msg.prior_attempts + message.receive_count
        if len(msg.tasks) > 1 and message.receive_count > 1:
            # The supervisor died while running this pack (a runner crash never causes a
            # redelivery). Which task was to blame is unknown: give each task its own
            # message, charged the pack's failed runs but never so many that it loses its
            # own solo attempt.
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

        self._held.keep(msg.bufs)
        charged = attempts - 1  # attempts of these tasks that ended before this delivery
        self.heartbeat.hold(message.receipt, received_at)
        try:
            self._run_pack(msg, charged, received_at)
            self.outbox.flush()  # every result durable before the message goes
        finally:
            self.heartbeat.hold(None)
        self.deleter.delete_later(message.receipt)

    def _must_hand_back(self, received_at: float) -> bool:
        """Could the next task outlive the message's 12-hour ceiling or the worker's job?
        (Then a worker too old for any task retires.)"""
        if time.monotonic() <= self._start_deadline(received_at):
            return False
        if self._too_old_for_a_task():
            self.retiring = True
        return True

    def _hand_back(self, msg: TaskMessage, tasks: list[_Pending], charged: int) -> None:
        """Put tasks not started back on the queue as new messages (before the original is
        deleted: at least once), not charged for this delivery; a task that crashed its
        runner in this delivery keeps those attempts (one message per count)."""
        log.info("handing %d task(s) back to the queue for another worker", len(tasks))
        for crashes in sorted({t.crashes for t in tasks}):
            entries = [t.entry for t in tasks if t.crashes == crashes]
            body = msg.subset(entries, charged + crashes).encode()
            self.tasks.send([body], self.settings.session)

    def _dead_letter(self, message: Received) -> None:
        self.dead_letters.send([message.body], self.settings.session)
        self.tasks.delete([message.receipt])

    # -- the tasks of one message ------------------------------------------------------------

    def _run_pack(self, msg: TaskMessage, charged: int, received_at: float) -> None:
        """Run a message's tasks, up to PIPELINE_DEPTH of them in the runner at a time (one
        running, the next ones queued in its channel), each result to the outbox as it
        comes back. The runner serves them in order, so when it dies the oldest unanswered
        task is the one that was running: only that one is charged; the ones queued behind
        it never started and are sent again, uncharged, to the new runner."""
        waiting: deque[_Pending] = deque(_Pending(e) for e in msg.tasks)
        sent: deque[_Pending] = deque()  # in the runner, in order
        skipped: list[_Pending] = []
        not_after = self._start_deadline(received_at)
        last_reply_at = 0.0
        while sent or (waiting and not skipped):
            refill = len(sent) <= PIPELINE_DEPTH // 2  # top up in batches: one write, one wake
            while refill and waiting and not skipped and len(sent) < PIPELINE_DEPTH:
                task = waiting[0]
                if not sent and self._must_hand_back(received_at):
                    skipped.extend(waiting)
                    waiting.clear()
                    break
                if task.payload is None:
                    try:
                        task.payload = self._payload(msg, task.entry)
                    except BuffersMissing as exc:
                        waiting.popleft()
                        log.info("task %s names %d buffer(s) this worker does not hold: "
                                 "asking the client to send it again with them",
                                 task.entry.task_id, len(exc.digests))
                        self.outbox.add_result(ResultEntry(task.entry.task_id, False,
                                                           missing=exc.digests))
                        continue
                    except (TransportError, protocol.ProtocolError) as exc:
                        waiting.popleft()
                        self.outbox.add_result(self._result(task.entry.task_id, False,
                                                            dumps_exception(exc), 0.0))
                        continue
                runner = self._ensure_runner()
                digest, fn_bytes, args_bytes, blobs, buffers = task.payload
                size = (len(fn_bytes) + len(args_bytes) + sum(map(len, blobs.values()))
                        + sum(map(len, buffers)))
                if not runner.fits_ahead(size):
                    break
                waiting.popleft()
                self._seq += 1
                task.seq, task.sent_at = self._seq, time.monotonic()
                self.capture.expect(task.seq, task.entry.task_id)
                runner.send_task(task.seq, task.entry.task_id, digest, fn_bytes, args_bytes,
                                 blobs, not_after, buffers)  # fmt: skip
                sent.append(task)
            if not sent:
                continue
            runner = self.runner
            assert runner is not None
            # The oldest task started when it was sent or when the one before it came back.
            started = max(sent[0].sent_at, last_reply_at)
            timeout = started + self.settings.max_task_seconds - time.monotonic()
            replies, ended = runner.wait(timeout)
            for reply in replies:
                if reply.seq != sent[0].seq:  # the channel is garbled: the runner is not trusted
                    ended = runner.discard()
                    break
                task = sent.popleft()
                self.capture.finish(task.seq)
                last_reply_at = time.monotonic()
                if isinstance(reply, Skipped):
                    skipped.append(task)
                    continue
                self.tasks_run += 1
                self.outbox.add_result(self._result(task.entry.task_id, reply.ok, reply.data,
                                                    reply.seconds))  # fmt: skip
            if ended is not None:
                self._runner_lost(sent, waiting, ended, charged)
                sent.clear()
        if skipped:
            self._must_hand_back(received_at)  # sets retiring when the worker is too old
            self._hand_back(msg, skipped + list(waiting), charged)

    def _runner_lost(self, sent: deque[_Pending], waiting: deque[_Pending],
                     ended: Crashed | TimedOut, charged: int) -> None:  # fmt: skip
        """The runner died or ran past max_task_seconds with ``sent`` unanswered: the first
        of them was running. Charge it (a crash: retried until max_attempts) or fail it (a
        timeout); the others go back to the front of ``waiting`` as they were."""
        self._stop_runner()
        if not sent:  # died between tasks, nothing of ours running
            return
        head, queued = sent[0], list(sent)[1:]
        tail = self.capture.finish(head.seq)
        for task in queued:
            self.capture.finish(task.seq)
        waiting.extendleft(reversed(queued))
        self.tasks_run += 1
        seconds = time.monotonic() - head.sent_at
        task_id = head.entry.task_id
        if isinstance(ended, TimedOut):
            log.error("task %s ran past max_task_seconds=%g: stopped it", task_id,
                      self.settings.max_task_seconds)
            error: Exception = TaskTimeoutError(task_id, self.settings.max_task_seconds, tail)
            self.outbox.add_result(self._result(task_id, False, dumps_exception(error),
                                                seconds))  # fmt: skip
            return
        head.crashes += 1
        attempts = charged + head.crashes
        log.warning("task %s crashed its runner (%s), attempt %d of %d", task_id,
                    describe_exit(ended.status), attempts, self.settings.max_attempts)
        if attempts >= self.settings.max_attempts:
            error = TaskCrashedError(task_id, attempts, ended.status, tail)
            self.outbox.add_result(self._result(task_id, False, dumps_exception(error),
                                                seconds))  # fmt: skip
        else:
            waiting.appendleft(head)

    def _start_deadline(self, received_at: float) -> float:
        """The time.monotonic() after which no task of this message may start: it could
        outlive the message's 12-hour ceiling or the worker's job. The supervisor checks it
        before sending to an idle runner (_must_hand_back), the runner before starting a
        task that waited in its channel (it skips one picked up later)."""
        mts = self.settings.max_task_seconds
        return min(received_at + SQS_MAX_VISIBILITY - mts - HAND_BACK_MARGIN_SECONDS,
                   self.started_at + self.settings.job_timeout - mts)

    def _payload(self, msg: TaskMessage, entry: TaskEntry):
        """The task's pickled callable, arguments and large buffers, and the raw
        out-of-band buffers of its arguments, as bytes (never unpickled here): from the
        message, or from S3 (content-addressed objects are checked against their digest and
        kept in a small cache, so a map's large callable is downloaded once per worker)."""
        fn_bytes = self._carried(msg, msg.fns, entry, "callable", entry.fn)
        if entry.ref is not None:
            args_bytes = self.store.get(entry.ref)
            if content_digest(args_bytes) != entry.sha:
                raise protocol.ProtocolError(
                    f"s3 object {entry.ref} does not match the digest in its (authenticated) "
                    f"task message: it was changed after the client uploaded it; the task is "
                    f"not run")
        else:
            args_bytes = entry.args or b""
        blobs = {key: self._carried(msg, {}, entry, "buffer", key) for key in entry.blobs}
        buffers = []
        missing = []
        for key in entry.buffers:
            if key in msg.bufs or key in msg.refs or key not in msg.held:
                buffers.append(self._carried(msg, msg.bufs, entry, "buffer", key))
            elif (data := self._held.get(key)) is not None:
                buffers.append(data)
            elif key not in missing:
                missing.append(key)
        if missing:
            raise BuffersMissing(missing)
        return entry.fn, fn_bytes, args_bytes, blobs, buffers

    def _carried(self, msg: TaskMessage, inline: dict[str, bytes], entry: TaskEntry, what: str,
                 digest: str) -> bytes:  # fmt: skip
        """What a task names by digest: inline in its message, or the S3 object at the
        message's ref for it (checked, cached)."""
        if digest in inline:
            return inline[digest]
        if digest in msg.refs:
            return self._shared(digest, msg.refs[digest])
        raise protocol.ProtocolError(f"task {entry.task_id} names {what} {digest!r}, which "
                                     f"its message does not carry")

    def _shared(self, digest: str, key: str) -> bytes:
        data = self._downloads.get(digest)
        if data is None:
            data = self.store.get(key)
            if content_digest(data) != digest:
                raise protocol.ProtocolError(
                    f"s3 object {key} does not match its digest {digest}: it was changed "
                    f"after the client uploaded it; the task is not run"
                )
            self._downloads.keep({digest: data})
        return data

    def _result(self, task_id: str, ok: bool, data: bytes, seconds: float) -> ResultEntry:
        if len(data) > self.settings.inline_limit:
            try:
                key = self.store.put(f"results/{task_id}-{uuid.uuid4().hex[:8]}", data)
            except TransportError as exc:
                return ResultEntry(task_id, False, seconds, data=dumps_exception(exc))
            return ResultEntry(task_id, ok, seconds, ref=key, sha=content_digest(data))
        return ResultEntry(task_id, ok, seconds, data=data)

    # -- the runner -------------------------------------------------------------------------

    def _ensure_runner(self) -> RunnerProcess:
        """The live runner, or a fresh one with the script imported and the initializer run
        (InitializerFailed if either fails or crashes)."""
        if self.runner is not None:
            return self.runner
        source, initializer = self._init_payloads()
        self.capture.new_gap()
        runner = RunnerProcess.start(self.capture)
        self.runner = runner
        self.runners_started += 1
        outcome = runner.init(self.settings.main_path, source, initializer,
                              self.settings.max_task_seconds)  # fmt: skip
        tail = self.capture.gap_tail()
        if isinstance(outcome, Finished) and outcome.ok:
            return runner
        self._stop_runner()
        if isinstance(outcome, Finished):
            raise InitializerFailed(outcome.data)
        if isinstance(outcome, TimedOut):
            error: Exception = TimeoutError(
                f"importing the client's script and running the initializer took more than "
                f"max_task_seconds={self.settings.max_task_seconds:g} s; it was stopped")
        else:
            error = InitializerCrashedError(outcome.status, tail)
        raise InitializerFailed(dumps_exception(error))

    def _init_payloads(self) -> tuple[bytes, bytes]:
        """The client's script source and the pickled initializer, fetched once."""
        if self._init_blobs is None:
            try:
                source = self._main_source()
                key = self.settings.initializer_key
                initializer = self.store.get(key) if key else b""
                if key and content_digest(initializer) != self.settings.initializer_digest:
                    raise ConfigurationError(
                        f"the initializer at s3 key {key} does not match the digest the client "
                        f"gave this worker: it was changed after upload, so it is not run")
            except (TransportError, ConfigurationError) as exc:
                raise InitializerFailed(dumps_exception(exc)) from exc
            self._init_blobs = (source, initializer)
        return self._init_blobs

    def _main_source(self) -> bytes:
        """The client's script: this machine's copy when it is the same file, else the one
        the client shipped."""
        path, digest = self.settings.main_path, self.settings.main_digest
        if not path:
            return b""
        try:
            with open(path, "rb") as f:
                local = f.read()
            if not digest or protocol.script_digest(local) == digest:
                return local
        except OSError:
            pass
        if self.settings.main_key:
            shipped = self.store.get(self.settings.main_key)
            if protocol.script_digest(shipped) != digest:
                raise ConfigurationError(
                    f"the copy of {path} at s3 key {self.settings.main_key} does not match the "
                    f"client's digest: it was changed after upload, so it is not imported")
            return shipped
        raise ConfigurationError(
            f"the client's script {path} is not on this worker (or differs from the client's) "
            f"and the client shipped no copy of it: its functions cannot be loaded here"
        )

    def _stop_runner(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.stop()
