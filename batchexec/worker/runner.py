"""The runner: the worker's child process that runs user code, started once and reused.

    python -m batchexec.worker.runner <control fd> <supervisor pid> <mark token>

Started fresh by the supervisor (never forked from it: a forked process would inherit
threads and OpenCL contexts in an undefined state), in its own process group, with fd 1 and
fd 2 on pipes that the supervisor reads (so print, logging, warnings and C-level writes all
become the running task's output). It then serves the control channel (see channel.py):

    "init"  import the client's script as __mp_main__ (mainmodule.py), run the initializer
            → "ready" {ok} (+ the pickled exception when either raised)
    "task"  unpickle the callable (cached by digest) and the arguments, call, pickle the
            return value or the exception → "result" {id, seq, ok, seconds}; or, when it
            is picked up after its ``not_after`` time, do nothing → "skipped" {id, seq}
    EOF     the supervisor is done with us: exit

Tasks are served in the order they were sent, and the supervisor sends the next ones of a
pack before this one's result is back, so they wait in the channel, not in the supervisor:
the runner never waits for a round trip. Whether a waiting task may still start is decided
here, when it does (``not_after``: the supervisor's deadline for starting any task of the
message, on the machine-wide monotonic clock). Each task's output starts with a boundary
mark in fd 1 and fd 2 (capture.py) and ends, flushed, before its result is sent, so the
supervisor attributes every byte to the task that wrote it however far it reads behind.

Everything here may be broken by the user's code (a segfault, os._exit, a held GIL, a thread
that never ends): the supervisor watches this process from outside and survives all of it.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import socket
import sys
import time
from collections import OrderedDict

from ..errors import SerializationError
from ..serialization import BlobTable, describe, dumps_exception, dumps_result, loads
from . import channel
from .capture import boundary_mark
from .channel import Channel
from .mainmodule import load_main

#: Distinct callables kept unpickled (a map sends the same callable with every pack).
FUNCTION_CACHE_SIZE = 64

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Get SIGKILL when the supervisor dies, even by SIGKILL (Linux; best effort elsewhere).

    Set here, after exec, rather than in a preexec_fn (unsafe in a threaded parent); the
    parent may have died in between, which the getppid check catches.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)


try:
    _fflush = ctypes.CDLL(None).fflush
except (OSError, AttributeError):  # pragma: no cover - no C library to flush
    _fflush = None


def flush_output() -> None:
    """Push everything the task wrote into the pipes before its result is sent, so the
    supervisor attributes it to this task: Python's buffers, then C stdio's."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed or replaced by the task
            pass
    if _fflush is not None:
        _fflush(None)


def write_mark(mark: bytes) -> None:
    """Write a boundary mark to fd 1 and fd 2 (one write each: atomic in a pipe). A task
    that closed or redirected them loses its marks; the supervisor copes (capture.py)."""
    for fd in (1, 2):
        try:
            os.write(fd, mark)
        except OSError:
            pass


class Runner:
    def __init__(self, conn: Channel, token: str = ""):
        self.conn = conn
        self.token = token
        self.functions: OrderedDict[str, object] = OrderedDict()
        self.blobs = BlobTable()

    def serve(self) -> None:
        while True:
            try:
                kind, head, blobs = self.conn.recv()
            except channel.ChannelError:
                return
            if kind == "init":
                self._init(head, blobs)
            elif kind == "task":
                self._task(head, blobs)
            else:
                raise SystemExit(f"batchexec runner: unknown command {kind!r}")

    def _init(self, head: dict, blobs: list[bytes]) -> None:
        source, initializer = blobs
        try:
            if head.get("main_path"):
                load_main(head["main_path"], source)
            if initializer:
                fn, initargs = loads(initializer, "initializer")
                fn(*initargs)
        except BaseException as exc:  # noqa: BLE001 - any failure is reported, then we exit
            flush_output()
            self.conn.send("ready", {"ok": False}, dumps_exception(exc))
            return
        flush_output()
        self.conn.send("ready", {"ok": True})

    def _task(self, head: dict, blobs: list[bytes]) -> None:
        task_id, seq = head["id"], head["seq"]
        not_after = head.get("not_after")
        if not_after is not None and time.monotonic() > not_after:
            self.conn.send("skipped", {"id": task_id, "seq": seq})
            return
        fn_bytes, args_bytes, *rest = blobs
        keys = head.get("blobs", ())
        shared, buffers = rest[: len(keys)], rest[len(keys) :]  # named blobs, then buffers
        for key, data in zip(keys, shared, strict=True):
            if data:
                self.blobs.add(key, data)
        flush_output()  # what a leaked thread wrote goes before the mark: between tasks
        write_mark(boundary_mark(self.token, seq))
        started = time.perf_counter()
        ok, data = self._call(task_id, head.get("digest"), fn_bytes, args_bytes, buffers,
                              bool(keys))  # fmt: skip
        seconds = time.perf_counter() - started
        self.blobs.clear_pending()
        flush_output()  # all the task wrote is in the pipes before its result is sent
        self.conn.send("result", {"id": task_id, "seq": seq, "ok": ok, "seconds": seconds}, data)

    def _call(self, task_id: str, digest: str | None, fn_bytes: bytes, args_bytes: bytes,
              buffers: list[bytes], uses_blobs: bool):  # fmt: skip
        try:
            fn = self._function(digest, fn_bytes, task_id)
            # Private, writable copies: a task may change an array argument in place, as it
            # can one pickled in band; tasks sharing a buffer or a blob each get their own.
            # A task that names no blob unpickles without the blob hook (pickle's own C
            # path: most of dask's tasks, whose arrays travel as out-of-band buffers).
            args, kwargs = loads(args_bytes, f"arguments of task {task_id}",
                                 self.blobs.private() if uses_blobs else None,
                                 [bytearray(b) for b in buffers])  # fmt: skip
        except SerializationError as exc:
            return False, dumps_exception(exc)
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - as ProcessPoolExecutor: any exception
            return False, dumps_exception(exc)
        try:
            return True, dumps_result(value)
        except Exception as exc:
            error = SerializationError(
                f"the result of {describe(fn)} (a {type(value).__name__}) cannot be pickled: "
                f"{type(exc).__name__}: {exc}; return plain data (numbers, strings, arrays, "
                f"dicts) or write large outputs to storage and return their location"
            )
            return False, dumps_exception(error)

    def _function(self, digest: str | None, fn_bytes: bytes, task_id: str):
        if digest is None:
            return loads(fn_bytes, f"callable of task {task_id}", self.blobs)
        fn = self.functions.get(digest)
        if fn is None:
            fn = loads(fn_bytes, "callable", self.blobs)
            self.functions[digest] = fn
            if len(self.functions) > FUNCTION_CACHE_SIZE:
                self.functions.popitem(last=False)
        else:
            self.functions.move_to_end(digest)
        return fn


def main(argv: list[str]) -> None:
    fd, parent, token = int(argv[0]), int(argv[1]), argv[2]
    die_with_parent(parent)
    faulthandler.enable()  # a segfault prints the Python stack: it lands in the output tail
    # Line-buffered like a terminal, so output streams out while a long task runs.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
    conn = Channel(socket.socket(fileno=fd))
    Runner(conn, token).serve()
    flush_output()
    # Threads the tasks left behind must not keep this process alive once the supervisor
    # is done with it (it kills our process group anyway; this is the quick way out).
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
