"""The launcher and monitor within AWS Batch's limits (issue 8, defect 9; issue 9): arrays of
at most 10,000 children, DescribeJobs at most 100 jobs a call, and a monitor that backs off
when Batch throttles it. A fake Batch client records the calls; no emulator needed (the
emulator's Batch does not enforce these limits, AWS does)."""

from __future__ import annotations

import threading
import time

import botocore.exceptions

from batchexec.launcher import MAX_ARRAY_SIZE, BatchLauncher, WorkerMonitor


class FakeBatch:
    def __init__(self, throttle: int = 0):
        self.submitted: list[dict] = []
        self.described: list[list[str]] = []
        self.described_at: list[float] = []
        self.throttle = throttle
        self._lock = threading.Lock()

    def submit_job(self, **kwargs):
        with self._lock:
            self.submitted.append(kwargs)
            return {"jobId": f"job-{len(self.submitted)}"}

    def describe_jobs(self, jobs):
        with self._lock:
            self.described.append(list(jobs))
            self.described_at.append(time.monotonic())
            if self.throttle:
                self.throttle -= 1
                raise botocore.exceptions.ClientError(
                    {"Error": {"Code": "TooManyRequestsException", "Message": "slow down"}},
                    "DescribeJobs")
        return {"jobs": [{"jobId": j, "status": "RUNNING"} for j in jobs]}


def launcher(batch) -> BatchLauncher:
    return BatchLauncher(batch, "queue", "definition", "batchexec-s", {"A": "1"})


def test_more_workers_than_a_batch_array_holds_are_several_arrays():
    batch = FakeBatch()
    ids = launcher(batch).launch(2 * MAX_ARRAY_SIZE + 5)
    assert len(ids) == 3
    sizes = [j.get("arrayProperties", {}).get("size", 1) for j in batch.submitted]
    assert sizes == [MAX_ARRAY_SIZE, MAX_ARRAY_SIZE, 5]
    one = FakeBatch()
    launcher(one).launch(1)  # Batch arrays have at least two children: one worker is a job
    assert "arrayProperties" not in one.submitted[0]


def test_describe_jobs_goes_100_jobs_at_a_time():
    batch = FakeBatch()
    launch = launcher(batch)
    for _ in range(250):
        launch.launch(1)
    assert launch.counts().running == 250
    assert [len(call) for call in batch.described] == [100, 100, 50]


def test_the_monitor_backs_off_while_batch_throttles_it():
    batch = FakeBatch(throttle=4)
    launch = launcher(batch)
    monitor = WorkerMonitor(launch, 2, outstanding=lambda: 1, progress=lambda: 0,
                            on_broken=lambda e: None, interval=0.05, start_timeout=60,
                            failure_budget=5)
    monitor.start()
    try:
        deadline = time.monotonic() + 10
        while len(batch.described) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        monitor.stop()
        monitor.join(5)
    assert len(batch.described) >= 5, batch.described
    # After each of the four throttled rounds the wait doubled (at least 0.1, 0.2, 0.4, 0.8 s)
    # rather than hammering Batch every 0.05 s. (Lower bounds: load only lengthens them.)
    gaps = [b - a for a, b in zip(batch.described_at, batch.described_at[1:], strict=False)]
    for gap, least in zip(gaps, (0.1, 0.2, 0.4, 0.8), strict=False):
        assert gap >= least * 0.95, gaps
