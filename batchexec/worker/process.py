"""The supervisor's handle on its runner process: start it, give it work, watch it die.

A runner is started fresh (``python -m batchexec.worker.runner``; never a fork of the
supervisor) in its own process group, with

- a control channel: one end of a socketpair, passed by fd (channel.py frames);
- its fd 1 and fd 2 on pipes that OutputCapture reads;
- PR_SET_PDEATHSIG (set by the runner itself), so a SIGKILLed supervisor takes it along.

Waiting for a reply watches both the channel and the process itself (a pidfd, else a short
poll): a runner that dies is seen at once, whatever killed it, while one that merely stalls
(holds the GIL, is SIGSTOPped) is just slow. Stopping a runner kills its whole process group,
so threads and child processes a task left behind go with it.

PR_SET_PDEATHSIG fires when the *thread* that started the child ends: start runners only from
the supervisor's main thread.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from . import channel
from .capture import OutputCapture

#: Without a pidfd (not Linux >= 5.3), how often a waiting supervisor checks the process.
POLL_SECONDS = 0.5


@dataclass
class Finished:
    """The runner replied: ``ok`` with ``data`` the pickled value, else the pickled
    RemoteException. ``seconds``: the call's run time, measured by the runner."""

    ok: bool
    data: bytes
    seconds: float = 0.0


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


class RunnerProcess:
    def __init__(self, proc: subprocess.Popen, conn: Connection, capture: OutputCapture):
        self.proc = proc
        self.conn = conn
        self.capture = capture
        self.pid = proc.pid
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
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "batchexec.worker.runner", str(theirs.fileno()),
                 str(os.getpid())],
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
        capture.attach(out_r, err_r)
        conn = Connection(ours.detach())
        return cls(proc, conn, capture)

    # -- requests -------------------------------------------------------------------------

    def init(self, main_path: str, source: bytes, initializer: bytes,
             timeout: float) -> Outcome:  # fmt: skip
        """Import the client's script and run the initializer."""
        return self._request("init", {"main_path": main_path}, (source, initializer),
                             "ready", timeout)  # fmt: skip

    def run(self, task_id: str, digest: str | None, fn: bytes, args: bytes,
            timeout: float, blobs: dict[str, bytes] | None = None) -> Outcome:  # fmt: skip
        """Run one task. ``blobs`` maps the digests of the large buffers its arguments refer
        to onto their pickled bytes; an empty value means this runner has it already."""
        blobs = blobs or {}
        return self._request("task", {"id": task_id, "digest": digest, "blobs": list(blobs)},
                             (fn, args, *blobs.values()), "result", timeout)  # fmt: skip

    def _request(self, kind: str, head: dict, blobs: tuple, reply: str,
                 timeout: float) -> Outcome:  # fmt: skip
        try:
            channel.send(self.conn, kind, head, *blobs)
        except OSError:
            return self._crashed()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return TimedOut(timeout)
            events = self._selector.select(left if self._pidfd is not None
                                           else min(left, POLL_SECONDS))  # fmt: skip
            ready = [key.fileobj for key, _ in events]
            # A reply sent just before dying is still a reply: read the channel first.
            if self.conn in ready or (ready and self.conn.poll(0)):
                try:
                    got, fields, data = channel.recv(self.conn)
                except channel.ChannelError:
                    return self._crashed()
                if got != reply:
                    return self._crashed()
                return Finished(bool(fields.get("ok")), data[0] if data else b"",
                                float(fields.get("seconds", 0.0)))  # fmt: skip
            if ready or self._exited():
                return self._crashed()

    def _exited(self) -> bool:
        """Has the runner exited? Without reaping it, so its pid stays its group's id."""
        if self.proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _crashed(self) -> Crashed:
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
