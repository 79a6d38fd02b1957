"""Task output as data: the runner's stdout and stderr pipes, cut into lines and attributed.

The supervisor reads both pipes (a pump thread, and the main thread when a task's result
arrives) and turns the bytes into OutputLines owned by the task that wrote them. Every line is
echoed to the supervisor's own stdout/stderr, so the job's log (CloudWatch) has all of it; at
most ``limit`` bytes per task are also handed to ``sink`` (the outbox, which sends them to the
client), then one line says where the forwarded output was cut.

Attribution is by boundary marks that the runner writes into each stream itself: the
supervisor sends the next tasks of a pack before the current one's result is back
(pipelining), so when bytes are read says nothing about which task wrote them. Before each
task the runner flushes Python's and C's buffers and writes, to fd 1 and to fd 2,

    \0batchexec-<token>:<seq>\n        what follows is task <seq>'s

``token`` is random per runner, so no task prints a mark by accident; ``seq`` numbers the
runner's tasks (``expect`` maps it onto a task id before the task is sent). Marks are taken
out of the output. A mark may end a line the last task left without a newline: the text
before it is that task's last line. A task's output ends with its result: the runner flushes
before sending it, so once the result is in, ``finish`` reads the pipes up to it and closes
the task; what is read after that and before the next mark belongs to no task (``task_id``
None), like output before the first task (the initializer's). There is no end mark: it
would cost two more writes a task and tell nothing the result does not. A task that closes
or redirects its fd 1/2 loses its marks; its result still ends its output.
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
#: After reading less than PUMP_BUSY_BYTES, the pump waits this long before reading again:
#: with pipelined tasks the runner writes boundary marks several thousand times a second,
#: and a thread woken for each would cost the supervisor more than the task crossing itself.
#: Lines reach the worker's log this much later at most; attribution does not depend on it.
PUMP_GATHER_SECONDS = 0.02
PUMP_BUSY_BYTES = 16384
_READ_SIZE = 65536
#: What every boundary mark starts with (then the runner's token, ":", seq, newline).
MARK_PREFIX = b"\0batchexec-"
#: Bytes of a partial line never split off as a long line's piece: a mark being read may sit
#: there (marks are far shorter).
_MARK_ROOM = 128


def boundary_mark(token: str, seq: int) -> bytes:
    """The line the runner writes to fd 1 and fd 2 before task seq."""
    return b"%s%s:%d\n" % (MARK_PREFIX, token.encode(), seq)


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
        self._gap = _TaskOutput(None)  # output between tasks
        self._tasks: dict[int, _TaskOutput] = {}  # seq -> expected or running task
        self._current: dict[str, _TaskOutput | None] = {}  # stream -> its task; None: gap
        self._seen: dict[str, int] = {}  # stream -> seq of the last mark read from it
        self._mark = MARK_PREFIX
        self._fds: dict[int, str] = {}  # read end -> stream name
        self._partial: dict[str, bytes] = {}
        self._pump: threading.Thread | None = None
        self._stop = threading.Event()

    # -- pipes of one runner ------------------------------------------------------------

    def attach(self, stdout_fd: int, stderr_fd: int, token: str) -> None:
        """Start reading a new runner's pipes (read ends; this object closes them); the
        runner marks task boundaries with ``token``."""
        self.detach()
        for fd in (stdout_fd, stderr_fd):
            os.set_blocking(fd, False)
        with self._lock:
            self._fds = {stdout_fd: "stdout", stderr_fd: "stderr"}
            self._partial = {"stdout": b"", "stderr": b""}
            self._current = {"stdout": None, "stderr": None}
            self._seen = {"stdout": -1, "stderr": -1}
            self._tasks = {}
            self._mark = MARK_PREFIX + token.encode() + b":"
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
                    read = self._drain_locked()
                if read < PUMP_BUSY_BYTES:
                    # A trickle (boundary marks, a progress line): let it gather rather than
                    # wake for every write; the main thread reads what a task wrote anyway
                    # when its result comes. A flood is read at once (the writer waits).
                    stop.wait(PUMP_GATHER_SECONDS)

    # -- task boundaries (main thread) --------------------------------------------------

    def new_gap(self) -> None:
        """Output between tasks read from now on starts afresh (its own budget and tail):
        before a runner's initializer, and after each task."""
        with self._lock:
            self._drain_locked()
            self._gap = _TaskOutput(None)

    def gap_tail(self) -> str:
        """The last lines written between tasks (the initializer's, for crash reports)."""
        with self._lock:
            self._drain_locked()
            self._flush_partial_locked()
            return _joined(self._gap.tail)

    def expect(self, seq: int, task_id: str) -> None:
        """The runner's task ``seq`` is task_id: register it before sending it."""
        with self._lock:
            self._tasks[seq] = _TaskOutput(task_id)

    def finish(self, seq: int) -> str:
        """Close task seq's output once its result is in (or its runner is dead): all it
        wrote is in the pipes by then, so a drain (only needed while a stream has not
        reached the next task's mark yet) reads the rest of it. Returns the task's last
        lines, for crash reports."""
        with self._lock:
            if any(seen <= seq for seen in self._seen.values()):
                self._drain_locked()  # some of it may be unread
            task = self._tasks.pop(seq, None)
            if task is None:
                return ""
            for stream, cur in self._current.items():
                if cur is task:
                    self._flush_partial_locked(stream)
                    self._current[stream] = None
            if self._gap.tail:  # a fresh budget for what comes between this task and the next
                self._gap = _TaskOutput(None)
            return _joined(task.tail)

    # -- bytes to lines -----------------------------------------------------------------

    def _drain_locked(self) -> int:
        """Read both pipes until they are empty; the number of bytes read."""
        read = 0
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
                read += len(chunk)
                self._feed_locked(stream, chunk)
                if len(chunk) < _READ_SIZE:  # the pipe is empty: save a read
                    break
        return read

    def _feed_locked(self, stream: str, chunk: bytes) -> None:
        data = self._partial.get(stream, b"") + chunk
        *lines, rest = data.split(b"\n")
        marked = MARK_PREFIX in data
        pieces = []
        while len(rest) > MAX_LINE_BYTES + _MARK_ROOM:
            pieces.append(rest[:MAX_LINE_BYTES])
            rest = rest[MAX_LINE_BYTES:]
        self._partial[stream] = rest
        if not marked:
            for raw in lines:
                self._line_locked(stream, raw)
        else:
            for raw in lines:
                at = raw.find(self._mark)
                if at < 0:
                    self._line_locked(stream, raw)
                    continue
                if at:  # the task's last line, left without a newline
                    self._line_locked(stream, raw[:at])
                self._boundary_locked(stream, raw[at + len(self._mark):])
        for raw in pieces:
            self._line_locked(stream, raw)

    def _boundary_locked(self, stream: str, mark: bytes) -> None:
        try:
            seq = int(mark)
        except ValueError:
            return
        self._seen[stream] = seq
        self._current[stream] = self._tasks.get(seq)  # None: finished already

    def _flush_partial_locked(self, only: str | None = None) -> None:
        for stream, rest in self._partial.items():
            if rest and only in (None, stream):
                self._partial[stream] = b""
                self._line_locked(stream, rest)

    def _line_locked(self, stream: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        task = self._current.get(stream) or self._gap
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


def _joined(lines) -> str:
    return "".join(line + "\n" for line in lines)
