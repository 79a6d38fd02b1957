"""Task functions that misbehave the way real tasks do, for the worker tests.

Module-level (importable by reference in the worker's runner, which gets the tests directory
on its path). Attempts are counted in files, one line per run, so a test can tell "ran once"
from "ran twice" whatever process ran it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time


def record(x, log_dir, delay=0.0):
    """Append this run's pid to log_dir/<x>, sleep delay seconds, return x."""
    with open(os.path.join(log_dir, str(x)), "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(delay)
    return x


def runs(log_dir, x) -> list[int]:
    """The pids that ran task x so far (one per run)."""
    path = os.path.join(log_dir, str(x))
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(p) for p in f.read().split()]


def hold_gil(x, log_dir, seconds):
    """Record, then sleep in C without releasing the GIL (a PyDLL call keeps it)."""
    record(x, log_dir)
    libc = ctypes.PyDLL(ctypes.util.find_library("c"))
    libc.sleep(int(seconds))
    return x


def exit_hard(x, log_dir, code=3):
    """Record, say something, then end the process at once (no cleanup, no exception)."""
    record(x, log_dir)
    print(f"task {x} is about to exit with status {code}", flush=True)
    os._exit(code)


def segfault(x, log_dir):
    record(x, log_dir)
    print(f"task {x} is about to dereference NULL", flush=True)
    ctypes.string_at(0)


def crash_first_run(x, log_dir, how="segfault"):
    """Crash on the first run only (counted in log_dir), then succeed."""
    first = not runs(log_dir, x)
    record(x, log_dir)
    if first:
        if how == "segfault":
            ctypes.string_at(0)
        elif how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    return x


def init_count(log_dir):
    """An initializer that counts its runs (one per runner process)."""
    record("init", log_dir)


def leak(x, marker_dir):
    """Leave a non-daemon thread and a grandchild process behind; returns their pids."""
    threading.Thread(target=time.sleep, args=(3600,), name="leaked", daemon=False).start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    with open(os.path.join(marker_dir, "pids"), "w") as f:
        f.write(f"{os.getpid()} {child.pid}\n")
    return os.getpid(), child.pid


def chatty(x, lines=3):
    """Write through every path a task has: print, stderr, logging, warnings-like, os.write
    on fd 1, and C stdio (printf buffered in libc)."""
    for i in range(lines):
        print(f"task {x} line {i}")
    print(f"task {x} to stderr", file=sys.stderr)
    logging.getLogger("chatty").warning("task %s via logging", x)
    os.write(1, f"task {x} via fd 1\n".encode())
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.printf(f"task {x} via printf\n".encode())
    sys.stdout.write(f"task {x} without newline")
    return x


def flood(x, n, width=100):
    """Print n lines of width characters."""
    for i in range(n):
        print(f"{i:06d} " + "x" * (width - 7))
    return x


def sleep_then(x, seconds):
    time.sleep(seconds)
    return x


def pid_then_sleep(x, log_dir, seconds):
    record(x, log_dir)
    time.sleep(seconds)
    return x, os.getpid()
