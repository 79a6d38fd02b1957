"""Settings: what a client chooses, and what a worker is told through its environment.

``SessionSettings`` is the contract between the executor and its workers. The launcher passes
it as container environment overrides and the worker reads it back with ``from_env``; every
variable is listed in docs/protocol.md. Nothing else reaches a worker.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, fields

from .errors import ConfigurationError

KiB = 1024
MiB = 1024 * KiB

#: Pickled task payloads up to this size travel inline in the message; larger ones go to S3.
#: Inline saves three S3 requests a task (put, get, delete); a message still packs several
#: tasks under SQS's 1 MiB. Equal to serialization's BLOB_THRESHOLD: array data below it, which
#: tasks do not share through S3, fits inline beside small arguments.
DEFAULT_INLINE_LIMIT = 256 * KiB
#: Largest inline_limit: a callable and arguments of this size each, base64-encoded (4/3),
#: still fit one message.
MAX_INLINE_LIMIT = 352 * KiB
#: Largest pickled task accepted. Beyond it, sending the data through the queue is the wrong
#: tool: put it in S3 yourself and pass its URI.
DEFAULT_MAX_PAYLOAD_SIZE = 100 * MiB
#: Seconds a received task stays invisible to other workers. The worker's heartbeat extends it
#: every third of this while the task runs, so it bounds how long a dead worker's tasks wait
#: before another worker retries them, not how long a task may run.
DEFAULT_VISIBILITY_TIMEOUT = 60
#: Receives of one task message before it is moved to the dead-letter queue and its future
#: fails (a task that kills its worker every time must not be retried forever).
DEFAULT_MAX_ATTEMPTS = 3
#: A worker with no task for this many seconds exits, so an abandoned session stops costing.
DEFAULT_IDLE_TIMEOUT = 120
#: Task messages in flight per worker: one running and one waiting keeps a worker busy without
#: queueing work that a free worker elsewhere could take.
DEFAULT_MESSAGES_PER_WORKER = 2
#: Seconds between checks of the workers' Batch job status.
DEFAULT_MONITOR_INTERVAL = 5.0
#: Seconds launched workers may take to reach RUNNING before the executor gives up (an
#: instance type with no capacity would otherwise leave jobs RUNNABLE forever).
DEFAULT_START_TIMEOUT = 900.0

#: Longest a task may run. SQS keeps a received message invisible for at most 12 hours from
#: its receipt, so a task that could run longer would be handed to a second worker while the
#: first still ran it. Past this the worker stops the task and fails it (TaskTimeoutError).
DEFAULT_MAX_TASK_SECONDS = 41400  # 11.5 hours
#: SQS's ceiling on a message's invisibility, counted from its receipt (seconds).
SQS_MAX_VISIBILITY = 12 * 3600
#: The stack's Batch job timeout (templates: JobTimeoutSeconds). A worker older than
#: job_timeout - max_task_seconds takes no new task, so Batch never kills one mid-run.
DEFAULT_JOB_TIMEOUT = 86400
#: Bytes of stdout/stderr forwarded to the client per task (0: none); the rest stays in the
#: worker's log. Bounded so a chatty task cannot flood the result queue.
DEFAULT_OUTPUT_LIMIT = 64 * KiB
#: Upper bound on output_limit: output travels in SQS messages of at most 1 MiB each.
MAX_OUTPUT_LIMIT = 16 * MiB
#: Tasks in flight per worker offered to clients that size their own concurrency from the
#: executor (dask reads ``_max_workers``): a round trip through SQS takes tens of ms, so tiny
#: tasks need many in flight to keep workers busy, and then they pack several to a message.
#: Measured on a dask.delayed graph of 4,000 tiny tasks (bench/bench_dask.py): 16 -> 12 s,
#: 64 -> 5 s, 128 -> 3-5 s, 256 -> 2.3 s, against 1 s on ProcessPoolExecutor(2). Measured
#: again on map_overlap over 1,024 chunks (15,002 tasks) once messages could carry 1 MiB
#: (2026-11-25, BatchExecutor(2), two runs each): 64 -> 10.1-10.6 s, 128 -> 8.0-9.0 s,
#: 256 -> 8.0-8.3 s, 512 -> 7.5-7.7 s, 1024 -> 7.0-7.6 s, 2048 and 4096 no better: more
#: ready tasks in flight share more messages. 512 takes most of that gain, while an error
#: in one task of a dask graph (dask stops waiting, the tasks already sent still run) wastes
#: at most 512 tasks per worker.
DEFAULT_TASKS_PER_WORKER_HINT = 512

#: Bytes of argument buffers each worker keeps from the task messages it received, so the
#: client can name a buffer that every worker holds instead of sending it again (0: off).
#: dask passes one chunk to tasks that become ready at different times: map_overlap over
#: 1,024 chunks sent each chunk in five messages on average. Workers run on GPU instances
#: with tens of GiB; the client deems "recent" half of this (held.py).
DEFAULT_BUFFER_CACHE_BYTES = 128 * MiB
#: Upper bound on buffer_cache_bytes (per worker process).
MAX_BUFFER_CACHE_BYTES = 16 * 1024 * MiB

#: Environment variable of each SessionSettings field, as the worker reads it.
ENV_PREFIX = "BATCHEXEC_"


@dataclass(frozen=True)
class SessionSettings:
    """Everything a worker needs to serve one executor session."""

    session: str
    task_queue_url: str
    result_queue_url: str
    dead_letter_queue_url: str
    bucket: str
    prefix: str
    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    inline_limit: int = DEFAULT_INLINE_LIMIT
    initializer_key: str = ""
    #: See DEFAULT_MAX_TASK_SECONDS / DEFAULT_JOB_TIMEOUT / DEFAULT_OUTPUT_LIMIT.
    max_task_seconds: float = DEFAULT_MAX_TASK_SECONDS
    job_timeout: float = DEFAULT_JOB_TIMEOUT
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    #: The client's Python (major.minor) and cloudpickle versions; empty: not checked. A
    #: worker whose own differ reports "version_mismatch" and runs nothing.
    client_python: str = ""
    client_cloudpickle: str = ""
    #: The client's main script, as multiprocessing's spawn sees it: its absolute path, the S3
    #: key (full, like initializer_key) of a copy of its source, and protocol.script_digest
    #: of that source. Empty when the client has no script (interactive, -c).
    main_path: str = ""
    main_key: str = ""
    main_digest: str = ""
    #: Digest of the pickled initializer at initializer_key: checked before it is unpickled.
    initializer_digest: str = ""
    #: The session's HMAC key (hex): every message is signed with it and checked before it is
    #: decoded. It reaches workers only through their job's environment (never S3 or a
    #: queue), which another session's task code cannot read.
    session_key: str = ""
    #: See DEFAULT_BUFFER_CACHE_BYTES; 0 (keep nothing) for settings that do not name it.
    buffer_cache_bytes: int = 0

    def __post_init__(self):
        if not 0 < self.max_task_seconds < SQS_MAX_VISIBILITY:
            raise ConfigurationError(
                f"max_task_seconds must be above 0 and below SQS's 12-hour limit "
                f"({SQS_MAX_VISIBILITY} s), got {self.max_task_seconds!r}"
            )
        if not self.job_timeout > self.max_task_seconds:
            raise ConfigurationError(
                f"job_timeout ({self.job_timeout!r} s) must exceed max_task_seconds "
                f"({self.max_task_seconds!r} s): a worker takes no task it could not finish "
                f"before Batch's job timeout"
            )
        if not 0 <= self.output_limit <= MAX_OUTPUT_LIMIT:
            raise ConfigurationError(
                f"output_limit must be in [0, {MAX_OUTPUT_LIMIT}] bytes, got {self.output_limit!r}"
            )

    @property
    def key(self) -> bytes | None:
        return bytes.fromhex(self.session_key) if self.session_key else None

    def __repr__(self) -> str:  # never print the key (logs, tracebacks)
        return f"SessionSettings(session={self.session!r}, ...)"

    @staticmethod
    def env_name(field_name: str) -> str:
        return ENV_PREFIX + field_name.upper()

    def to_env(self) -> dict[str, str]:
        return {self.env_name(k): str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> SessionSettings:
        env = os.environ if env is None else env
        values = {}
        missing = []
        for f in fields(cls):
            name = cls.env_name(f.name)
            if name in env:
                values[f.name] = _cast(f.type, env[name])
            elif f.default is MISSING:
                missing.append(name)
        if missing:
            raise ConfigurationError(
                "this process is not a batchexec worker session: missing environment "
                f"variables {', '.join(missing)} (the executor's launcher sets them)"
            )
        return cls(**values)


def _cast(kind: str, raw: str):
    """Field types are strings here (postponed annotations): int, float or str."""
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    return raw


@dataclass(frozen=True)
class ExecutorOptions:
    """The executor's tuning knobs; see BatchExecutor's docstring for each."""

    visibility_timeout: int = DEFAULT_VISIBILITY_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    worker_idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    inline_limit: int = DEFAULT_INLINE_LIMIT
    max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE
    messages_per_worker: int = DEFAULT_MESSAGES_PER_WORKER
    monitor_interval: float = DEFAULT_MONITOR_INTERVAL
    start_timeout: float = DEFAULT_START_TIMEOUT
    max_task_seconds: float = DEFAULT_MAX_TASK_SECONDS
    forward_output: bool = True
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    tasks_per_worker_hint: int = DEFAULT_TASKS_PER_WORKER_HINT
    buffer_cache_bytes: int = DEFAULT_BUFFER_CACHE_BYTES

    def __post_init__(self):
        # (kind, low, high, why the bounds): checked here so that a value AWS would refuse
        # fails when the executor is built, not deep inside a retry loop.
        checks = {
            "visibility_timeout": (int, 1, SQS_MAX_VISIBILITY, "SQS VisibilityTimeout, seconds"),
            "max_attempts": (int, 1, 999, "the redrive policy's maxReceiveCount is at most "
                                          "1000 and is max_attempts + 1"),
            "worker_idle_timeout": (float, 1, 86400, "seconds"),
            "inline_limit": (int, 0, MAX_INLINE_LIMIT, "bytes; a message is at most 1 MiB"),
            "max_payload_size": (int, 1, 5 * 1024**4, "bytes; an S3 object is at most 5 TiB"),
            "messages_per_worker": (int, 1, 100, "task messages in flight per worker"),
            "monitor_interval": (float, 0.1, 3600, "seconds"),
            "start_timeout": (float, 1, 7 * 86400, "seconds"),
            "max_task_seconds": (float, 1, DEFAULT_MAX_TASK_SECONDS,
                                 "seconds; SQS hides a received message at most 12 hours"),
            "output_limit": (int, 0, MAX_OUTPUT_LIMIT, "bytes of output per task"),
            "tasks_per_worker_hint": (int, 1, 10_000, "tasks in flight per worker"),
            "buffer_cache_bytes": (int, 0, MAX_BUFFER_CACHE_BYTES,
                                   "bytes of argument buffers each worker keeps"),
        }
        for name, (kind, lo, hi, why) in checks.items():
            value = getattr(self, name)
            ok_type = (isinstance(value, int) if kind is int else isinstance(value, (int, float)))
            if isinstance(value, bool) or not ok_type or not lo <= value <= hi:
                what = "an integer" if kind is int else "a number"
                raise ConfigurationError(
                    f"{name} must be {what} in [{lo}, {hi}] ({why}), got {value!r}"
                )
        if not isinstance(self.forward_output, bool):
            raise ConfigurationError(
                f"forward_output must be True or False, got {self.forward_output!r}"
            )


def fit_max_task_seconds(requested: float, job_timeout: float, stack: str) -> float:
    """The task limit a session of `stack` runs with: a worker takes no task it could not
    finish before Batch's job timeout, so a limit at or above that timeout would starve
    every task. The default limit is halved to fit a stack with a short timeout (workers then
    take tasks in the first half of their life, and are replaced); a limit the user chose
    that cannot fit is an error."""
    if requested < job_timeout:
        return requested
    if requested == DEFAULT_MAX_TASK_SECONDS:
        return job_timeout / 2
    raise ConfigurationError(
        f"max_task_seconds={requested:g} does not fit stack {stack!r}'s job timeout "
        f"({job_timeout:g} s, its JobTimeoutSeconds parameter): no worker could take such a "
        f"task. Pass a max_task_seconds below {job_timeout:g}, or raise JobTimeoutSeconds "
        f"with `batchexec stack update --name {stack} --parameter JobTimeoutSeconds=...`"
    )
