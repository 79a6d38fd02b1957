"""Executor scale on the emulator: many no-op tasks on many workers.

    .venv/bin/python bench/bench_scale.py [--tasks 100000] [--workers 64]
                                          [--sweep 2,8,32,64] [--sweep-tasks 5000] [--json PATH]

Measures, in one run:
- the big run: ``--tasks`` no-op tasks through map (``--buffersize``, default none) on
  ``--workers`` workers:
  all resolve, AWS requests per task (target <= 0.05), client peak RSS (target < 300 MB, read
  in a fresh child process), wall time, and the Batch calls the monitor made (DescribeJobs and
  SubmitJob counts must not grow with the number of workers);
- the sweep: the client's own CPU time per task (user + system of this process, threads
  included) for ``--sweep-tasks`` tasks at each worker count, to show how the client's cost
  per task grows from 2 to 64 workers.

Every worker is a local process pair (supervisor and runner) on the emulator, so on a small
machine the workers, not the client, bound the throughput: the client figures are the point.
Prints a table and writes JSON (default bench/results/scale.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_tasks import noop  # noqa: E402  (importable by workers: they get our sys.path)


def run_child(endpoint: str, stack: str, tasks: int, workers: int, buffersize: int) -> None:
    """In a fresh process: one map, report wall time, client CPU, peak RSS and the check."""
    from batchexec import BatchExecutor

    with BatchExecutor(workers, stack=stack, endpoint_url=endpoint,
                       worker_idle_timeout=30) as ex:
        list(ex.map(noop, range(workers * 4)))  # every worker started
        cpu0 = time.process_time()
        started = time.perf_counter()
        total = count = 0
        for value in ex.map(noop, range(tasks), buffersize=buffersize or None):
            total += value
            count += 1
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    print(json.dumps({
        "tasks": count, "ok": total == tasks * (tasks - 1) // 2, "wall_s": wall,
        "client_cpu_s": cpu, "client_cpu_us_per_task": 1e6 * cpu / tasks,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def measure(endpoint: str, control, tasks: int, workers: int, buffersize: int) -> dict:
    control.reset_requests()
    out = subprocess.run(
        [sys.executable, __file__, "--child", endpoint, "bx-scale", str(tasks), str(workers),
         str(buffersize)],
        capture_output=True, text=True, check=True, timeout=3600,
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    counts = control.requests()
    row["workers"] = workers
    row["buffersize"] = buffersize or None
    row["requests_per_task"] = sum(counts.values()) / tasks
    row["batch_requests"] = {k: v for k, v in sorted(counts.items()) if k.startswith("batch.")}
    row["requests_by_operation"] = dict(sorted(counts.items()))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--sweep", default="2,8,32,64")
    parser.add_argument("--sweep-tasks", type=int, default=5000)
    parser.add_argument("--buffersize", type=int, default=0,
                        help="map's buffersize (0: none, a plain map as users write it)")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "scale.json"))
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        endpoint, stack, tasks, workers, buffersize = args.child
        run_child(endpoint, stack, int(tasks), int(workers), int(buffersize))
        return

    from batchexec.emulator.control import EmulatorControl
    from batchexec.emulator.embedded import EmbeddedEmulator

    for var in ("BATCHEXEC_STACK", "AWS_ENDPOINT_URL"):
        os.environ.pop(var, None)
    sweep = [int(w) for w in args.sweep.split(",") if w]
    with EmbeddedEmulator.start(stack_name="bx-scale") as emu:
        control = EmulatorControl(emu.endpoint_url)
        rows = [measure(emu.endpoint_url, control, args.sweep_tasks, w, args.buffersize)
                for w in sweep]
        big = measure(emu.endpoint_url, control, args.tasks, args.workers, args.buffersize)

    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "big_run": big,
        "sweep": rows,
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)

    print(f"\nbatchexec scale benchmark, {result['date']}, {result['machine']}")
    print(f"{'workers':>8}{'tasks':>9}{'ok':>5}{'wall s':>9}{'tasks/s':>9}{'req/task':>10}"
          f"{'client us/task':>16}{'client RSS MB':>15}  Batch calls")
    for r in [*rows, big]:
        print(f"{r['workers']:>8}{r['tasks']:>9}{str(r['ok']):>5}{r['wall_s']:>9.1f}"
              f"{r['tasks'] / r['wall_s']:>9.0f}{r['requests_per_task']:>10.4f}"
              f"{r['client_cpu_us_per_task']:>16.1f}{r['peak_rss_mb']:>15.0f}  "
              f"{r['batch_requests']}")
    print("targets (big run): all resolve, <= 0.05 requests/task, client RSS < 300 MB")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
