"""batchexec: a concurrent.futures Executor whose workers are AWS Batch jobs.

    from batchexec import BatchExecutor

    with BatchExecutor() as ex:          # embedded emulator when no stack is configured
        results = list(ex.map(f, items))
"""

from .errors import (
    BatchExecError,
    ConfigurationError,
    EndpointUnreachableError,
    PayloadTooLargeError,
    SerializationError,
    StackNotFoundError,
    TaskDeadLetteredError,
    WorkersUnavailableError,
)
from .executor import BatchExecutor

__all__ = [
    "BatchExecutor",
    "BatchExecError",
    "ConfigurationError",
    "EndpointUnreachableError",
    "PayloadTooLargeError",
    "SerializationError",
    "StackNotFoundError",
    "TaskDeadLetteredError",
    "WorkersUnavailableError",
]
__version__ = "0.1.0"
