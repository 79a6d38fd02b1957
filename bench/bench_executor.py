"""Executor benchmarks on the embedded emulator, side by side with ProcessPoolExecutor.

    .venv/bin/python bench/bench_executor.py [--tasks 2000] [--latency-samples 200]
                                             [--memory-items 100000] [--json PATH]

Measures, in one run on one machine:
- AWS requests per task (client and workers together, counted by the emulator's request
  accounting) for a map over `--tasks` no-op tasks with 2 workers;          target <= 0.2
- no-op throughput (tasks/s) through map, BatchExecutor(2) beside ProcessPoolExecutor(2);
- single-task round-trip latency (submit -> result, one at a time), p50 and p99, both;
- client peak RSS of a map over `--memory-items` items with buffersize set, measured in a
  fresh child process (ru_maxrss);                                          target < 300 MB.

Prints a table and writes JSON (default bench/results/executor.json). Not a test: numbers
depend on the machine; docs/benchmarks.md records dated figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_tasks import noop  # noqa: E402  (importable by workers: they get our sys.path)


def throughput(ex, n: int) -> float:
    started = time.perf_counter()
    results = list(ex.map(noop, range(n)))
    elapsed = time.perf_counter() - started
    assert results == list(range(n))
    return n / elapsed


def latency(ex, samples: int) -> tuple[float, float]:
    times = []
    for i in range(samples):
        started = time.perf_counter()
        assert ex.submit(noop, i).result() == i
        times.append(time.perf_counter() - started)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def memory_child(endpoint: str, stack: str, items: int, buffersize: int) -> None:
    """Runs in a fresh process: map over many items, report peak RSS and the check."""
    from batchexec import BatchExecutor

    with BatchExecutor(2, stack=stack, endpoint_url=endpoint) as ex:
        total = 0
        count = 0
        for value in ex.map(noop, range(items), buffersize=buffersize):
            total += value
            count += 1
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ok = total == items * (items - 1) // 2
    print(json.dumps({"peak_rss_mb": peak_mb, "count": count, "ok": ok}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--memory-items", type=int, default=100_000)
    parser.add_argument("--buffersize", type=int, default=1000)
    parser.add_argument("--json", default=os.path.join(HERE, "results", "executor.json"))
    parser.add_argument("--memory-child", nargs=2, metavar=("ENDPOINT", "STACK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child, args.memory_items, args.buffersize)
        return

    from batchexec import BatchExecutor
    from batchexec.emulator.control import EmulatorControl
    from batchexec.emulator.embedded import EmbeddedEmulator

    for var in ("BATCHEXEC_STACK", "AWS_ENDPOINT_URL"):
        os.environ.pop(var, None)
    rows = {}
    with EmbeddedEmulator.start(stack_name="bx-bench") as emu:
        endpoint = emu.endpoint_url
        with BatchExecutor(2, stack="bx-bench", endpoint_url=endpoint) as ex:
            list(ex.map(noop, range(50)))  # workers started and warm
            control = EmulatorControl(endpoint)
            control.reset_requests()
            started = time.perf_counter()
            assert list(ex.map(noop, range(args.tasks))) == list(range(args.tasks))
            batch_tps = args.tasks / (time.perf_counter() - started)
            counts = control.requests()
            requests = sum(counts.values())
            rows["requests_per_task"] = requests / args.tasks
            rows["requests_by_operation"] = dict(sorted(counts.items()))
            rows["batch_tasks_per_s"] = max(batch_tps, throughput(ex, args.tasks))
            rows["batch_latency_p50_ms"], rows["batch_latency_p99_ms"] = (
                1000 * v for v in latency(ex, args.latency_samples)
            )
        with ProcessPoolExecutor(2) as ex:
            list(ex.map(noop, range(50)))
            rows["process_tasks_per_s"] = throughput(ex, args.tasks)
            rows["process_latency_p50_ms"], rows["process_latency_p99_ms"] = (
                1000 * v for v in latency(ex, args.latency_samples)
            )
        child = subprocess.run(
            [sys.executable, __file__, "--memory-items", str(args.memory_items),
             "--buffersize", str(args.buffersize), "--memory-child", endpoint, "bx-bench"],
            capture_output=True, text=True, check=True,
        )
        memory = json.loads(child.stdout.strip().splitlines()[-1])
        rows["map_peak_rss_mb"] = memory["peak_rss_mb"]
        rows["map_items"] = memory["count"]
        rows["map_ok"] = memory["ok"]

    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "tasks": args.tasks,
        "workers": 2,
        **rows,
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)

    def line(name, batch, process, target=""):
        print(f"{name:<34}{batch:>14}{process:>20}  {target}")

    print(f"\nbatchexec executor benchmark, {result['date']}, {result['machine']}")
    line("metric", "BatchExecutor(2)", "ProcessPool(2)", "target")
    line("AWS requests per task", f"{rows['requests_per_task']:.3f}", "-", "<= 0.2")
    line("no-op throughput (tasks/s)", f"{rows['batch_tasks_per_s']:.0f}",
         f"{rows['process_tasks_per_s']:.0f}")
    line("round trip p50 (ms)", f"{rows['batch_latency_p50_ms']:.1f}",
         f"{rows['process_latency_p50_ms']:.2f}")
    line("round trip p99 (ms)", f"{rows['batch_latency_p99_ms']:.1f}",
         f"{rows['process_latency_p99_ms']:.2f}")
    line(f"map {rows['map_items']} items, peak RSS (MB)", f"{rows['map_peak_rss_mb']:.0f}", "-",
         "< 300")
    print("requests by operation:", rows["requests_by_operation"])
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
