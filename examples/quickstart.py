"""The same program under ProcessPoolExecutor and BatchExecutor, side by side.

    .venv/bin/python examples/quickstart.py [--workers N] [--tasks N] [--stack NAME]

With no stack configured BatchExecutor starts the embedded emulator: its workers are Batch
jobs run as local processes, reached through SQS and S3 exactly as on AWS. Pass --stack (or set
BATCHEXEC_STACK) to run the same code on a deployed stack.
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed


def count_primes(bounds):
    """CPU work that pickles to a few bytes: primes in [lo, hi)."""
    lo, hi = bounds
    return sum(1 for n in range(max(lo, 2), hi) if all(n % d for d in range(2, math.isqrt(n) + 1)))


def describe_error(x):
    if x == 3:
        raise ValueError("three is not allowed here")
    return x


def program(executor, tasks: int) -> dict:
    step = 20_000
    chunks = [(i * step, (i + 1) * step) for i in range(tasks)]
    started = time.perf_counter()
    primes = sum(executor.map(count_primes, chunks))
    mapped = time.perf_counter() - started
    futures = [executor.submit(describe_error, x) for x in range(5)]
    errors = [type(f.exception()).__name__ for f in as_completed(futures) if f.exception()]
    return {"primes": primes, "map_seconds": mapped, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--stack", default=None, help="run BatchExecutor on this deployed stack")
    args = parser.parse_args()

    from batchexec import BatchExecutor

    runs = {}
    with ProcessPoolExecutor(args.workers) as ex:
        runs["ProcessPoolExecutor"] = program(ex, args.tasks)
    started = time.perf_counter()
    with BatchExecutor(args.workers, stack=args.stack) as ex:
        ready = time.perf_counter() - started
        print(f"BatchExecutor ready in {ready:.1f} s: {ex!r}")
        runs["BatchExecutor"] = program(ex, args.tasks)

    print(f"\n{'executor':<22}{'primes found':>14}{'map time (s)':>14}  errors raised")
    for name, r in runs.items():
        print(f"{name:<22}{r['primes']:>14}{r['map_seconds']:>14.2f}  {r['errors']}")
    same = runs["ProcessPoolExecutor"]["primes"] == runs["BatchExecutor"]["primes"]
    print("\nidentical results:", same)
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
