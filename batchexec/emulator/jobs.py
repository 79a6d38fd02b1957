"""The emulator's compute environment: each AWS Batch job runs as a local process.

moto's Batch backend keeps the API state (queues, definitions, jobs, array children) and
starts one thread per job whose `Job.run` would drive a Docker container. We replace that
one method (internal API; setup.cfg pins the moto range and tests/test_emulator.py checks
the patch still holds) with `run_local_job`, which builds a command line from the job
definition and the submit-time containerOverrides and runs it as a child process:

    SubmitJob ──▶ moto Job thread ──▶ run_local_job
                                        │ SUBMITTED → PENDING → RUNNABLE → STARTING
                                        │ Popen(own process group) ─▶ RUNNING
                                        │ stdout/stderr lines ─▶ CloudWatch Logs stream
                                        │ TerminateJob: SIGTERM, grace, SIGKILL the group
                                        ▼ exit code ─▶ SUCCEEDED / FAILED (+ exitCode, reason)

Why we do not use moto's `{"batch": {"use_docker": False}}`: in moto 5.2.5 that switch
routes SubmitJob to `moto.batch_simple`, which marks every job SUCCEEDED without running
anything and never calls `Job.run`. We keep the regular backend (which never touches Docker
once `run` is replaced) so that array jobs, dependencies and terminate all go through it.

A few small wrappers fix what moto leaves out and the executor relies on: the array parent's
status summarised from its children as AWS does, terminate/cancel of an array parent reaching
its children, `exitCode`/`reason` in DescribeJobs, and an environment list that no longer grows
on every DescribeJobs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Any

from moto.batch import models as batch_models
from moto.batch.utils import JobStatus

logger = logging.getLogger(__name__)

#: Seconds spent in each pre-RUNNING state. 0 keeps the emulator fast; tests raise it (through
#: the environment variable) to watch the transitions.
TRANSITION_DELAY = float(os.environ.get("BATCHEXEC_EMULATOR_TRANSITION_DELAY", "0"))
#: How often the job thread checks for terminate requests and flushes logs. Smaller reacts
#: faster to TerminateJob; larger costs less CPU per running job.
POLL_SECONDS = 0.1
#: Between SIGTERM and SIGKILL on terminate. ECS waits 30 s; locally a short grace keeps
#: shutdown quick while still letting a worker flush its last result.
KILL_GRACE_SECONDS = 3.0
#: AWS's statusReason texts.
REASON_EXITED = "Essential container in task exited"
REASON_TIMEOUT = "Job attempt duration exceeded timeout"
#: Where logs go when the job definition names no awslogs group (AWS's default).
DEFAULT_LOG_GROUP = "/aws/batch/job"

_STARTING_STATES = (JobStatus.PENDING, JobStatus.RUNNABLE, JobStatus.STARTING)
_TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED)


class Capacity:
    """Whether the compute environment can start jobs. Tests switch it off (through the
    control plane) to see what users see when AWS has no instances: jobs wait RUNNABLE with a
    status reason, and the executor's start_timeout must catch it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.available = True
        self.reason = ""

    def set(self, available: bool, reason: str = "") -> None:
        with self._lock:
            self.available = available
            self.reason = reason or "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - no capacity"

    def state(self) -> dict:
        with self._lock:
            return {"available": self.available, "reason": self.reason}


capacity = Capacity()


class ProcessRegistry:
    """Every job process this server started and that is still alive, to kill on exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)

    def discard(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._procs]

    def kill_all(self, grace: float = 1.0) -> None:
        """SIGTERM every job's process group, wait up to `grace` seconds, then SIGKILL."""
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not all(_exited(p.pid) for p in procs):
            time.sleep(0.05)
        for proc in procs:
            _signal_group(proc.pid, signal.SIGKILL)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
                logger.warning("job process %d did not die", proc.pid)
            self.discard(proc)


#: The registry of the (single) server in this process.
registry = ProcessRegistry()
#: The endpoint workers use when their job names none; set by `install`.
_endpoint: str | None = None
#: Container mode (`batchexec local --containers`): jobs run in their image; set by `install`.
_containers: Any = None


def install(endpoint: str, containers: Any = None) -> None:
    """Make moto run Batch jobs as local processes (or, given a ContainerRuntime, as
    containers) that talk to `endpoint`. Idempotent."""
    global _endpoint, _containers
    _endpoint = endpoint
    _containers = containers
    Job = batch_models.Job
    if getattr(Job, "_batchexec_patched", False):
        return
    orig_describe_short = Job.describe_short
    orig_container_details = Job._container_details
    orig_get_property = Job._get_container_property
    orig_terminate = Job.terminate
    orig_cancel = batch_models.BatchBackend.cancel_job

    def describe_short(self: Any) -> dict[str, Any]:
        if self._child_jobs:
            _refresh_array_parent(self)
        return orig_describe_short(self)

    def container_details(self: Any) -> dict[str, Any]:
        details = orig_container_details(self)
        if self.exit_code is not None:
            details["exitCode"] = self.exit_code
        reason = getattr(self, "_batchexec_container_reason", None)
        if reason:
            details["reason"] = reason
        return details

    def get_container_property(self: Any, p: str, default: Any) -> Any:
        if p == "environment":  # moto's version appends to the override list on every call
            return [{"name": k, "value": v} for k, v in _job_variables(self).items()] + [
                {"name": "AWS_BATCH_JOB_ID", "value": self.job_id}
            ]
        return orig_get_property(self, p, default)

    def terminate(self: Any, reason: str) -> None:
        orig_terminate(self, reason)
        for child in self._child_jobs or ():
            child.terminate(reason)

    def cancel_job(self: Any, job_id: str, reason: str) -> None:
        job = self.get_job_by_id(job_id) if job_id else None
        children = getattr(job, "_child_jobs", None)
        if not children or not reason:
            return orig_cancel(self, job_id, reason)
        for child in children:  # AWS: cancelling a parent cancels its children not yet started
            orig_cancel(self, child.job_id, reason)

    Job.run = run_local_job
    Job.describe_short = describe_short
    Job._container_details = container_details
    Job._get_container_property = get_container_property
    Job.terminate = terminate
    batch_models.BatchBackend.cancel_job = cancel_job
    Job._batchexec_patched = True


def run_local_job(job: Any) -> None:
    """Replacement for moto's `Job.run`: runs in the job's own thread until the job ends."""
    try:
        _LocalJob(job).run()
    except Exception as exc:  # never let the thread die with the job left RUNNING
        logger.exception("emulated Batch job %s failed to run", job.job_id)
        if not job.job_stopped:
            job.job_stopped_reason = job.job_stopped_reason or f"emulator error: {exc}"
            job._mark_stopped(success=False)


class _LocalJob:
    """One attempt of one job (or array child) as a local process."""

    def __init__(self, job: Any):
        self.job = job
        self._log_lock = threading.Lock()
        self._pending_logs: list[dict[str, Any]] = []

    def run(self) -> None:
        job = self.job
        for state in _STARTING_STATES:
            if job.stop:
                return self._stop_before_start()
            if TRANSITION_DELAY:
                time.sleep(TRANSITION_DELAY)
            job.status = state
            if state == JobStatus.RUNNABLE:
                while not capacity.available and not job.stop:
                    job.job_stopped_reason = capacity.reason  # DescribeJobs' statusReason
                    time.sleep(POLL_SECONDS)
                job.job_stopped_reason = None
            if state == JobStatus.PENDING and job.depends_on:
                if not job._wait_for_dependencies():
                    return None
        if TRANSITION_DELAY:
            time.sleep(TRANSITION_DELAY)  # STARTING lasts a moment too
        if job.stop:
            return self._stop_before_start()

        argv = local_command(job)
        if not argv:
            job.job_stopped_reason = "the job definition and overrides give no command"
            job._mark_stopped(success=False)
            return None
        job.log_stream_name = f"{_stream_prefix(job)}/default/{job.job_id}"
        job.job_started_at = datetime.now()
        job._start_attempt()
        self._open_log_stream()
        containers = _containers
        if containers is not None:
            from .containers import container_environment, container_name

            argv, env = containers.command(
                job, container_environment(job, _job_variables(job), _endpoint or "")
            )
        else:
            env = local_environment(job)
        try:
            self._run_process(argv, env)
        finally:
            if containers is not None:
                containers.remove(container_name(job))
        return None

    def _run_process(self, argv: list[str], env: dict[str, str]) -> None:
        job = self.job
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group: terminate kills its children too
            preexec_fn=_die_with_parent,
        )
        registry.add(proc)
        try:
            job.status = JobStatus.RUNNING
            readers = [
                threading.Thread(target=self._read, args=(stream,), daemon=True)
                for stream in (proc.stdout, proc.stderr)
            ]
            for r in readers:
                r.start()
            timed_out = self._wait(proc)
        finally:
            # The leader has exited but is not reaped yet, so its process-group id cannot
            # have been reused: sweep whatever the job left behind, then reap.
            _signal_group(proc.pid, signal.SIGKILL)
            registry.discard(proc)
            proc.wait()
        for r in readers:
            r.join(timeout=2)  # quick: the sweep closed every copy of the pipes
        self._flush_logs()

        rc = proc.returncode
        job.exit_code = rc if rc >= 0 else 128 - rc  # killed by signal N: 128 + N, as Docker
        if timed_out:
            job.job_stopped_reason = REASON_TIMEOUT
        elif not job.stop:
            job.job_stopped_reason = REASON_EXITED
        if rc < 0:
            job._batchexec_container_reason = f"killed by signal {signal.Signals(-rc).name}"
        job._mark_stopped(success=(rc == 0 and not job.stop and not timed_out))

    def _stop_before_start(self) -> None:
        self.job._mark_stopped(success=False)

    def _wait(self, proc: subprocess.Popen) -> bool:
        """Wait for the process; kill it on terminate or timeout. True if it timed out."""
        job = self.job
        duration = job._get_attempt_duration()
        deadline = time.monotonic() + duration if duration else None
        timed_out = False
        killing_since: float | None = None
        while True:
            if _exited(proc.pid):
                return timed_out
            time.sleep(POLL_SECONDS)
            self._flush_logs()
            now = time.monotonic()
            if killing_since is None and (job.stop or (deadline and now > deadline)):
                timed_out = not job.stop
                killing_since = now
                _signal_group(proc.pid, signal.SIGTERM)
            elif killing_since is not None and now - killing_since > KILL_GRACE_SECONDS:
                _signal_group(proc.pid, signal.SIGKILL)

    # -- CloudWatch Logs -------------------------------------------------------------------

    def _open_log_stream(self) -> None:
        backend = self.job._log_backend
        group = _log_group(self.job)
        backend.ensure_log_group(group)
        backend.ensure_log_stream(group, self.job.log_stream_name)

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            event = {"timestamp": int(time.time() * 1000), "message": line}
            with self._log_lock:
                self._pending_logs.append(event)
        stream.close()

    def _flush_logs(self) -> None:
        with self._log_lock:
            events, self._pending_logs = self._pending_logs, []
        if events:
            self.job._log_backend.put_log_events(
                _log_group(self.job), self.job.log_stream_name, events
            )


# -- what a job runs, and with which environment --------------------------------------------


def job_command(job: Any) -> list[str]:
    """The container command: the overrides', else the job definition's, with parameters."""
    props = job.job_definition.container_properties or {}
    command = job.container_overrides.get("command") or props.get("command") or []
    return [str(a) for a in job._add_parameters_to_command(list(command))]


def local_command(job: Any) -> list[str]:
    """The container command as a local argv: `batchexec` and `python` mean this interpreter."""
    argv = job_command(job)
    if not argv:
        return []
    if argv[0] == "batchexec":
        return [sys.executable, "-m", "batchexec", *argv[1:]]
    if argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    return argv


def local_environment(job: Any) -> dict[str, str]:
    """The server's environment, then what ECS and Batch set, then the job's variables."""
    variables = _job_variables(job)
    env = dict(os.environ)
    env.update(batch_environment(job, variables))
    if "AWS_ENDPOINT_URL" not in variables and _endpoint:
        env["AWS_ENDPOINT_URL"] = _endpoint
    if not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
        env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    return env


def batch_environment(job: Any, variables: dict[str, str]) -> dict[str, str]:
    """What ECS and Batch give every job's container: the region, the job's variables, then
    Batch's own AWS_BATCH_* variables (job id, attempt, queue, compute environment, array
    index). Shared by local processes and containers."""
    region = job.job_definition._region
    env = {"AWS_REGION": region, "AWS_DEFAULT_REGION": region, **variables}
    env["AWS_BATCH_JOB_ID"] = job.job_id
    env["AWS_BATCH_JOB_ATTEMPT"] = str(len(job.attempts) or 1)
    env["AWS_BATCH_JQ_NAME"] = job.job_queue.name
    if job.job_queue.environments:
        env["AWS_BATCH_CE_NAME"] = job.job_queue.environments[0].name
    index = (job.array_properties or {}).get("index")
    if index is not None:
        env["AWS_BATCH_JOB_ARRAY_INDEX"] = str(index)
    return env


def _job_variables(job: Any) -> dict[str, str]:
    """Job definition variables overlaid by the submit-time overrides (without mutating)."""
    props = job.job_definition.container_properties or {}
    merged = {e["name"]: e["value"] for e in props.get("environment", [])}
    for e in job.container_overrides.get("environment", []) or []:
        merged[e["name"]] = e["value"]
    return merged


def _log_options(job: Any) -> dict[str, str]:
    props = job.job_definition.container_properties or {}
    conf = props.get("logConfiguration") or {}
    if conf.get("logDriver", "awslogs") != "awslogs":
        return {}
    return conf.get("options") or {}


def _log_group(job: Any) -> str:
    return _log_options(job).get("awslogs-group") or DEFAULT_LOG_GROUP


def _stream_prefix(job: Any) -> str:
    return _log_options(job).get("awslogs-stream-prefix") or job.job_definition.name


# -- array parents ----------------------------------------------------------------------------


def _refresh_array_parent(parent: Any) -> None:
    """AWS: a parent is SUBMITTED, PENDING once a child is RUNNABLE, then SUCCEEDED if every
    child succeeded or FAILED if any failed, once all are done."""
    children = parent._child_jobs
    statuses = [c.status for c in children]
    if parent.job_stopped:
        return
    if all(s in _TERMINAL for s in statuses):
        parent.job_started_at = min((c.job_started_at for c in children), default=datetime.now())
        parent.job_stopped = True
        parent.job_stopped_at = max(c.job_stopped_at for c in children)
        if all(s == JobStatus.SUCCEEDED for s in statuses):
            parent.status = JobStatus.SUCCEEDED
        else:
            parent.status = JobStatus.FAILED
            parent.job_stopped_reason = parent.job_stopped_reason or "one or more children failed"
    elif any(s not in (JobStatus.SUBMITTED, JobStatus.PENDING) for s in statuses):
        parent.status = JobStatus.PENDING


# -- process groups ---------------------------------------------------------------------------


def _exited(pid: int) -> bool:
    """Has our child `pid` exited? Without reaping it (WNOWAIT), so its pid stays ours."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):  # pragma: no cover - exotic libc
    _prctl = None


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the server dies without cleaning up (Linux)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
