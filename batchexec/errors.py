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
