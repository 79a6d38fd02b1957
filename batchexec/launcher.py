"""Workers as AWS Batch jobs: launch them, keep enough alive, notice when none can run.

``BatchLauncher`` is the only code that talks to Batch. It submits one array job of N children
(a plain job when N is 1: Batch arrays have at least two children) to the stack's job queue
and job definition, with the session's settings as container environment overrides, and
terminates everything it submitted at shutdown.

``WorkerMonitor`` is a thread that, while tasks are outstanding, checks the jobs' status every
``monitor_interval`` seconds and:
- launches replacements when fewer workers are alive than there is work for (a worker that
  was killed, crashed, or exited after its idle timeout);
- declares the executor broken (``WorkersUnavailableError``, a ``BrokenExecutor``) when
  workers keep failing without any task being resolved in between, or when work has waited
  ``start_timeout`` seconds with no worker running, at any time in the session (a compute
  environment with no capacity leaves jobs RUNNABLE forever; replacements of idle-exited
  workers can too). The error quotes Batch's status reason. Nothing waits forever.

The monitor's cost does not grow with the fleet: one DescribeJobs call per 100 launched
*jobs* (an array job of up to 10,000 children is one), and throttling doubles its interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import botocore.exceptions

from .aws import error_code
from .errors import WorkersUnavailableError
from .threads import ServiceThread

log = logging.getLogger(__name__)

_THROTTLING_CODES = {"TooManyRequestsException", "ThrottlingException", "Throttling"}

ALIVE_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
WAITING_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING")
#: DescribeJobs accepts at most this many job ids a call.
_DESCRIBE_LIMIT = 100
#: AWS Batch's largest array job: more workers are launched as several array jobs.
MAX_ARRAY_SIZE = 10_000
#: Longest interval between checks when Batch keeps throttling the monitor.
_MAX_BACKOFF_SECONDS = 60.0


@dataclass
class WorkerCounts:
    """Children of all launched jobs, by Batch status."""

    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def alive(self) -> int:
        return sum(self.by_status.get(s, 0) for s in ALIVE_STATES)

    @property
    def running(self) -> int:
        return self.by_status.get("RUNNING", 0)

    @property
    def failed(self) -> int:
        return self.by_status.get("FAILED", 0)


class BatchLauncher:
    def __init__(self, batch, job_queue: str, job_definition: str, job_name: str,
                 environment: dict[str, str]):
        self.batch = batch
        self.job_queue = job_queue
        self.job_definition = job_definition
        self.job_name = job_name
        self.environment = environment
        self.jobs: list[str] = []
        self._lock = threading.Lock()

    def launch(self, n: int) -> list[str]:
        """Submit n workers as array jobs of at most MAX_ARRAY_SIZE; returns their ids."""
        ids = []
        while n > 0:
            size = min(n, MAX_ARRAY_SIZE)
            ids.append(self._submit(size))
            n -= size
        return ids

    def _submit(self, n: int) -> str:
        kwargs = dict(
            jobName=f"{self.job_name}-{len(self.jobs)}",
            jobQueue=self.job_queue,
            jobDefinition=self.job_definition,
            containerOverrides={
                "environment": [{"name": k, "value": v} for k, v in self.environment.items()]
            },
            tags={"batchexec:job": self.job_name},
            propagateTags=True,
        )
        if n >= 2:
            kwargs["arrayProperties"] = {"size": n}
        try:
            job_id = self.batch.submit_job(**kwargs)["jobId"]
        except botocore.exceptions.ClientError as exc:
            raise WorkersUnavailableError(
                f"AWS Batch refused to start workers on job queue {self.job_queue}: {exc}; "
                f"check that the stack is deployed and its job queue is ENABLED "
                f"(`batchexec stack status`)"
            ) from exc
        with self._lock:
            self.jobs.append(job_id)
        log.info("launched %d worker(s) as Batch job %s", n, job_id)
        return job_id

    def counts(self) -> WorkerCounts:
        with self._lock:
            jobs = list(self.jobs)
        counts = WorkerCounts()
        for i in range(0, len(jobs), _DESCRIBE_LIMIT):
            for job in self.batch.describe_jobs(jobs=jobs[i : i + _DESCRIBE_LIMIT])["jobs"]:
                summary = (job.get("arrayProperties") or {}).get("statusSummary")
                if summary:
                    for status, n in summary.items():
                        counts.by_status[status] = counts.by_status.get(status, 0) + n
                else:
                    status = job["status"]
                    counts.by_status[status] = counts.by_status.get(status, 0) + 1
        return counts

    def waiting_reason(self) -> str:
        """Why launched workers are not running, as Batch says (statusReason of a waiting
        job or array child), e.g. a compute environment without capacity."""
        with self._lock:
            jobs = list(reversed(self.jobs))
        for job_id in jobs[:_DESCRIBE_LIMIT]:
            try:
                job = self.batch.describe_jobs(jobs=[job_id])["jobs"][0]
                if job.get("arrayProperties", {}).get("size"):
                    for status in ("RUNNABLE", "STARTING", "PENDING", "SUBMITTED"):
                        kids = self.batch.list_jobs(arrayJobId=job_id, jobStatus=status)
                        kids = kids.get("jobSummaryList", [])
                        if kids:
                            job = self.batch.describe_jobs(jobs=[kids[0]["jobId"]])["jobs"][0]
                            break
                    else:
                        continue
                elif job["status"] not in WAITING_STATES:
                    continue
            except (botocore.exceptions.ClientError, IndexError, KeyError):
                continue
            reason = job.get("statusReason") or "Batch gave no status reason"
            return f"job {job['jobId']} is {job['status']}: {reason}"
        return "no waiting worker job found"

    def failure_reason(self) -> str:
        """Why the most recent failed worker failed, as Batch reports it."""
        with self._lock:
            jobs = list(reversed(self.jobs))
        for job_id in jobs:
            try:
                job = self.batch.describe_jobs(jobs=[job_id])["jobs"][0]
                if job.get("arrayProperties", {}).get("size"):
                    children = self.batch.list_jobs(arrayJobId=job_id, jobStatus="FAILED")
                    failed = children.get("jobSummaryList", [])
                    if not failed:
                        continue
                    job = self.batch.describe_jobs(jobs=[failed[0]["jobId"]])["jobs"][0]
                elif job["status"] != "FAILED":
                    continue
            except (botocore.exceptions.ClientError, IndexError, KeyError):
                continue
            container = job.get("container", {})
            parts = [f"job {job['jobId']}: {job.get('statusReason', 'no reason given')}"]
            if container.get("exitCode") is not None:
                parts.append(f"exit code {container['exitCode']}")
            if container.get("logStreamName"):
                parts.append(f"log stream {container['logStreamName']}")
            return ", ".join(parts)
        return "no failed worker job found"

    def terminate(self) -> None:
        with self._lock:
            jobs = list(self.jobs)
        for job_id in jobs:
            try:
                self.batch.terminate_job(jobId=job_id, reason="batchexec executor shut down")
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                log.warning("terminating worker job %s failed: %s", job_id, exc)


class WorkerMonitor(ServiceThread):
    def __init__(
        self,
        launcher: BatchLauncher,
        max_workers: int,
        outstanding: Callable[[], int],
        progress: Callable[[], int],
        on_broken: Callable[[BaseException], None],
        interval: float,
        start_timeout: float,
        failure_budget: int,
    ):
        super().__init__("batchexec-monitor", on_broken)
        self.launcher = launcher
        self.max_workers = max_workers
        self.outstanding = outstanding
        self.progress = progress
        self.interval = interval
        self.start_timeout = start_timeout
        self.failure_budget = failure_budget
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._launched_at: float | None = None
        self._waiting_since: float | None = None
        self._saw_work = False
        self._progress_at_wait = 0
        self._seen_failed = 0
        self._streak = 0
        self._progress_mark = 0

    def poke(self) -> None:
        """New work arrived. Check now when the fleet may be short of it (nothing launched
        yet, or the last round saw no work, so workers may have idle-exited); otherwise the
        next round comes soon enough. So a stream of submits (dask submits one task at a time)
        costs one DescribeJobs per interval, not one per submit."""
        if self._launched_at is None or not self._saw_work:
            self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def serve(self) -> None:
        interval = self.interval
        while not self._stopping.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                work = self.outstanding()
                self._saw_work = bool(work)
                if work and self._check():
                    return
                interval = self.interval
            except WorkersUnavailableError as exc:
                self.on_broken(exc)
                return
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) in _THROTTLING_CODES:
                    interval = min(_MAX_BACKOFF_SECONDS, interval * 2)
                log.warning("checking worker jobs failed: %s", exc)
            except botocore.exceptions.BotoCoreError as exc:
                log.warning("checking worker jobs failed: %s", exc)

    def _check(self) -> bool:
        """One round; True when the executor is broken and the monitor should stop."""
        now = time.monotonic()
        if self._launched_at is None:
            self.launcher.launch(self.max_workers)
            self._launched_at = now
            self._waiting_since = now
            return False
        counts = self.launcher.counts()
        progress = self.progress()
        if progress != self._progress_mark:
            self._progress_mark = progress
            self._streak = 0
        new_failures = counts.failed - self._seen_failed
        self._seen_failed = counts.failed
        self._streak += new_failures
        if self._streak >= self.failure_budget:
            self.on_broken(WorkersUnavailableError(
                f"{self._streak} worker jobs failed with no task completing in between; the "
                f"last: {self.launcher.failure_reason()}. Check the job's log stream and the "
                f"worker image (`batchexec worker` must start)"
            ))
            return True
        if counts.running:
            self._waiting_since = None
        elif self._waiting_since is None or progress != self._progress_at_wait:
            self._waiting_since, self._progress_at_wait = now, progress  # the clock starts
        elif now - self._waiting_since > self.start_timeout:
            self.on_broken(WorkersUnavailableError(
                f"work waited {now - self._waiting_since:.0f} s with no worker running "
                f"(start_timeout={self.start_timeout:.0f} s; jobs by status: "
                f"{counts.by_status}); {self.launcher.waiting_reason()}. Check the compute "
                f"environment's capacity and instance types (`batchexec stack status`)"
            ))
            return True
        wanted = min(self.max_workers, self.outstanding())
        if counts.alive < wanted:
            log.info("%d worker(s) alive for %d outstanding task(s): launching %d more",
                     counts.alive, self.outstanding(), wanted - counts.alive)
            self.launcher.launch(wanted - counts.alive)
        return False
