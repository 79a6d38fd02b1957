"""The worker's supervisor/runner split: what a task pays to cross it.

    .venv/bin/python bench/bench_worker.py [--tasks 3000] [--json PATH]

The supervisor never runs user code: it hands each task's pickled call to the runner child
over a socket and reads back the pickled result, attributing the runner's output to the task
on the way. This measures that cost for a no-op task, side by side in one run:

- in-process: what the single-process worker did per task: unpickle the arguments (callable
  cached), call, pickle the result;
- runner round trip: one task at a time through RunnerProcess.send_task/wait (frames over
  the control channel, the runner's unpickle/call/pickle, its stream flushes and boundary
  marks), plus the supervisor's output capture (OutputCapture.expect/finish);
- supervisor, one at a time: Supervisor._run_pack over a pack of all the tasks with
  PIPELINE_DEPTH 1 (each task sent once the last is back, as before pipelining);
- supervisor, pipelined: the same with PIPELINE_DEPTH as shipped: everything the supervisor
  does per task short of SQS (payload lookup, runner, capture, result entry).

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
from batchexec.worker import supervisor as supervisor_module  # noqa: E402
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
        started = 0.0
        for i in range(-1, n):  # task -1 warms up
            if i == 0:
                started = time.perf_counter()
            capture.expect(i, str(i))
            runner.send_task(i, str(i), d, fn_bytes, args_bytes)
            replies, ended = runner.wait(60)
            capture.finish(i)
            assert ended is None and len(replies) == 1 and replies[0].ok
        return (time.perf_counter() - started) / n
    finally:
        runner.stop()


def supervisor_task(fn_bytes: bytes, args_bytes: bytes, n: int, depth: int) -> float:
    settings = SessionSettings("s", "t", "r", "d", "b", "p/", inline_limit=1 << 20)
    sup = Supervisor(settings, "bench", NullQueue(), NullQueue(), NullQueue(), store=None)
    sup.capture.echo = False
    results = []  # (task id, ok): not the values, so memory stays flat whatever n is
    sup.outbox.add_result = lambda entry: results.append((entry.task_id, entry.ok))
    d = digest(fn_bytes)
    saved = supervisor_module.PIPELINE_DEPTH
    supervisor_module.PIPELINE_DEPTH = depth
    try:
        sup._ensure_runner()
        sup._run_pack(TaskMessage("s", [TaskEntry("warm", fn=d, args=args_bytes)],
                                  {d: fn_bytes}), 0, time.monotonic())  # fmt: skip
        pack = TaskMessage("s", [TaskEntry(str(i), fn=d, args=args_bytes) for i in range(n)],
                           {d: fn_bytes})  # fmt: skip
        results.clear()
        started = time.perf_counter()
        sup._run_pack(pack, 0, time.monotonic())
        elapsed = time.perf_counter() - started
        assert results == [(str(i), True) for i in range(n)]
        return elapsed / n
    finally:
        supervisor_module.PIPELINE_DEPTH = saved
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
        single = supervisor_task(fn_bytes, args_bytes, args.tasks, 1)
        full = supervisor_task(fn_bytes, args_bytes, args.tasks,
                               supervisor_module.PIPELINE_DEPTH)  # fmt: skip
        rows.append({
            "payload": label,
            "in_process_us": base * 1e6,
            "runner_round_trip_us": trip * 1e6,
            "supervisor_one_at_a_time_us": single * 1e6,
            "supervisor_task_us": full * 1e6,
            "supervisor_overhead_us": (full - base) * 1e6,
        })
    result = {
        "benchmark": "worker supervisor/runner crossing, no-op task",
        "date": date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
                   f"Python {platform.python_version()}",
        "load_average": os.getloadavg()[0],
        "tasks": args.tasks,
        "pipeline_depth": supervisor_module.PIPELINE_DEPTH,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nbatchexec worker benchmark, {result['date']}, {result['machine']}, load "
          f"{result['load_average']:.2f}, {args.tasks} no-op tasks per cell (microseconds "
          f"per task; pipelined: depth {result['pipeline_depth']})\n")
    print(f"{'payload':<24}{'in-process':>12}{'runner trip':>13}{'one at a time':>15}"
          f"{'pipelined':>11}{'overhead':>10}")
    for r in rows:
        print(f"{r['payload']:<24}{r['in_process_us']:>12.1f}{r['runner_round_trip_us']:>13.1f}"
              f"{r['supervisor_one_at_a_time_us']:>15.1f}{r['supervisor_task_us']:>11.1f}"
              f"{r['supervisor_overhead_us']:>10.1f}")
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
