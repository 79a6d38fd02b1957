"""BatchExecutor: a concurrent.futures.Executor whose workers are AWS Batch jobs.

A thin facade over the parts that do the work (compare mpi4py's futures pool):

    submit(fn, *args) ── pickle (caller's thread) ──▶ TaskTable ◀── TaskDispatcher ──▶ task queue
         │                                              ▲  ▲                          (SQS, S3)
         ▼                                              │  └── DeadLetterWatcher ◀── dead letters
      Future ◀── set_result / set_exception ── ResultCollector ◀── result queue ◀── workers
                                                                                   (Batch jobs,
      WorkerMonitor ── BatchLauncher: SubmitJob / DescribeJobs / TerminateJob ──▶   launched on
                                                                                   first submit)

Where it runs is decided once, here: an explicit stack or endpoint (argument, then
BATCHEXEC_STACK / AWS_ENDPOINT_URL) is used as given; with neither, a private embedded emulator
is started, the project's own CloudFormation template is deployed into it, and everything runs
through it exactly as it would on AWS. No other code knows the difference.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, InvalidStateError
from concurrent.futures import TimeoutError as FuturesTimeoutError
from functools import partial

from .aws import AwsClients, resolve_endpoint
from .collector import DeadLetterWatcher, ResultCollector
from .config import ExecutorOptions
from .dispatcher import TaskDispatcher
from .errors import PayloadTooLargeError, SerializationError, WorkersUnavailableError
from .launcher import BatchLauncher, WorkerMonitor
from .serialization import describe, digest, dumps
from .session import Session
from .tasks import TaskTable, WorkItem
from .worker.mainmodule import check_not_importing_main

log = logging.getLogger("batchexec")

#: The stack name used when an endpoint is given without one (and by the embedded emulator).
DEFAULT_STACK = "batchexec"


def _run_chunk(fn, chunk):
    """Worker side of map(chunksize=n): one task runs fn over a list of argument tuples."""
    return [fn(*args) for args in chunk]


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
    initializer, initargs: called once in each worker before its first task. If it raises,
        the executor is broken (WorkersUnavailableError) and the cause is the remote error.

    Further keyword options (defaults in batchexec.config):

    visibility_timeout: seconds before a dead worker's task is retried elsewhere (a running
        task's message is kept invisible by a heartbeat, so this does not limit task time).
    max_attempts: runs of a task whose worker dies before its future fails with
        TaskDeadLetteredError and its message goes to the stack's dead-letter queue.
    worker_idle_timeout: seconds a worker waits for work before exiting.
    inline_limit: pickled tasks and results up to this many bytes travel in the message;
        larger ones through the stack's S3 bucket.
    max_payload_size: pickled tasks above this fail with PayloadTooLargeError.
    messages_per_worker: task messages in flight per worker (flow control).
    monitor_interval: seconds between checks of the workers' Batch jobs.
    start_timeout: seconds launched workers may take to start before the executor is broken.

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
        if max_workers is not None and (not isinstance(max_workers, int) or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        unknown = set(options) - set(ExecutorOptions.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        self._options = ExecutorOptions(**options)
        self._emulator = None
        self._session: Session | None = None
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._broken: BaseException | None = None
        self._closer: threading.Thread | None = None
        self._ids = itertools.count()

        stack_name = stack or os.environ.get("BATCHEXEC_STACK") or None
        endpoint = resolve_endpoint(endpoint_url)
        try:
            if stack_name is None and endpoint is None:
                from .emulator.embedded import EmbeddedEmulator

                self._emulator = EmbeddedEmulator.start(stack_name=DEFAULT_STACK)
                endpoint, stack_name = self._emulator.endpoint_url, self._emulator.stack_name
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
        self._max_workers = max_workers or self.stack.default_workers
        self._table = TaskTable(credits=self._options.messages_per_worker * self._max_workers)
        session = self._session
        self._launcher = BatchLauncher(
            self._clients.client("batch"),
            self.stack.job_queue,
            self.stack.job_definition,
            job_name=f"batchexec-{session.id}",
            environment={**session.settings.to_env(), **self._clients.worker_environment()},
        )
        self._threads = [
            TaskDispatcher(self._table, session.tasks, session.store, session.id,
                           self._options.inline_limit, self._set_broken),
            ResultCollector(self._table, session.results, session.store, session.id,
                            self._set_broken),
            DeadLetterWatcher(self._table, session.dead_letters, session.id,
                              self._options.max_attempts, session.is_alive, self._set_broken),
        ]
        self._monitor = WorkerMonitor(
            self._launcher,
            self._max_workers,
            outstanding=self._table.outstanding,
            progress=lambda: self._table.resolved,
            on_broken=self._set_broken,
            interval=self._options.monitor_interval,
            start_timeout=self._options.start_timeout,
            failure_budget=self._max_workers * self._options.max_attempts + 1,
        )
        for thread in (*self._threads, self._monitor):
            thread.start()
        # Registered after the emulator started: atexit runs hooks last-in first-out, so this
        # shuts the executor down while its emulator (closed by its own finalizer) still runs.
        atexit.register(self._shutdown_at_exit)

    # -- introspection -----------------------------------------------------------------------

    @property
    def max_workers(self) -> int:
        return self._max_workers

    @property
    def endpoint_url(self) -> str | None:
        return self._clients.endpoint_url

    @property
    def session_id(self) -> str:
        """This executor's session: its queues and S3 prefix are named after it."""
        return self._session_id

    def __repr__(self) -> str:
        where = self._clients.endpoint_url or f"AWS {self._clients.region}"
        state = "broken" if self._broken else "shut down" if self._shutdown else "running"
        return (f"<BatchExecutor stack={self.stack.name!r} at {where}, "
                f"{self._max_workers} workers, {state}>")

    # -- Executor API ------------------------------------------------------------------------

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        return self._submit(fn, None, args, kwargs)

    def _submit(self, fn, fn_bytes: bytes | None, args: tuple, kwargs: dict) -> Future:
        with self._shutdown_lock:
            if self._broken is not None:
                raise WorkersUnavailableError(
                    f"the executor is broken and accepts no new tasks: {self._broken}"
                ) from self._broken
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            task_id = str(next(self._ids))
        future: Future = Future()
        label = describe(fn)
        try:
            if fn_bytes is None:
                fn_bytes = dumps(fn, f"callable {label}")
            args_bytes = dumps((args, kwargs), f"arguments of {label} (task {task_id})")
        except SerializationError as exc:
            future.set_exception(exc)
            return future
        size = len(fn_bytes) + len(args_bytes)
        if size > self._options.max_payload_size:
            future.set_exception(PayloadTooLargeError(
                f"task {task_id} ({label}) pickles to {size / 2**20:.1f} MiB, above "
                f"max_payload_size={self._options.max_payload_size / 2**20:.1f} MiB: put large "
                f"data in S3 (or a shared filesystem) and pass its location, or raise "
                f"max_payload_size"
            ))
            return future
        self._table.add(WorkItem(task_id, future, label, fn_bytes, digest(fn_bytes), args_bytes))
        self._monitor.poke()
        return future

    def map(self, fn, *iterables: Iterable, timeout: float | None = None, chunksize: int = 1,
            buffersize: int | None = None) -> Iterator:
        """As Executor.map (with Python 3.14's buffersize): results in order, lazily.

        The callable is pickled once for the whole map. chunksize > 1 sends that many calls
        as one task (as ProcessPoolExecutor does). buffersize bounds how many tasks are
        submitted ahead of the results consumed, so a map over a huge or endless iterable
        runs in bounded memory.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError("buffersize must be None or > 0.")
        end_time = None if timeout is None else timeout + time.monotonic()
        label = describe(fn)
        if chunksize > 1:
            call = partial(_run_chunk, fn)
            argsets = ((list(c),) for c in _chunks(zip(*iterables, strict=False), chunksize))
        else:
            call = fn
            argsets = zip(*iterables, strict=False)
        try:
            fn_bytes = dumps(call, f"callable {label}")
        except SerializationError:
            fn_bytes = None  # every future then carries the error, as submit's would
        submit = partial(self._submit_prepared, call, fn_bytes)

        if buffersize is None:
            futures = deque(submit(args) for args in argsets)
        else:
            futures = deque(submit(args) for args in itertools.islice(argsets, buffersize))
        return _map_results(futures, argsets if buffersize else None, submit, end_time,
                            chunked=chunksize > 1)

    def _submit_prepared(self, call, fn_bytes, args: tuple) -> Future:
        return self._submit(call, fn_bytes, args, {})

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shutdown_lock:
            self._shutdown = True
            if self._closer is None:
                self._closer = threading.Thread(
                    target=self._close_when_done, name="batchexec-shutdown", daemon=True
                )
                start = True
            else:
                start = False
        if cancel_futures and self._session is not None:
            for item in self._table.drain_pending():
                item.future.cancel()
        if start:
            self._closer.start()
        if wait:
            self._closer.join()

    # -- internals ---------------------------------------------------------------------------

    def _set_broken(self, error: BaseException) -> None:
        """Fail every outstanding future with error; later submits raise it too."""
        with self._shutdown_lock:
            if self._broken is None:
                self._broken = error
                log.error("executor broken: %s", error)
        for future in self._table.drain_all():
            try:
                future.set_exception(error)
            except InvalidStateError:  # cancelled or resolved meanwhile
                pass

    def _close_when_done(self) -> None:
        self._table.wait_done()
        self._table.close()
        self._monitor.stop()
        for thread in self._threads[:2]:  # the dead-letter watcher is left to finish its poll
            thread.join()
        self._release()

    def _release(self) -> None:
        """Terminate workers and delete session resources and the emulator: idempotent."""
        launcher = getattr(self, "_launcher", None)
        if launcher is not None:
            launcher.terminate()
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._emulator is not None:
            self._emulator.close()
            self._emulator = None
        atexit.unregister(self._shutdown_at_exit)

    def _shutdown_at_exit(self) -> None:
        """A program that forgot shutdown() still waits for its tasks and leaks nothing."""
        try:
            self.shutdown(wait=True, cancel_futures=True)
        except Exception as exc:  # never mask the program's own exit status
            log.warning("shutting down %r at exit failed: %s", self, exc)


def _chunks(iterable: Iterable, n: int) -> Iterator[tuple]:
    it = iter(iterable)
    while chunk := tuple(itertools.islice(it, n)):
        yield chunk


def _map_results(futures: deque, more, submit, end_time, chunked: bool):
    """Yield results in order, topping up the buffer as each is consumed; cancel the rest on
    an early exit or error (as the standard library does)."""
    try:
        while futures:
            if more is not None:
                args = next(more, None)
                if args is not None:
                    futures.append(submit(args))
            future = futures.popleft()
            try:
                if end_time is None:
                    result = future.result()
                else:
                    result = future.result(end_time - time.monotonic())
            except FuturesTimeoutError:
                future.cancel()
                raise
            if chunked:
                yield from result
            else:
                yield result
            del future, result
    finally:
        for future in futures:
            future.cancel()
