"""dask on BatchExecutor beside ProcessPoolExecutor: graphs, and the round trip under them.

    .venv/bin/python bench/bench_dask.py [--leaves 2000] [--array-size 1600] [--chunk 50]
                                         [--latency-samples 200] [--rounds 1] [--json PATH]
                                         [--chunk-sweep 50,100,200,400]

Measures, in one run on one machine, BatchExecutor(2) on the embedded emulator and
ProcessPoolExecutor(2), round-robin over `--rounds` rounds (medians; each executor goes first
in every other round), both warm:
- a dask.delayed graph of about 2 x `--leaves` tiny tasks (inc on each leaf, then a pairwise
  add tree), ``dask.compute(total, scheduler=ex)``;        target: within 10x of the pool
- a dask.array map_overlap graph (a 3 x 3 box filter, depth 1, reflect boundary) over a
  `--array-size` square float64 array in `--chunk` square chunks (1,024 chunks of 20 KB by
  default, so they travel inline; dask makes about 15 tasks of each chunk: creation, halo
  slices, concatenation, filter, trim, partial sums), reduced with .sum(), on new random
  data each round (the same on both executors): workers keep the arrays they received, and a
  graph run again on the same data would find them there;
                                                           target: no slower than the pool
  (and the ratio within each round: its spread shows how far one comparison can be trusted
  on a shared machine);
- the AWS requests each BatchExecutor graph cost (client and workers, counted by the emulator);
- single-task round trip (submit -> result, one at a time), p50 and p99;
                                                           target: p50 <= 8 ms on the emulator
- where the BatchExecutor round trip goes: every AWS call the client makes is timed through
  botocore's event hooks, each sample is split into dispatch wait, SendMessageBatch, the
  worker leg (task received, run, result sent, collector's long poll returning) and the
  client's resolution; beside it, the floor the emulator itself sets: the same four SQS calls
  (send, receive, send back, receive) ping-ponged by two threads of plain boto3, no batchexec;
- with `--chunk-sweep 50,100,200,400`: the same map_overlap over the same array in each chunk
  size, both executors alternating: how each executor's time, and their ratio, move with the
  chunk size (per-task costs fall with larger chunks, per-byte costs do not);
- the bytes the client's SQS calls carried during the map_overlap graph on BatchExecutor, and
  the time plain boto3 takes to move its task bytes through the emulator once each way, in
  the fewest calls SQS allows (sent, received back, deleted; results not included): a floor
  under any SQS-based executor on this machine, beside the pool's time for the whole graph.

Prints a table and writes JSON (default bench/results/bench_dask.json). Not a test: numbers
depend on the machine; docs/benchmarks.md records dated figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_tasks import noop  # noqa: E402  (importable by workers: they get our sys.path)

from batchexec.protocol import SQS_MESSAGE_LIMIT  # noqa: E402

STACK = "bx-bench"


# -- task functions (workers import them from the module bench_dask; see the end) -------------


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def smooth(block):
    """3 x 3 box mean of the block's interior (map_overlap gives it a 1-pixel halo)."""
    out = block.copy()
    h, w = block.shape
    out[1:-1, 1:-1] = sum(
        block[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
    ) / 9.0
    return out


# -- the graphs --------------------------------------------------------------------------------


def delayed_graph(leaves: int):
    import dask

    level = [dask.delayed(inc)(i) for i in range(leaves)]
    while len(level) > 1:
        pairs = [dask.delayed(add)(a, b) for a, b in zip(level[::2], level[1::2], strict=False)]
        if len(level) % 2:
            pairs.append(level[-1])
        level = pairs
    return level[0], leaves * (leaves + 1) // 2


def overlap_graph(size: int, chunk: int, seed: int = 0):
    """Fresh data for each seed: workers keep the arrays they received (buffer_cache_bytes),
    so a graph run again on the same data would find them there, which no new job does."""
    import dask.array as da

    x = da.random.RandomState(seed).random_sample((size, size), chunks=(chunk, chunk))
    return x.map_overlap(smooth, depth=1, boundary="reflect").sum()


def graph_tasks(collection) -> tuple[int, object]:
    """Tasks dask actually schedules (after its graph optimisation), counted on a run with
    its synchronous scheduler, and that run's value (the reference result)."""
    import dask
    from dask.callbacks import Callback

    count = 0

    def pretask(key, dsk, state):
        nonlocal count
        count += 1

    with Callback(pretask=pretask):
        (value,) = dask.compute(collection, scheduler="sync")
    return count, value


def timed_compute(collection, ex) -> tuple[float, object]:
    import dask

    started = time.perf_counter()
    (value,) = dask.compute(collection, scheduler=ex)
    return time.perf_counter() - started, value


def chunk_sweep(executors: dict, size: int, chunks: list[int], rounds: int) -> list[dict]:
    """map_overlap over one ``size`` square array in each chunk size, every executor in turn
    (round-robin over ``rounds``, medians), each result checked against dask's own."""
    rows = []
    for chunk in chunks:
        seconds: dict[str, list[float]] = {name: [] for name in executors}
        order = list(executors.items())
        for i in range(rounds):
            graph = overlap_graph(size, chunk, seed=1000 + i)  # new data each round
            tasks, expected = graph_tasks(graph)
            for name, ex in order if i % 2 == 0 else order[::-1]:
                t, value = timed_compute(graph, ex)
                assert abs(value - expected) <= 1e-9 * abs(expected), (name, chunk, value)
                seconds[name].append(t)
        row = {"chunk": chunk, "chunk_kb": chunk * chunk * 8 / 1024,
               "chunks": (size // chunk) ** 2, "tasks": tasks}
        row.update({f"{name}_s": statistics.median(t) for name, t in seconds.items()})
        row["ratio"] = row["batch_s"] / row["process_s"]
        rows.append(row)
    return rows


def latency(ex, samples: int, record=None) -> list[float]:
    times = []
    for i in range(samples):
        started = time.perf_counter()
        assert ex.submit(noop, i).result() == i
        ended = time.perf_counter()
        times.append(ended - started)
        if record is not None:
            record.append((started, ended))
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- where the round trip goes -----------------------------------------------------------------


class CallTimer:
    """Times every call a botocore client makes (before-call .. after-call), with its thread."""

    def __init__(self):
        self.calls: list[tuple[str, str, float, float, int]] = []
        self._local = threading.local()

    def attach(self, client) -> None:
        client.meta.events.register("before-call.*.*", self._before)
        client.meta.events.register("after-call.*.*", self._after)

    def _before(self, model, **_):
        self._local.started = time.perf_counter()

    def _after(self, model, parsed, **_):
        ended = time.perf_counter()
        started = getattr(self._local, "started", None)
        if started is None:  # a call that was already in flight when attach() ran
            return
        self._local.started = None
        n = len(parsed.get("Messages", []) or []) if isinstance(parsed, dict) else 0
        self.calls.append(
            (model.name, threading.current_thread().name, started, ended, n)
        )


class ByteCounter:
    """Bytes a botocore client's requests carried, and its responses, while attached."""

    def __init__(self):
        self.calls = self.sent = self.received = 0

    def attach(self, client) -> None:
        client.meta.events.register("before-send.sqs.*", self._sent)
        client.meta.events.register("after-call.sqs.*", self._received)

    def detach(self, client) -> None:
        client.meta.events.unregister("before-send.sqs.*", self._sent)
        client.meta.events.unregister("after-call.sqs.*", self._received)

    def _sent(self, request, **_):
        self.calls += 1
        self.sent += len(request.body or b"")

    def _received(self, http_response, **_):
        self.received += len(http_response.content or b"")


def split_round_trips(samples, calls) -> dict:
    """Each sample's dispatch wait, send call, worker leg and resolution (ms, medians)."""
    sends = sorted((c for c in calls if c[0] == "SendMessageBatch"), key=lambda c: c[2])
    receives = sorted((c for c in calls if c[0] == "ReceiveMessage" and c[4]),
                      key=lambda c: c[3])
    parts: dict[str, list[float]] = {"dispatch wait (submit -> SendMessageBatch)": [],
                                     "SendMessageBatch call": [],
                                     "worker leg (sent -> result received)": [],
                                     "resolution (received -> result() returns)": [],
                                     "collector ReceiveMessage call (returning the result)": []}
    for started, ended in samples:
        send = next((c for c in sends if c[2] >= started), None)
        recv = next((c for c in reversed(receives) if c[3] <= ended), None)
        if send is None or recv is None or not (started <= send[2] <= recv[3] <= ended):
            continue
        parts["dispatch wait (submit -> SendMessageBatch)"].append(send[2] - started)
        parts["SendMessageBatch call"].append(send[3] - send[2])
        parts["worker leg (sent -> result received)"].append(recv[3] - send[3])
        parts["resolution (received -> result() returns)"].append(ended - recv[3])
        parts["collector ReceiveMessage call (returning the result)"].append(recv[3] - recv[2])
    out = {k: 1000 * statistics.median(v) for k, v in parts.items() if v}
    out["samples split"] = len(parts["SendMessageBatch call"])
    ops: dict[str, list[float]] = {}
    for name, thread, s, e, _ in calls:
        ops.setdefault(f"{name} ({thread})", []).append(e - s)
    out["client calls during the samples (count, median ms)"] = {
        k: [len(v), round(1000 * statistics.median(v), 2)] for k, v in sorted(ops.items())
    }
    return out


def plain_sqs(endpoint: str):
    """A plain boto3 SQS client on the emulator (dummy credentials), no batchexec."""
    import boto3

    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                 region_name="us-east-1").client("sqs", endpoint_url=endpoint)


def sqs_floor(endpoint: str, samples: int) -> dict:
    """Plain boto3 on the emulator: one call's latency, and the four-call ping-pong that a
    task's round trip needs at least (send task, worker receives, sends result, client
    receives), with long polls waiting on both sides as batchexec's do."""
    import uuid

    sqs, peer = plain_sqs(endpoint), plain_sqs(endpoint)
    tag = uuid.uuid4().hex[:8]
    q_task = sqs.create_queue(QueueName=f"bench-floor-task-{tag}")["QueueUrl"]
    q_result = sqs.create_queue(QueueName=f"bench-floor-result-{tag}")["QueueUrl"]
    stop = threading.Event()

    def echo():
        while not stop.is_set():
            got = peer.receive_message(QueueUrl=q_task, WaitTimeSeconds=1,
                                       MaxNumberOfMessages=10).get("Messages", [])
            for m in got:
                peer.send_message(QueueUrl=q_result, MessageBody=m["Body"])
                peer.delete_message(QueueUrl=q_task, ReceiptHandle=m["ReceiptHandle"])

    worker = threading.Thread(target=echo, daemon=True)
    worker.start()
    try:
        single = []
        for _ in range(samples):
            started = time.perf_counter()
            sqs.get_queue_attributes(QueueUrl=q_task, AttributeNames=["QueueArn"])
            single.append(time.perf_counter() - started)
        chain = []
        for i in range(samples):
            started = time.perf_counter()
            sqs.send_message(QueueUrl=q_task, MessageBody=str(i))
            while True:
                got = sqs.receive_message(QueueUrl=q_result, WaitTimeSeconds=5,
                                          MaxNumberOfMessages=10).get("Messages", [])
                if got:
                    break
            chain.append(time.perf_counter() - started)
            sqs.delete_message(QueueUrl=q_result, ReceiptHandle=got[0]["ReceiptHandle"])
    finally:
        stop.set()
        worker.join()
        sqs.delete_queue(QueueUrl=q_task)
        sqs.delete_queue(QueueUrl=q_result)
    return {
        "one SQS call, p50 (ms)": 1000 * statistics.median(single),
        "four-call ping-pong, p50 (ms)": 1000 * statistics.median(chain),
        "four-call ping-pong, p99 (ms)": 1000 * percentile(chain, 0.99),
    }


def traffic_floor(endpoint: str, server_pid: int, task_bytes: int) -> dict:
    """Plain boto3 moving ``task_bytes`` through the emulator once each way in the fewest
    calls SQS allows (batches of 10 messages filling its 1 MiB limit): sent, received
    back, deleted, one call after another. Also the emulator server's CPU time for it: the
    server is one process, so that time is spent one core at a time whoever makes the calls."""
    import uuid

    import psutil

    server = psutil.Process(server_pid)
    sqs = plain_sqs(endpoint)
    url = sqs.create_queue(QueueName=f"bench-traffic-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    body = "x" * (SQS_MESSAGE_LIMIT // 10 - 1000)  # a call's 10 messages fill its limit
    sends = max(1, task_bytes // (10 * len(body)))
    started, server_cpu = time.perf_counter(), sum(server.cpu_times()[:2])
    try:
        for _ in range(sends):
            sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(j), "MessageBody": body} for j in range(10)])
            got = []
            while len(got) < 10:
                got += sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1).get("Messages", [])
            sqs.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(got)])
        elapsed = time.perf_counter() - started
        server_cpu = sum(server.cpu_times()[:2]) - server_cpu
    finally:
        sqs.delete_queue(QueueUrl=url)
    return {"task MB moved each way": sends * 10 * len(body) / 1e6, "calls": 3 * sends,
            "seconds": elapsed, "server_cpu_seconds": server_cpu}


# -- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaves", type=int, default=2000)
    parser.add_argument("--array-size", type=int, default=1600)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1,
                        help="round-robin repetitions (the map_overlap graph on BatchExecutor "
                             "takes minutes on a 2-core machine)")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "bench_dask.json"))
    parser.add_argument("--chunk-sweep", default="",
                        help="comma-separated chunk sizes: map_overlap over the same array in "
                             "each, both executors (none by default)")
    args = parser.parse_args()
    sweep_chunks = [int(c) for c in args.chunk_sweep.split(",") if c.strip()]

    import dask
    import numpy as np

    from batchexec import BatchExecutor
    from batchexec.emulator.control import EmulatorControl
    from batchexec.emulator.embedded import EmbeddedEmulator

    for var in ("BATCHEXEC_STACK", "AWS_ENDPOINT_URL"):
        os.environ.pop(var, None)

    delayed, delayed_expected = delayed_graph(args.leaves)
    delayed_tasks, value = graph_tasks(delayed)
    assert value == delayed_expected, value
    sizes = {"delayed_tasks": delayed_tasks, "overlap_chunks": (args.array_size // args.chunk) ** 2}

    times: dict[str, dict[str, list[float]]] = {
        name: {"delayed": [], "overlap": [], "latency": []} for name in ("batch", "process")
    }
    requests: dict[str, dict[str, int]] = {}
    with EmbeddedEmulator.start(stack_name=STACK) as emu:
        control = EmulatorControl(emu.endpoint_url)
        started = time.perf_counter()
        batch = BatchExecutor(2, stack=STACK, endpoint_url=emu.endpoint_url)
        batch.submit(noop, 0).result()
        batch_start_s = time.perf_counter() - started
        process = ProcessPoolExecutor(2)
        executors = {"batch": batch, "process": process}
        try:
            for ex in executors.values():  # warm: workers up, script and dask imported
                dask.compute(delayed_graph(50)[0], overlap_graph(200, 100), scheduler=ex)
            # Each executor goes first in every other round: whatever the machine does over
            # a minute (another tenant, a cache) falls on both alike.
            order = list(executors.items())
            for i in range(args.rounds):
                # The same data on both executors in a round, new data each round.
                overlap = overlap_graph(args.array_size, args.chunk, seed=i + 1)
                sizes["overlap_tasks"], overlap_expected = graph_tasks(overlap)
                for name, ex in order if i % 2 == 0 else order[::-1]:
                    control.reset_requests()
                    t, value = timed_compute(delayed, ex)
                    assert value == delayed_expected, (name, value)
                    times[name]["delayed"].append(t)
                    if name == "batch":
                        requests["delayed"] = dict(sorted(control.requests().items()))
                    control.reset_requests()
                    if name == "batch":
                        traffic = ByteCounter()
                        traffic.attach(batch._clients.client("sqs"))
                    t, value = timed_compute(overlap, ex)
                    if name == "batch":
                        traffic.detach(batch._clients.client("sqs"))
                    assert np.isclose(value, overlap_expected, rtol=1e-9), (name, value)
                    times[name]["overlap"].append(t)
                    if name == "batch":
                        requests["overlap"] = dict(sorted(control.requests().items()))
                    times[name]["latency"].extend(latency(ex, args.latency_samples))

            timer = CallTimer()
            timer.attach(batch._clients.client("sqs"))
            samples: list[tuple[float, float]] = []
            latency(batch, args.latency_samples, record=samples)
            profile = split_round_trips(samples, timer.calls)
            floor = sqs_floor(emu.endpoint_url, args.latency_samples)
            overlap_floor = traffic_floor(emu.endpoint_url, emu.pid, traffic.sent)
            sweep = chunk_sweep(executors, args.array_size, sweep_chunks, args.rounds)
        finally:
            process.shutdown()
            batch.shutdown()

    rows = {}
    for name, t in times.items():
        rows[f"{name}_delayed_s"] = statistics.median(t["delayed"])
        rows[f"{name}_overlap_s"] = statistics.median(t["overlap"])
        rows[f"{name}_latency_p50_ms"] = 1000 * statistics.median(t["latency"])
        rows[f"{name}_latency_p99_ms"] = 1000 * percentile(t["latency"], 0.99)
    rows["delayed_ratio"] = rows["batch_delayed_s"] / rows["process_delayed_s"]
    rows["overlap_ratio"] = rows["batch_overlap_s"] / rows["process_overlap_s"]
    # The same graph on both executors within one round, minutes apart at most: the spread of
    # these says how far one comparison on this (shared, noisy) machine can be trusted.
    round_ratios = [b / p for b, p in zip(times["batch"]["overlap"], times["process"]["overlap"],
                                          strict=True)]
    rows["overlap_round_ratios"] = round_ratios
    result = {
        "date": datetime.now(UTC).isoformat(timespec="minutes"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}, dask {dask.__version__}",
        "load_average": os.getloadavg(),
        "workers": 2,
        "rounds": args.rounds,
        "latency_samples_per_round": args.latency_samples,
        "array": {"size": args.array_size, "chunk": args.chunk, "dtype": "float64"},
        "batch_start_s": batch_start_s,
        "dask_max_workers_seen": batch._max_workers,
        **sizes,
        **rows,
        "batch_requests_by_operation": requests,
        "raw_s": times,
        "round_trip_profile": profile,
        "emulator_floor": floor,
        "overlap_client_traffic": {"calls": traffic.calls, "sent_bytes": traffic.sent,
                                   "received_bytes": traffic.received},
        "overlap_traffic_floor": overlap_floor,
        "chunk_sweep": sweep,
    }
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)

    def line(name, b, p, ratio="", target=""):
        print(f"{name:<44}{b:>12}{p:>16}{ratio:>10}  {target}")

    print(f"\ndask on batchexec, {result['date']}, {result['machine']}, "
          f"load {result['load_average'][0]:.1f}, {args.rounds} rounds (medians)")
    line("metric", "Batch(2)", "ProcessPool(2)", "ratio", "target")
    line(f"dask.delayed, {sizes['delayed_tasks']} tasks (s)", f"{rows['batch_delayed_s']:.2f}",
         f"{rows['process_delayed_s']:.2f}", f"{rows['delayed_ratio']:.1f}x", "<= 10x")
    line(f"map_overlap, {sizes['overlap_chunks']} chunks, {sizes['overlap_tasks']} tasks (s)",
         f"{rows['batch_overlap_s']:.2f}", f"{rows['process_overlap_s']:.2f}",
         f"{rows['overlap_ratio']:.2f}x", "<= 1x")
    print(f"  map_overlap per round (same round, batch / pool): median "
          f"{statistics.median(round_ratios):.2f}x, {min(round_ratios):.2f}-"
          f"{max(round_ratios):.2f}x, {sum(r <= 1 for r in round_ratios)} of "
          f"{len(round_ratios)} rounds at or under 1x")
    line("round trip p50 (ms)", f"{rows['batch_latency_p50_ms']:.1f}",
         f"{rows['process_latency_p50_ms']:.2f}", "", "<= 8 ms")
    line("round trip p99 (ms)", f"{rows['batch_latency_p99_ms']:.1f}",
         f"{rows['process_latency_p99_ms']:.2f}")
    for graph, counts in requests.items():
        total = sum(counts.values())
        print(f"BatchExecutor AWS requests, {graph}: {total} "
              f"({total / sizes[graph + '_tasks']:.2f} per task) {counts}")
    print(f"\nBatchExecutor round trip, split (medians over {profile['samples split']} "
          f"samples, ms):")
    for k, v in profile.items():
        if isinstance(v, float):
            print(f"  {k:<56}{v:8.2f}")
    print("  client SQS calls during those samples [count, median ms]:")
    for k, v in profile["client calls during the samples (count, median ms)"].items():
        print(f"    {k:<54}{v}")
    print("emulator floor, plain boto3 (ms):")
    for k, v in floor.items():
        print(f"  {k:<56}{v:8.2f}")
    print(f"map_overlap on BatchExecutor, the client's SQS traffic (last round): "
          f"{traffic.calls} calls, {traffic.sent / 1e6:.0f} MB sent, "
          f"{traffic.received / 1e6:.0f} MB received")
    print(f"  its task bytes moved once each way through the emulator by plain boto3: "
          f"{overlap_floor['seconds']:.2f} s ({overlap_floor['calls']} calls; the server's "
          f"CPU {overlap_floor['server_cpu_seconds']:.2f} s), against "
          f"{rows['process_overlap_s']:.2f} s for the whole graph on ProcessPool(2)")
    if sweep:
        print(f"\nmap_overlap over the same {args.array_size} x {args.array_size} array, by chunk "
              f"size ({args.rounds} rounds, medians):")
        print(f"{'chunk':>8}{'KB':>8}{'chunks':>8}{'tasks':>8}{'Batch(2) s':>12}"
              f"{'Pool(2) s':>12}{'ratio':>8}")
        for r in sweep:
            print(f"{r['chunk']:>8}{r['chunk_kb']:>8.0f}{r['chunks']:>8}{r['tasks']:>8}"
                  f"{r['batch_s']:>12.2f}{r['process_s']:>12.2f}{r['ratio']:>7.2f}x")
    print(f"written to {args.json}")


if __name__ == "__main__":
    # Run as the importable module `bench_dask` (bench/ is on sys.path, which workers get), so
    # the task functions above travel by reference under that name, whichever script
    # semantics the worker implements.
    import bench_dask

    bench_dask.main()
