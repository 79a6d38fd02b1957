"""Exception classes: each names what went wrong and says what to do about it.

They are specific classes rather than RuntimeError with a message so that callers can catch
exactly the failure they can handle (a missing stack, an unreachable endpoint, a task that
killed its workers) and let the rest propagate.
"""

from __future__ import annotations

import pickle
from concurrent.futures import BrokenExecutor


class BatchExecError(Exception):
    """Base class of every error batchexec raises itself."""


class ConfigurationError(BatchExecError):
    """The executor's settings are incomplete or contradict each other."""


class StackNotFoundError(ConfigurationError):
    """The named CloudFormation stack does not exist (or is not usable) in this region."""

    def __init__(self, stack: str, region: str | None = None, detail: str = ""):
        where = f" in region {region}" if region else ""
        msg = (
            f"CloudFormation stack {stack!r} was not found{where}; deploy it with "
            f"`batchexec stack deploy --name {stack} --wait`, or unset BATCHEXEC_STACK to run "
            f"on the embedded emulator"
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)
        self.stack = stack
        self.region = region


class EndpointUnreachableError(ConfigurationError):
    """Nothing answers at the AWS endpoint the executor was given."""

    def __init__(self, endpoint: str | None, detail: str = ""):
        target = endpoint or "the default AWS endpoints"
        msg = (
            f"cannot reach {target}: check the address (is `batchexec local` running?), "
            f"or unset AWS_ENDPOINT_URL to talk to AWS itself"
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)
        self.endpoint = endpoint


class SerializationError(BatchExecError, pickle.PicklingError):
    """A callable, argument, result or exception could not be pickled or unpickled.

    A pickle.PicklingError, as the standard executors raise, so ``except PicklingError``
    catches it.
    """


class SerializationTypeError(SerializationError, TypeError):
    """A SerializationError where pickle itself raised TypeError ("cannot pickle '_thread.lock'
    object"), so code written for ProcessPoolExecutor's ``except TypeError`` still catches it."""


class ExecutorAbortedError(BatchExecError):
    """The executor was stopped (Ctrl-C) while this task ran; its worker was terminated."""


class PayloadTooLargeError(BatchExecError):
    """A task's pickled payload is above the executor's max_payload_size."""


class TaskDeadLetteredError(BatchExecError):
    """A task's message went to the dead-letter queue: its worker died on every attempt."""

    def __init__(self, task_id: str, attempts: int, description: str = ""):
        what = f"task {task_id}" + (f" ({description})" if description else "")
        super().__init__(
            f"{what} was abandoned after {attempts} attempts: the worker running it died each "
            f"time (crash, out of memory, or killed) and its message was moved to the "
            f"dead-letter queue; run the function locally to see why, or raise max_attempts"
        )
        self.task_id = task_id
        self.attempts = attempts


class WorkersUnavailableError(BrokenExecutor, BatchExecError):
    """No worker can run: jobs failed, could not start, or the initializer raised.

    A subclass of concurrent.futures.BrokenExecutor, as ProcessPoolExecutor raises
    BrokenProcessPool, so code written for the standard library catches it unchanged.
    """


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback; set as __cause__ of a re-raised exception."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def describe_exit(status: int | None) -> str:
    """A process's exit status in words, as ``subprocess`` reports it (negative: a signal)."""
    if status is None:
        return "exit status unknown"
    if status < 0:
        try:
            import signal

            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


def _tail_text(output_tail: str) -> str:
    if not output_tail.strip():
        return "; it wrote nothing to stdout or stderr before"
    return "; the last lines it wrote:\n" + output_tail.rstrip("\n")


class TaskCrashedError(BatchExecError):
    """A task killed the worker process running it (segfault, os._exit, SIGKILL, out of
    memory) on each of its attempts.

    The worker survives this (its supervisor runs tasks in a child process, replaced after
    each crash); the task is retried in a fresh process until ``attempts`` reaches the
    executor's max_attempts. ``exit_status`` is the child's status as subprocess reports it
    (negative: killed by that signal); ``output_tail`` the last lines the task wrote.
    """

    def __init__(self, task_id: str, attempts: int, exit_status: int | None,
                 output_tail: str = ""):  # fmt: skip
        super().__init__(
            f"task {task_id} crashed the process running it ({describe_exit(exit_status)}) on "
            f"each of {attempts} attempt(s): run it locally to see why (a segfault in a native "
            f"library, os._exit, running out of memory), or raise max_attempts if it is flaky"
            + _tail_text(output_tail)
        )
        self.task_id = task_id
        self.attempts = attempts
        self.exit_status = exit_status
        self.output_tail = output_tail

    def __reduce__(self):
        return type(self), (self.task_id, self.attempts, self.exit_status, self.output_tail)


class InitializerCrashedError(BatchExecError):
    """The process that runs tasks died while importing the client's script or running the
    initializer (reported as the initializer's failure)."""

    def __init__(self, exit_status: int | None, output_tail: str = ""):
        super().__init__(
            f"the worker process crashed ({describe_exit(exit_status)}) while importing the "
            f"client's script or running the initializer: call the initializer locally to "
            f"see why" + _tail_text(output_tail)
        )
        self.exit_status = exit_status
        self.output_tail = output_tail

    def __reduce__(self):
        return type(self), (self.exit_status, self.output_tail)


class TaskTimeoutError(BatchExecError):
    """A task ran longer than max_task_seconds and was stopped (not retried).

    The bound exists because SQS keeps a received message invisible for at most 12 hours:
    a longer task would be handed to a second worker while the first still runs it.
    """

    def __init__(self, task_id: str, seconds: float, output_tail: str = ""):
        super().__init__(
            f"task {task_id} ran for more than max_task_seconds={seconds:g} s and was "
            f"stopped; it is not retried. SQS lets a worker hold a task for at most 12 hours, "
            f"so split the work into smaller tasks (each well under 12 hours)"
            + _tail_text(output_tail)
        )
        self.task_id = task_id
        self.seconds = seconds
        self.output_tail = output_tail

    def __reduce__(self):
        return type(self), (self.task_id, self.seconds, self.output_tail)
