"""The supervisor's handle on its runner process: start it, give it work, watch it die.

A runner is started fresh (``python -m batchexec.worker.runner``; never a fork of the
supervisor) in its own process group, with

- a control channel: one end of a socketpair, passed by fd (channel.py frames);
- its fd 1 and fd 2 on pipes that OutputCapture reads;
- PR_SET_PDEATHSIG (set by the runner itself), so a SIGKILLed supervisor takes it along.

Tasks are pipelined: ``send_task`` hands the runner a task while earlier ones are still
running, and ``wait`` returns the replies that have come back, in the order the tasks were
sent. Only a task whose frame fits the socket's buffer beside the others waiting is sent
ahead (``fits_ahead``), so a send never blocks while the runner is busy: the supervisor stays
free to see a death or enforce a timeout.

Waiting for a reply watches both the channel and the process itself (a pidfd, else a short
poll): a runner that dies is seen at once, whatever killed it, while one that merely stalls
(holds the GIL, is SIGSTOPped) is just slow. Replies it sent before dying are read first.
Stopping a runner kills its whole process group, so threads and child processes a task left
behind go with it.

PR_SET_PDEATHSIG fires when the *thread* that started the child ends: start runners only from
the supervisor's main thread.
"""

from __future__ import annotations

import os
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass

from . import channel
from .capture import OutputCapture
from .channel import Channel

#: Without a pidfd (not Linux >= 5.3), how often a waiting supervisor checks the process.
POLL_SECONDS = 0.5
#: The control socket's send buffer asked for: tasks sent ahead wait in it (a 100 KB
#: argument pipelines too where the kernel allows it; it caps the figure at wmem_max).
SEND_BUFFER_BYTES = 1 << 20


@dataclass
class Finished:
    """The runner replied: ``ok`` with ``data`` the pickled value, else the pickled
    RemoteException. ``seconds``: the call's run time, measured by the runner; ``seq``:
    which task (the runner's sequence number)."""

    ok: bool
    data: bytes
    seconds: float = 0.0
    seq: int = -1


@dataclass
class Skipped:
    """The runner picked task ``seq`` up after its ``not_after`` time and did not run it."""

    seq: int


@dataclass
class Crashed:
    """The runner died (or broke the channel) before replying; ``status`` as subprocess
    reports it (negative: killed by that signal)."""

    status: int | None


@dataclass
class TimedOut:
    """No reply within the time allowed; the caller stops the runner."""

    seconds: float


Outcome = Finished | Crashed | TimedOut
Reply = Finished | Skipped


class RunnerProcess:
    def __init__(self, proc: subprocess.Popen, conn: Channel, capture: OutputCapture,
                 send_buffer: int = 0):  # fmt: skip
        self.proc = proc
        self.conn = conn
        self.capture = capture
        self.pid = proc.pid
        # Frames sent ahead stay under half the socket's send buffer (the kernel's own
        # bookkeeping takes a share of it), so sending them never blocks.
        self.ahead_limit = send_buffer // 2
        self._unanswered: deque[int] = deque()  # frame sizes of tasks sent, not replied
        self._outgoing: list[bytes] = []  # frames of tasks sent, not yet written
        try:
            self._pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self._pidfd = None
        # One selector for the runner's life: building one per wait (as
        # multiprocessing.connection.wait does) costs three system calls a task.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.conn, selectors.EVENT_READ)
        if self._pidfd is not None:
            self._selector.register(self._pidfd, selectors.EVENT_READ)

    @classmethod
    def start(cls, capture: OutputCapture) -> RunnerProcess:
        ours, theirs = socket.socketpair()
        # Room for tasks sent ahead (capped by the kernel's net.core.wmem_max).
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        send_buffer = ours.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        token = secrets.token_hex(8)  # boundary marks no task prints by chance
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "batchexec.worker.runner", str(theirs.fileno()),
                 str(os.getpid()), token],
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(theirs.fileno(),),
                env=runner_environment(),
                start_new_session=True,  # its own process group: stop() kills what it leaves
            )
        except BaseException:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            ours.close()
            theirs.close()
            raise
        finally:
            theirs.close()
        os.close(out_w)
        os.close(err_w)
        capture.attach(out_r, err_r, token)
        return cls(proc, Channel(ours), capture, send_buffer)

    # -- requests -------------------------------------------------------------------------

    def init(self, main_path: str, source: bytes, initializer: bytes,
             timeout: float) -> Outcome:  # fmt: skip
        """Import the client's script and run the initializer."""
        return self._request("init", {"main_path": main_path}, (source, initializer),
                             "ready", timeout)  # fmt: skip

    @property
    def waiting(self) -> int:
        """Tasks sent whose reply has not been read."""
        return len(self._unanswered)

    def fits_ahead(self, size: int) -> bool:
        """May a task frame of ``size`` bytes be sent now without blocking, with the
        others still unanswered? (An idle runner is reading: anything may be sent then.)"""
        return not self._unanswered or sum(self._unanswered) + size <= self.ahead_limit

    def send_task(self, seq: int, task_id: str, digest: str | None, fn: bytes, args: bytes,
                  blobs: dict[str, bytes] | None = None,
                  not_after: float | None = None,
                  buffers: list[bytes] | None = None) -> None:  # fmt: skip
        """Queue one task behind those sent before (written by the next ``flush``, so that
        tasks sent together cost one write). ``blobs`` maps the digests of the large buffers
        its arguments refer to onto their pickled bytes; ``buffers`` are the raw out-of-band
        buffers of its arguments, in pickle order; ``not_after``: the time.monotonic() after
        which the runner must not start it (it replies Skipped)."""
        blobs = blobs or {}
        buffers = buffers or []
        head = {"id": task_id, "seq": seq, "digest": digest, "blobs": list(blobs),
                "not_after": not_after}  # fmt: skip
        pieces = channel.frame("task", head, fn, args, *blobs.values(), *buffers)
        self._unanswered.append(sum(map(len, pieces)))
        self._outgoing += pieces

    def flush(self) -> None:
        """Write the tasks queued by send_task. A runner that is gone is not reported here
        but by the next ``wait``."""
        pieces, self._outgoing = self._outgoing, []
        if pieces:
            try:
                self.conn.send_frames(pieces)
            except OSError:
                pass

    def wait(self, timeout: float) -> tuple[list[Reply], Crashed | TimedOut | None]:
        """The replies to tasks sent, as soon as there is at least one (all that have
        arrived), and how the runner ended if it did: Crashed (dead, or broke the channel;
        the replies it sent first are still returned) or TimedOut (nothing within timeout
        seconds; the caller stops it)."""
        self.flush()
        frames, ended = self._frames(timeout)
        replies: list[Reply] = []
        for kind, fields, data in frames:
            try:
                seq = int(fields["seq"])
                if kind == "result":
                    replies.append(_finished(fields, data, seq))
                elif kind == "skipped":
                    replies.append(Skipped(seq))
                else:
                    raise ValueError(kind)
            except (KeyError, TypeError, ValueError, IndexError):
                return replies, ended or self.discard()
            if self._unanswered:
                self._unanswered.popleft()
        return replies, ended

    def _frames(self, timeout: float) -> tuple[list, Crashed | TimedOut | None]:
        """Every whole frame from the runner, as soon as there is one; with how the runner
        ended, if it did (what it sent before dying is still returned)."""
        deadline = time.monotonic() + timeout
        while True:
            frames, broken = self._whole_frames()
            if broken:
                return frames, self.discard()
            if frames:
                return frames, None
            left = deadline - time.monotonic()
            if left <= 0:
                return [], TimedOut(timeout)
            events = self._selector.select(left if self._pidfd is not None
                                           else min(left, POLL_SECONDS))  # fmt: skip
            ready = [key.fileobj for key, _ in events]
            if self.conn in ready:
                if self.conn.read_available() >= 0:
                    continue
            elif not ready and not self._exited():
                continue
            # Dead (or closed the channel): a reply sent just before dying is still a reply.
            while self.conn.read_available() > 0:
                pass
            frames, _ = self._whole_frames()
            return frames, self.discard()

    def _whole_frames(self) -> tuple[list, bool]:
        """The frames already buffered whole; True when the channel holds garbage."""
        frames = []
        try:
            while self.conn.complete():
                frames.append(self.conn.recv())
        except channel.ChannelError:
            return frames, True
        return frames, False

    def _request(self, kind: str, head: dict, blobs: tuple, reply: str,
                 timeout: float) -> Outcome:  # fmt: skip
        try:
            self.conn.send(kind, head, *blobs)
        except OSError:
            return self.discard()
        frames, ended = self._frames(timeout)
        if frames:
            got, fields, data = frames[0]
            if got != reply:
                return self.discard()
            return _finished(fields, data)
        return ended or self.discard()

    def _exited(self) -> bool:
        """Has the runner exited? Without reaping it, so its pid stays its group's id."""
        if self.proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def discard(self) -> Crashed:
        """The runner is dead or unusable (alive but broke the channel: it cannot be
        trusted): kill its group, including whatever it left behind, and say how it ended."""
        self.kill()
        return Crashed(self.proc.returncode)

    # -- life -----------------------------------------------------------------------------

    def kill_group(self) -> None:
        """SIGKILL the runner's process group (cheap enough for a signal handler)."""
        if self.proc.returncode is not None:  # reaped: its pid may belong to someone else
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        # While the runner is unreaped its pid (= the group id) cannot be reused, so the
        # group kill cannot hit a stranger; it also sweeps what a dead runner left behind.
        self.kill_group()
        self.proc.wait()

    def stop(self) -> None:
        """Kill the runner and everything in its group; read its last output; release."""
        self.kill()
        self.capture.detach()
        self._selector.close()
        self.conn.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def runner_environment() -> dict[str, str]:
    """The runner's environment: the worker's, less the session key (user code has no use
    for it, and need not be able to sign messages)."""
    from ..config import SessionSettings

    env = dict(os.environ)
    env.pop(SessionSettings.env_name("session_key"), None)
    return env


def _finished(fields: dict, data: list[bytes], seq: int = -1) -> Finished:
    """A "result" or "ready" frame as a Finished outcome."""
    return Finished(bool(fields.get("ok")), data[0] if data else b"",
                    float(fields.get("seconds", 0.0)), seq)  # fmt: skip
