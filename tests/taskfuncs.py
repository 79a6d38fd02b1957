"""Module-level task functions shared by the executor tests.

They live in a module (not in the test files) so ProcessPoolExecutor can pickle them by
reference; BatchExecutor's workers import this module too (the embedded emulator gives them the
client's sys.path).
"""

from __future__ import annotations

import os
import signal
import threading
import time

_state = {"init": None}


def square(x):
    return x * x


def add(x, y=0, *, z=0):
    return x + y + z


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x


def slow_pid(x, delay=0.2):
    time.sleep(delay)
    return x, os.getpid()


def record_then(x, log_dir, delay=0.0):
    """Append this run to log_dir/<x> (to count attempts), then return x."""
    with open(os.path.join(log_dir, str(x)), "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(delay)
    return x


def kill_worker_on(x, bad, log_dir):
    """Record the attempt; task `bad` kills its whole worker every time: the supervisor (our
    parent), which takes this runner process along, so its message is redelivered. (A task
    that kills only its own process is retried by the supervisor: TaskCrashedError.)"""
    record_then(x, log_dir)
    if x == bad:
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(60)  # PR_SET_PDEATHSIG ends us within moments
    return x


def set_state(value):
    _state["init"] = value


def get_state(_=None):
    return _state["init"]


def init_raises(message):
    raise RuntimeError(message)


def return_lock(_=None):
    return threading.Lock()


class UnpicklableError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable(_=None):
    raise UnpicklableError("carries a lock")


def nbytes(blob):
    return len(blob)


def identity(x):
    return x


def bump_and_sum(array, i):
    """Changes its argument in place: each task must have its own copy of a shared array."""
    array += i
    return float(array.sum())


def same_and_bumped(a, b):
    """Whether two arguments are one object, and whether changing one changes the other."""
    a += 1
    return a is b, bool((a == b).all())


def bump_first_byte(data: bytearray):
    data[0] += 1
    return data[0]


def tagged(tag, x):
    return tag, x


def kill_worker_once(marker):
    """The first run kills its whole worker (the supervisor, our parent: its message is
    redelivered to a replacement); later runs return the worker's name."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(60)  # PR_SET_PDEATHSIG ends us within moments
    return os.environ.get("AWS_BATCH_JOB_ID", "")
