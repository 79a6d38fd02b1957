"""BatchExecutor: a concurrent.futures.Executor whose workers are AWS Batch jobs.

A thin facade over the parts that do the work (compare mpi4py's futures pool):

    submit(fn, *args) ── pickle (caller's thread) ──▶ TaskTable ◀── TaskDispatcher ──▶ task queue
         │                                              ▲  ▲                          (SQS, S3)
         ▼                                              │  └── DeadLetterWatcher ◀── dead letters
      Future ◀── set_result / set_exception ── ResultCollector ◀── result queue ◀── workers
                 (task output replayed on the            ▲                          (Batch jobs,
                  client's stdout/stderr)                 │                          launched on
      WorkerMonitor ── BatchLauncher: SubmitJob / DescribeJobs / TerminateJob ──▶   first submit)

Where it runs is decided once, here: an explicit stack or endpoint (argument, then
BATCHEXEC_STACK / AWS_ENDPOINT_URL) is used as given; with neither, a private embedded emulator
is started, the project's own CloudFormation template is deployed into it, and everything runs
through it exactly as it would on AWS. No other code knows the difference.

Life cycle guarantees (every accepted task ends in exactly one terminal state):
- acceptance is atomic with shutdown and with breaking (TaskTable.reserve): shutdown(wait=True)
  waits for a task whose arguments are still being pickled, and breaking fails it;
- shutdown(wait=True) joins every thread the executor started; called from one of them (a
  done-callback) it raises RuntimeError instead of deadlocking;
- Ctrl-C (KeyboardInterrupt) inside ``with`` or map(), or an uncaught one at the top level,
  aborts: pending tasks are cancelled, running ones fail with ExecutorAbortedError, workers
  are terminated and the queues removed, without waiting for running tasks;
- a forked child cannot use its parent's executor (RuntimeError) and its exit never touches
  the parent's session.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from functools import partial

from . import lifecycle
from .aws import AwsClients, resolve_endpoint
from .collector import DeadLetterWatcher, ResultCollector
from .config import ExecutorOptions
from .dispatcher import TaskDispatcher
from .errors import (
    ExecutorAbortedError,
    PayloadTooLargeError,
    SerializationError,
    WorkersUnavailableError,
)
from .held import HeldBuffers
from .launcher import BatchLauncher, WorkerMonitor
from .mapping import chunks, map_results, run_chunk
from .serialization import describe, dumps_apart, dumps_callable, main_script_path
from .session import Session, SessionHeartbeat
from .tasks import NotAccepted, TaskTable, WorkItem
from .threads import TaskFuture, settle
from .worker.mainmodule import check_not_importing_main

log = logging.getLogger("batchexec")

#: The stack name used when an endpoint is given without one (and by the embedded emulator).
DEFAULT_STACK = "batchexec"
#: After Ctrl-C, how long the abort may wait for the worker jobs to be terminated and the
#: queues removed before giving up on a clean teardown (the process must exit within 10 s).
ABORT_SECONDS = 8.0

class BatchExecutor(Executor):
    """An Executor that runs calls on AWS Batch workers (or on the embedded emulator).

    Parameters, as ProcessPoolExecutor's where they share a name:

    max_workers: number of worker jobs (the array size). None: the stack's DefaultWorkers
        output; the embedded emulator deploys it as os.cpu_count().
    stack: CloudFormation stack name (env BATCHEXEC_STACK; "batchexec" when only an endpoint
        is given). A stack that does not exist is a StackNotFoundError saying how to deploy it.
    region: AWS region (env AWS_REGION / AWS_DEFAULT_REGION).
    endpoint_url: an AWS-compatible endpoint such as `batchexec local` (env AWS_ENDPOINT_URL).
        Workers are given the same endpoint.
    initializer, initargs: called once in each worker process before its first task, in the
        same module namespace as the tasks (a script's globals set by the initializer are seen
        by its tasks). If it raises, the failure is logged at CRITICAL with the remote
        traceback and the executor is broken (WorkersUnavailableError, cause the remote error).

    Further keyword options (defaults and allowed ranges in batchexec.config):

    visibility_timeout: seconds before a dead worker's task is retried elsewhere (a running
        task's message is kept invisible by the worker's heartbeat, so this does not limit
        task time).
    max_attempts: runs of a task whose worker process dies before its future fails.
    max_task_seconds: longest a task may run (at most 11.5 h: SQS hides a received message
        at most 12 h, so a longer task would be delivered twice); longer ones fail.
    worker_idle_timeout: seconds a worker waits for work before exiting.
    inline_limit: pickled tasks and results up to this many bytes travel in the message;
        larger ones through the stack's S3 bucket.
    max_payload_size: pickled tasks above this fail with PayloadTooLargeError.
    messages_per_worker: task messages in flight per worker (flow control).
    monitor_interval: seconds between checks of the workers' Batch jobs.
    start_timeout: seconds work may wait with no worker running before the executor breaks.
    forward_output: replay what tasks print on this process's stdout/stderr, each line
        prefixed with its worker (default True); output_limit: bytes forwarded per task.
    tasks_per_worker_hint: clients that size their concurrency from ``_max_workers`` (dask)
        see max_workers times this, enough tasks in flight to hide the round trip.
    buffer_cache_bytes: bytes of argument arrays each worker keeps from the messages it
        received (default 128 MiB, 0: off), so that an array passed again to later tasks
        (dask gives one chunk to several tasks) is named instead of sent again.

    Attributes: ``stack`` (the discovered batchexec.stack.StackResources: bucket, queues, job
    queue...), ``session_id``, ``max_workers``, ``endpoint_url`` (None on AWS itself).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        stack: str | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        initializer: Callable | None = None,
        initargs: tuple = (),
        **options,
    ):
        check_not_importing_main()
        if max_workers is not None:
            if isinstance(max_workers, bool) or not isinstance(max_workers, int):
                raise TypeError(
                    f"max_workers must be an int (the number of worker jobs) or None, "
                    f"got {max_workers!r}"
                )
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        unknown = set(options) - set(ExecutorOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        self._options = ExecutorOptions(**options)
        self._pid = os.getpid()
        self._emulator = None
        self._session: Session | None = None
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._aborted = False
        self._closer: threading.Thread | None = None
        self._ids = itertools.count()
        self._threads: list = []

        stack_name = stack or os.environ.get("BATCHEXEC_STACK") or None
        endpoint = resolve_endpoint(endpoint_url)
        try:
            if stack_name is None and endpoint is None:
                from .emulator.embedded import EmbeddedEmulator

                self._emulator = EmbeddedEmulator.start(stack_name=DEFAULT_STACK)
                endpoint, stack_name = self._emulator.endpoint_url, self._emulator.stack_name
                self._clients = AwsClients.for_emulator(region, endpoint)
            else:
                self._clients = AwsClients.resolve(region, endpoint)
            self._clients.check_reachable()
            from .stack import describe_stack

            self.stack = describe_stack(self._clients, stack_name or DEFAULT_STACK)
            self._session = Session.create(
                self._clients, self.stack, self._options, initializer, initargs
            )
        except BaseException:
            self._release()
            raise

        self._session_id = self._session.id
        if main_script_path():
            # Classes of the script come back from workers as "__mp_main__.X" (the name the
            # runner imports the script under): resolve them to this process's script.
            sys.modules.setdefault("__mp_main__", sys.modules["__main__"])
        self._workers = max_workers or self.stack.default_workers
        # What clients that size their own concurrency read (dask: `_max_workers`).
        self._max_workers = self._workers * self._options.tasks_per_worker_hint
        self._table = TaskTable(credits=self._options.messages_per_worker * self._workers)
        session = self._session
        self._launcher = BatchLauncher(
            self._clients.client("batch"),
            self.stack.job_queue,
            self.stack.job_definition,
            job_name=f"batchexec-{session.id}",
            environment={**session.settings.to_env(), **self._clients.worker_environment()},
        )
        self._watcher = DeadLetterWatcher(self._table, session.dead_letters, session.id,
                                          self._options.max_attempts, session.is_alive,
                                          self._set_broken)
        self._monitor = WorkerMonitor(
            self._launcher,
            self._workers,
            outstanding=self._table.outstanding,
            progress=lambda: self._table.resolved,
            on_broken=self._set_broken,
            interval=self._options.monitor_interval,
            start_timeout=self._options.start_timeout,
            failure_budget=self._workers * self._options.max_attempts + 1,
        )
        held = HeldBuffers(self._options.buffer_cache_bytes)
        collector = ResultCollector(self._table, session.results, session.store, session.id,
                                    self._set_broken, dead_letters=session.dead_letters,
                                    held=held)
        self._janitor = collector.janitor
        self._heartbeat = SessionHeartbeat(session, self._set_broken)
        self._threads = [
            TaskDispatcher(self._table, session.tasks, session.store, session.id,
                           self._options.inline_limit, self._set_broken, held),
            collector,
            self._janitor,
            self._watcher,
            self._monitor,
            self._heartbeat,
        ]
        for thread in self._threads:
            thread.start()
        lifecycle.register(self)
        # Registered after the emulator started: atexit runs hooks last-in first-out, so this
        # shuts the executor down while its emulator (closed by its own finalizer) still runs.
        atexit.register(self._shutdown_at_exit)

    # -- introspection -----------------------------------------------------------------------

    @property
    def max_workers(self) -> int:
        """The number of worker jobs."""
        return self._workers

    @property
    def endpoint_url(self) -> str | None:
        return self._clients.endpoint_url

    @property
    def session_id(self) -> str:
        """This executor's session: its queues and S3 prefix are named after it."""
        return self._session_id

    @property
    def _broken(self) -> BaseException | None:
        """Why the executor broke (the task table's record), as the standard executors'
        ``_broken`` attribute; None while it works."""
        table = getattr(self, "_table", None)
        return table.broken if table is not None else None

    def __repr__(self) -> str:
        where = self._clients.endpoint_url or f"AWS {self._clients.region}"
        state = "broken" if self._broken else "shut down" if self._shutdown else "running"
        return (f"<BatchExecutor stack={self.stack.name!r} at {where}, "
                f"{self._workers} workers, {state}>")

    # -- Executor API ------------------------------------------------------------------------

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        return self._submit(fn, None, args, kwargs)

    def _submit(self, fn, prepared: tuple | None, args: tuple, kwargs: dict) -> Future:
        self._check_owner()
        future = TaskFuture()
        try:
            self._table.reserve(future)
        except NotAccepted as refused:
            if str(refused) == "broken":
                raise WorkersUnavailableError(
                    f"the executor is broken and accepts no new tasks: {self._table.broken}"
                ) from self._table.broken
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        task_id = str(next(self._ids))
        label = describe(fn)
        try:
            if prepared is None:
                prepared = _pickle_callable(fn, label)
            fn_bytes, fn_digest, fn_blobs = prepared
            blobs = dict(fn_blobs)
            args_bytes, buffers, buffer_order = dumps_apart(
                (args, kwargs), f"arguments of {label} (task {task_id})", blobs=blobs)
        except SerializationError as exc:
            self._table.abandon(future)
            settle(future, error=exc)
            return future
        except BaseException:
            self._table.abandon(future)
            raise
        size = len(fn_bytes) + len(args_bytes) + sum(len(b) for b in blobs.values()) + sum(
            map(len, buffers.values()))
        if size > self._options.max_payload_size:
            self._table.abandon(future)
            settle(future, error=PayloadTooLargeError(
                f"task {task_id} ({label}) pickles to {size / 2**20:.1f} MiB, above "
                f"max_payload_size={self._options.max_payload_size / 2**20:.1f} MiB: put large "
                f"data in S3 (or a shared filesystem) and pass its location, or raise "
                f"max_payload_size"
            ))
            return future
        item = WorkItem(task_id, future, label, fn_bytes, fn_digest, args_bytes, blobs, buffers,
                        buffer_order)
        del args, kwargs, args_bytes, blobs, buffers
        if self._table.add(item):
            self._monitor.poke()
        return future

    def map(self, fn, *iterables: Iterable, timeout: float | None = None, chunksize: int = 1,
            buffersize: int | None = None) -> Iterator:
        """As Executor.map (with Python 3.14's buffersize): results in order, lazily.

        The callable is pickled once for the whole map. chunksize > 1 sends that many calls
        as one task (as ProcessPoolExecutor does). buffersize bounds how many tasks are
        submitted ahead of the results consumed, so a map over a huge or endless iterable
        runs in bounded memory. Nothing already yielded is kept. A KeyboardInterrupt while
        waiting aborts the executor (see the module docstring).
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and (isinstance(buffersize, bool)
                                       or not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError("buffersize must be None or > 0.")
        end_time = None if timeout is None else timeout + time.monotonic()
        label = describe(fn)
        if chunksize > 1:
            call = partial(run_chunk, fn)
            argsets = ((list(c),) for c in chunks(zip(*iterables, strict=False), chunksize))
        else:
            call = fn
            argsets = zip(*iterables, strict=False)
        try:
            prepared = _pickle_callable(call, label)
        except SerializationError:
            prepared = None  # every future then carries the error, as submit's would
        submit = partial(self._submit, call, prepared, kwargs={})

        if buffersize is None:
            futures = deque(submit(args) for args in argsets)
            more = None
        else:
            futures = deque(submit(args) for args in itertools.islice(argsets, buffersize))
            more = argsets
        interrupted = partial(self._abort, "KeyboardInterrupt while waiting for map() results")
        return map_results(futures, more, submit, end_time, chunked=chunksize > 1,
                           on_interrupt=interrupted)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if os.getpid() != self._pid:
            return  # a forked child: the session belongs to the parent
        if wait and threading.current_thread() in self._threads:
            raise RuntimeError(
                "cannot join current thread: shutdown(wait=True) was called from a "
                "done-callback, which runs in the executor's own thread; call "
                "shutdown(wait=False) there, or shutdown(wait=True) from another thread"
            )
        with self._shutdown_lock:
            self._shutdown = True
            if self._closer is None:
                self._closer = threading.Thread(
                    target=self._close_when_done, name="batchexec-shutdown", daemon=True
                )
                start = True
            else:
                start = False
        if self._session is None and not self._threads:
            return  # construction failed; _release already ran
        self._table.close()
        if cancel_futures:
            # Tasks the free credits would send now count as queued for execution (as in
            # ProcessPoolExecutor's call queue): they run; the rest are cancelled.
            for item in self._table.drain_pending(keep=self._table.sendable()):
                item.future.cancel()
        if start:
            self._closer.start()
        if wait:
            self._closer.join()

    def __exit__(self, exc_type, exc_val, exc_tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._abort("KeyboardInterrupt inside `with BatchExecutor()`")
            return False
        self.shutdown(wait=True)
        return False

    # -- internals ---------------------------------------------------------------------------

    def _check_owner(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"this BatchExecutor belongs to process {self._pid}; a forked child cannot use "
                f"it (its threads did not survive the fork): create a new BatchExecutor in the "
                f"child, or start children with the 'spawn' method"
            )

    def _set_broken(self, error: BaseException) -> None:
        """Fail every outstanding future with error; later submits raise it too."""
        futures = self._table.break_(error)
        if futures is None:
            return
        if not self._aborted:
            log.error("executor broken: %s", error)
        self._monitor.poke()
        for future in futures:
            settle(future, error=error)

    def _abort(self, why: str) -> None:
        """Stop now (Ctrl-C): cancel what has not started, fail what runs, terminate the
        workers and remove the session, without waiting for running tasks."""
        if self._aborted or os.getpid() != self._pid:
            return
        self._aborted = True
        log.warning("%s: cancelling pending tasks, terminating workers and removing the "
                    "session's queues", why)
        with self._shutdown_lock:
            self._shutdown = True
        self._table.close()
        for item in self._table.drain_pending():
            item.future.cancel()
        self._set_broken(ExecutorAbortedError(
            f"the executor was aborted ({why}) while this task was queued or running; its "
            f"worker was terminated"
        ))
        # Queues and workers first (a second Ctrl-C may cut this short); the threads, stuck
        # in a long poll at worst, end on their own once they see the broken table.
        self._release()
        self._stop_threads(timeout=0.2)

    def _close_when_done(self) -> None:
        self._table.wait_done()
        self._stop_threads(timeout=None if self._broken is None else 1.0)
        self._release()

    def _stop_threads(self, timeout: float | None) -> None:
        self._table.close()
        self._monitor.stop()
        self._watcher.stop()
        self._heartbeat.stop()
        collector = self._threads[1]
        if collector is not threading.current_thread():
            collector.join(timeout)  # its last deletes reach the janitor before it stops
        self._janitor.stop()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
                if thread.is_alive():
                    log.debug("%s still finishing a poll; it exits on its own", thread.name)

    def _release(self) -> None:
        """Delete session resources, terminate workers, stop the emulator: idempotent."""
        if os.getpid() != self._pid:
            return
        if self._session is not None:  # first: workers exit by themselves once it is gone
            self._session.close()
            self._session = None
        launcher = getattr(self, "_launcher", None)
        if launcher is not None:
            launcher.terminate()
        if self._emulator is not None:
            self._emulator.close()
            self._emulator = None
        atexit.unregister(self._shutdown_at_exit)

    def _shutdown_at_exit(self) -> None:
        """A program that forgot shutdown() still waits for its tasks and leaks nothing; one
        ended by an uncaught Ctrl-C aborts instead of waiting."""
        if os.getpid() != self._pid:
            return
        try:
            if lifecycle.interrupted():
                self._abort("uncaught KeyboardInterrupt")
            else:
                self.shutdown(wait=True, cancel_futures=True)
        except Exception as exc:  # never mask the program's own exit status
            log.warning("shutting down %r at exit failed: %s", self, exc)


def _pickle_callable(fn, label: str) -> tuple[bytes, str, dict[str, bytes]]:
    return dumps_callable(fn, f"callable {label}")
