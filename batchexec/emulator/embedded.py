"""A private emulator for one executor: the default when there is no stack and no endpoint.

    EmbeddedEmulator.start()
      ├─ Popen([python, -m, batchexec, local, --port, 0], own process group)
      ├─ read the endpoint line (timeout; stderr tail in the error if it dies)
      ├─ deploy templates/batchexec.yaml into it (the same template as on AWS)
      └─ .endpoint_url / .stack_name   →  the executor proceeds exactly as with AWS
    .close(): SIGTERM the server (it kills its job processes), then SIGKILL the group, reap.
    Forgotten: closed by weakref.finalize at exit. Client SIGKILLed: the server notices that
    its parent is gone (--exit-with-parent) and stops itself within a second or two.

Why a subprocess rather than a thread: moto patches nothing in the client's process, the
client's boto3 talks plain HTTP as it would to AWS, and closing is one killpg. Workers get
PYTHONPATH set to the client's sys.path so they import the user's functions by reference
just as the client can (cloudpickle pickles importable functions by name).
"""

from __future__ import annotations

import importlib.util
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import Any

from ..errors import BatchExecError

#: Seconds to wait for the server's SIGTERM cleanup before SIGKILL.
CLOSE_GRACE_SECONDS = 5.0
#: Delay between stack status polls: the emulator creates stacks in well under a second.
WAITER_DELAY_SECONDS = 1


#: What the emulator imports that the base install lacks (the `emulator` extra provides them).
EMULATOR_MODULES = ("moto", "flask", "werkzeug")


class EmulatorStartError(BatchExecError):
    """The embedded emulator did not start or could not deploy the stack."""


class EmulatorNotInstalledError(EmulatorStartError):
    """The emulator's dependencies (the `emulator` extra) are not installed."""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def require_emulator_extra() -> None:
    """One clear line instead of an ImportError from a server subprocess.

    The base install (and the worker image) leaves moto out: it is only needed to run
    without AWS, which is what this error says to install it for.
    """
    missing = [m for m in EMULATOR_MODULES if not _importable(m)]
    if missing:
        raise EmulatorNotInstalledError(
            f"no stack is configured, so batchexec would run its embedded AWS emulator, but "
            f"the emulator is not installed (missing {', '.join(missing)}): "
            f"pip install 'batchexec[emulator]', or deploy a stack (`batchexec stack deploy "
            f"--wait`) and set BATCHEXEC_STACK"
        )


class EmbeddedEmulator:
    """A `batchexec local` subprocess with the project's stack deployed in it."""

    def __init__(self, proc: subprocess.Popen, endpoint_url: str, stack_name: str,
                 stderr_file: Any):  # fmt: skip
        self.endpoint_url = endpoint_url
        self.stack_name = stack_name
        self.pid = proc.pid
        self._proc = proc
        # Runs once: on close(), on garbage collection, or at interpreter exit.
        self._finalizer = weakref.finalize(self, _shutdown, proc, stderr_file, os.getpid())

    @classmethod
    def start(cls, stack_name: str = "batchexec", parameters: dict | None = None,
              timeout: float = 60) -> EmbeddedEmulator:  # fmt: skip
        """Start the server, deploy the stack, and return once it is CREATE_COMPLETE."""
        require_emulator_extra()
        deadline = time.monotonic() + timeout
        proc, stderr_file = _spawn_server()
        try:
            endpoint = _read_endpoint(proc, stderr_file, timeout)
        except BaseException:
            _shutdown(proc, stderr_file)
            raise
        emulator = cls(proc, endpoint, stack_name, stderr_file)
        try:
            emulator._deploy(parameters, max(1.0, deadline - time.monotonic()))
        except BaseException:
            emulator.close()
            raise
        return emulator

    def _deploy(self, parameters: dict | None, timeout: float) -> None:
        from ..aws import AwsClients, resolve_region
        from ..stack import deploy_stack

        clients = AwsClients.for_emulator(resolve_region(None, self.endpoint_url),
                                          self.endpoint_url)
        merged = {"DefaultWorkers": str(os.cpu_count() or 1), **(parameters or {})}
        try:
            deploy_stack(clients, self.stack_name, merged, wait=True,
                         waiter_delay=WAITER_DELAY_SECONDS,
                         waiter_attempts=max(1, int(timeout / WAITER_DELAY_SECONDS)))  # fmt: skip
        except BatchExecError as exc:
            raise EmulatorStartError(
                f"the embedded emulator started at {self.endpoint_url} but deploying stack "
                f"{self.stack_name!r} into it failed: {exc}"
            ) from exc

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def close(self) -> None:
        """Stop the server and every job process it started. Safe to call twice."""
        self._finalizer()

    def __enter__(self) -> EmbeddedEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "closed"
        return f"<EmbeddedEmulator {self.endpoint_url} stack={self.stack_name!r} {state}>"


def _spawn_server() -> tuple[subprocess.Popen, Any]:
    env = dict(os.environ)
    # The emulator and its workers use dummy credentials, whatever the user's AWS setup.
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(var, None)
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    # The workers (children of the server) inherit this: they import what the client imports.
    env["PYTHONPATH"] = os.pathsep.join(p or os.getcwd() for p in sys.path)
    stderr_file = tempfile.TemporaryFile(prefix="batchexec-emulator-", suffix=".log")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchexec", "local", "--port", "0", "--exit-with-parent"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        env=env,
        start_new_session=True,
    )
    return proc, stderr_file


def _read_endpoint(proc: subprocess.Popen, stderr_file: Any, timeout: float) -> str:
    """The first stdout line, within `timeout`; then keep draining stdout so it never blocks."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(timeout=left):
                raise EmulatorStartError(
                    f"the embedded emulator did not print its endpoint within {timeout:.0f} s"
                    + _tail(stderr_file)
                )
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                proc.wait(timeout=5)
                raise EmulatorStartError(
                    f"the embedded emulator exited with status {proc.returncode} before it "
                    f"was ready" + _tail(stderr_file)
                )
            line += chunk
    endpoint = line.decode().strip()
    if not endpoint.startswith("http"):
        raise EmulatorStartError(f"the embedded emulator printed {endpoint!r}, not an endpoint")
    threading.Thread(target=_drain, args=(proc.stdout,), daemon=True).start()
    return endpoint


def _drain(stream: Any) -> None:
    try:
        while stream.read(65536):
            pass
    except (OSError, ValueError):
        pass


def _tail(stderr_file: Any, limit: int = 2000) -> str:
    try:
        stderr_file.seek(0)
        text = stderr_file.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return ""
    if not text:
        return ""
    return "; its stderr ends with:\n" + text[-limit:]


def _shutdown(proc: subprocess.Popen, stderr_file: Any, owner: int | None = None) -> None:
    """SIGTERM (the server then kills its jobs), SIGKILL the group after a grace, reap.

    Only in the process that started the server: a forked child exiting must not stop its
    parent's emulator.
    """
    if owner is not None and os.getpid() != owner:
        return
    # Signal the group only while its leader is unreaped: a reaped pid may belong to someone
    # else by now. (The group holds only the server; its jobs have sessions of their own and
    # die with it through PR_SET_PDEATHSIG if it is SIGKILLed.)
    try:
        if proc.poll() is None:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=CLOSE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=CLOSE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
        pass
    finally:
        if proc.stdout is not None:
            try:
                proc.stdout.close()
            except OSError:
                pass
        stderr_file.close()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
