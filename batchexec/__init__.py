"""batchexec: a concurrent.futures Executor whose workers are AWS Batch jobs.

    from batchexec import BatchExecutor

    with BatchExecutor() as ex:          # embedded emulator when no stack is configured
        results = list(ex.map(f, items))
"""

from .errors import (
    BatchExecError,
    ConfigurationError,
    EndpointUnreachableError,
    ExecutorAbortedError,
    InitializerCrashedError,
    PayloadTooLargeError,
    SerializationError,
    SerializationTypeError,
    StackNotFoundError,
    TaskCrashedError,
    TaskDeadLetteredError,
    TaskTimeoutError,
    WorkersUnavailableError,
)
from .executor import BatchExecutor
from .protocol import ProtocolError

__all__ = [
    "BatchExecutor",
    "BatchExecError",
    "ConfigurationError",
    "EndpointUnreachableError",
    "ExecutorAbortedError",
    "InitializerCrashedError",
    "ProtocolError",
    "PayloadTooLargeError",
    "SerializationError",
    "SerializationTypeError",
    "StackNotFoundError",
    "TaskCrashedError",
    "TaskDeadLetteredError",
    "TaskTimeoutError",
    "WorkersUnavailableError",
]
__version__ = "0.1.0"
