"""The worker's supervisor/runner split: what a task pays to cross it.

    .venv/bin/python bench/bench_worker.py [--tasks 3000] [--json PATH]

The supervisor never runs user code: it hands each task's pickled call to the runner child
over a socket and reads back the pickled result, attributing the runner's output to the task
on the way. This measures that cost for a no-op task, side by side in one run:

- in-process: what the single-process worker did per task: unpickle the arguments (callable
  cached), call, pickle the result;
- runner round trip: the same through RunnerProcess.run (frames over the control channel,
  the runner's unpickle/call/pickle, its stream flushes), plus the supervisor's output
  capture boundaries (OutputCapture.begin/end drain the pipes);
- supervisor task: Supervisor._run_task, everything the supervisor does per task short of
  SQS (payload lookup, runner round trip, capture, result entry).

for a small argument and a 100 KB one. The extra time per task over in-process is the
supervisor's cost. Prints a table and writes JSON (default bench/results/worker.json).
Not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date

import cloudpickle

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bench_tasks import noop  # noqa: E402  (the runner imports it by reference)

from batchexec.config import SessionSettings  # noqa: E402
from batchexec.protocol import TaskEntry, TaskMessage  # noqa: E402
from batchexec.serialization import digest, loads  # noqa: E402
from batchexec.worker.capture import OutputCapture  # noqa: E402
from batchexec.worker.process import Finished, RunnerProcess  # noqa: E402
from batchexec.worker.supervisor import Supervisor  # noqa: E402


class NullQueue:
    def send(self, bodies, session):
        pass


def in_process(fn_bytes: bytes, args_bytes: bytes, n: int) -> float:
    fn = loads(fn_bytes, "callable")
    started = time.perf_counter()
    for _ in range(n):
        args, kwargs = loads(args_bytes, "arguments")
        cloudpickle.dumps(fn(*args, **kwargs))
    return (time.perf_counter() - started) / n


def runner_round_trip(fn_bytes: bytes, args_bytes: bytes, n: int) -> float:
    capture = OutputCapture(64 * 1024, lambda line: None, echo=False)
    runner = RunnerProcess.start(capture)
    try:
        assert isinstance(runner.init("", b"", b"", 60), Finished)
        d = digest(fn_bytes)
        runner.run("warm", d, fn_bytes, args_bytes, 60)
        started = time.perf_counter()
        for i in range(n):
            capture.begin(str(i))
            outcome = runner.run(str(i), d, fn_bytes, args_bytes, 60)
            capture.end()
            assert isinstance(outcome, Finished) and outcome.ok
        return (time.perf_counter() - started) / n
    finally:
        runner.stop()


def supervisor_task(fn_bytes: bytes, args_bytes: bytes, n: int) -> float:
    settings = SessionSettings("s", "t", "r", "d", "b", "p/", inline_limit=1 << 20)
    sup = Supervisor(settings, "bench", NullQueue(), NullQueue(), NullQueue(), store=None)
    sup.capture.echo = False
    d = digest(fn_bytes)
    msg = TaskMessage("s", [], {d: fn_bytes})
    try:
        sup._ensure_runner()
        entry = TaskEntry("warm", fn=d, args=args_bytes)
        sup._run_task(msg, entry, 0)
        started = time.perf_counter()
        for i in range(n):
            result = sup._run_task(msg, TaskEntry(str(i), fn=d, args=args_bytes), 0)
            assert result.ok
        return (time.perf_counter() - started) / n
    finally:
        sup._stop_runner()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--json", default=os.path.join(HERE, "results", "worker.json"))
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join([HERE, os.path.dirname(HERE),
                                                os.environ.get("PYTHONPATH", "")])
    fn_bytes = cloudpickle.dumps(noop)
    rows = []
    for label, arg in (("small argument (int)", 7), ("100 KB argument", b"x" * 100_000)):
        args_bytes = cloudpickle.dumps(((arg,), {}))
        base = in_process(fn_bytes, args_bytes, args.tasks)
        trip = runner_round_trip(fn_bytes, args_bytes, args.tasks)
        full = supervisor_task(fn_bytes, args_bytes, args.tasks)
        rows.append({
            "payload": label,
            "in_process_us": base * 1e6,
            "runner_round_trip_us": trip * 1e6,
            "supervisor_task_us": full * 1e6,
            "supervisor_overhead_us": (full - base) * 1e6,
        })
    result = {
        "benchmark": "worker supervisor/runner crossing, no-op task",
        "date": date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
                   f"Python {platform.python_version()}",
        "tasks": args.tasks,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nbatchexec worker benchmark, {result['date']}, {result['machine']}, "
          f"{args.tasks} no-op tasks per cell (microseconds per task)\n")
    print(f"{'payload':<24}{'in-process':>12}{'runner trip':>14}{'supervisor':>12}"
          f"{'overhead':>11}")
    for r in rows:
        print(f"{r['payload']:<24}{r['in_process_us']:>12.1f}{r['runner_round_trip_us']:>14.1f}"
              f"{r['supervisor_task_us']:>12.1f}{r['supervisor_overhead_us']:>11.1f}")
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
