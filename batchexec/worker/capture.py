"""Task output as data: the runner's stdout and stderr pipes, cut into lines and attributed.

The supervisor reads both pipes (a pump thread, and the main thread at each task boundary)
and turns the bytes into OutputLines owned by the task running when they were read. Every
line is echoed to the supervisor's own stdout/stderr, so the job's log (CloudWatch) has all
of it; at most ``limit`` bytes per task are also handed to ``sink`` (the outbox, which sends
them to the client), then one marker line says where the forwarded output was cut.

Attribution is exact at task boundaries because the runner flushes its streams before it
sends a result, and the supervisor drains the pipes (non-blocking, under the lock the pump
also reads under) before it ends the task. Output written between tasks (a thread the last
task left behind) belongs to no task (``task_id`` None).
"""

from __future__ import annotations

import os
import select
import sys
import threading
from collections import deque
from collections.abc import Callable

from ..protocol import OutputLine

#: Lines of each task kept for crash reports (TaskCrashedError shows them).
TAIL_LINES = 20
#: A line longer than this is split: a task writing without newlines (a progress bar) must
#: not grow the supervisor's buffer without bound.
MAX_LINE_BYTES = 16 * 1024
#: How often the pump thread wakes up to notice it was asked to stop.
PUMP_POLL_SECONDS = 0.2
_READ_SIZE = 65536


class _TaskOutput:
    """What one task (or the time between tasks) has written so far."""

    def __init__(self, task_id: str | None):
        self.task_id = task_id
        self.forwarded = 0
        self.cut = False
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)


class OutputCapture:
    def __init__(self, limit: int, sink: Callable[[OutputLine], None], echo: bool = True):
        self.limit = limit
        self.sink = sink
        self.echo = echo
        self._lock = threading.Lock()
        self._current = _TaskOutput(None)
        self._fds: dict[int, str] = {}  # read end -> stream name
        self._partial: dict[str, bytes] = {}
        self._pump: threading.Thread | None = None
        self._stop = threading.Event()

    # -- pipes of one runner ------------------------------------------------------------

    def attach(self, stdout_fd: int, stderr_fd: int) -> None:
        """Start reading a new runner's pipes (read ends; this object closes them)."""
        self.detach()
        for fd in (stdout_fd, stderr_fd):
            os.set_blocking(fd, False)
        with self._lock:
            self._fds = {stdout_fd: "stdout", stderr_fd: "stderr"}
            self._partial = {"stdout": b"", "stderr": b""}
        self._stop = threading.Event()
        self._pump = threading.Thread(
            target=self._run_pump, args=(self._stop,), name="batchexec-output", daemon=True
        )
        self._pump.start()

    def detach(self) -> None:
        """Read what is left, end partial lines, stop the pump and close the pipes."""
        if self._pump is not None:
            self._stop.set()
            self._pump.join()
            self._pump = None
        with self._lock:
            self._drain_locked()
            self._flush_partial_locked()
            for fd in self._fds:
                os.close(fd)
            self._fds = {}

    def _run_pump(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._lock:
                fds = list(self._fds)
            if not fds:
                return
            try:
                ready, _, _ = select.select(fds, [], [], PUMP_POLL_SECONDS)
            except (OSError, ValueError):  # closed under us by detach
                return
            if ready and not stop.is_set():
                with self._lock:
                    self._drain_locked()

    # -- task boundaries (main thread) --------------------------------------------------

    def begin(self, task_id: str | None) -> None:
        """Output read from now on belongs to task_id (what was written before does not)."""
        with self._lock:
            self._drain_locked()
            self._flush_partial_locked()
            self._current = _TaskOutput(task_id)

    def end(self) -> str:
        """Close the current task's output (everything it wrote is read by now, since the
        runner flushed before replying); returns its last lines, for crash reports."""
        with self._lock:
            self._drain_locked()
            self._flush_partial_locked()
            tail = "".join(line + "\n" for line in self._current.tail)
            self._current = _TaskOutput(None)
            return tail

    # -- bytes to lines -----------------------------------------------------------------

    def _drain_locked(self) -> None:
        for fd, stream in list(self._fds.items()):
            while True:
                try:
                    chunk = os.read(fd, _READ_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    chunk = b""
                if not chunk:  # EOF: every writer is gone; stop watching this pipe
                    del self._fds[fd]
                    os.close(fd)
                    break
                self._feed_locked(stream, chunk)

    def _feed_locked(self, stream: str, chunk: bytes) -> None:
        data = self._partial.get(stream, b"") + chunk
        *lines, rest = data.split(b"\n")
        while len(rest) > MAX_LINE_BYTES:
            lines.append(rest[:MAX_LINE_BYTES])
            rest = rest[MAX_LINE_BYTES:]
        self._partial[stream] = rest
        for raw in lines:
            self._line_locked(stream, raw)

    def _flush_partial_locked(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._partial[stream] = b""
                self._line_locked(stream, rest)

    def _line_locked(self, stream: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        task = self._current
        task.tail.append(text)
        if self.echo:
            out = sys.stdout if stream == "stdout" else sys.stderr
            try:
                out.write(text + "\n")
                out.flush()
            except (OSError, ValueError):
                pass
        if self.limit <= 0 or task.cut:
            return
        size = len(raw) + 1
        if task.forwarded + size > self.limit:
            task.cut = True
            whose = f"task {task.task_id}" if task.task_id is not None else "this worker"
            text = (f"[batchexec: output of {whose} cut after {task.forwarded} bytes "
                    f"(output_limit={self.limit}); the rest is in the worker's log]")
            self.sink(OutputLine(task.task_id, "stderr", text))
            return
        task.forwarded += size
        self.sink(OutputLine(task.task_id, stream, text))
