"""Real worker processes (`python -m batchexec worker`) on the emulator's SQS and S3.

These tests drive workers directly: they create a session's queues, put task messages on
them exactly as a client would (packs included, which a client only forms under load), start
worker processes with the session's environment, and read what comes back on the result
queue. Tests that need the client's side too (output replayed with a prefix, a broken
executor) are in test_worker_executor.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import cloudpickle
import psutil
import pytest
import workerfuncs as wf
from conftest import TEST_STACK

from batchexec import protocol
from batchexec.aws import AwsClients, resolve_region
from batchexec.config import SessionSettings
from batchexec.errors import TaskCrashedError, TaskTimeoutError
from batchexec.protocol import ResultMessage, TaskEntry, TaskMessage, WorkerEvent
from batchexec.serialization import digest, loads
from batchexec.stack import describe_stack
from batchexec.transport import MessageQueue

pytestmark = pytest.mark.timeout(180)
TESTS = os.path.dirname(__file__)


def call(fn, *args):
    return cloudpickle.dumps(fn), cloudpickle.dumps((args, {}))


class DirectSession:
    """A session's queues without a client: send task messages, start workers, read back."""

    def __init__(self, endpoint: str, log_dir):
        self.endpoint = endpoint
        self.log_dir = log_dir
        self.clients = AwsClients(region=resolve_region(None, endpoint), endpoint_url=endpoint)
        self.stack = describe_stack(self.clients, TEST_STACK)
        self.sqs = self.clients.client("sqs")
        self.session = uuid.uuid4().hex[:12]
        self.urls = []
        self.workers: list[subprocess.Popen] = []
        self.messages: list = []  # decoded result-queue messages, in arrival order
        self.arrived: list[float] = []
        self._ids = iter(range(10**6))

    def create(self, visibility_timeout: int) -> None:
        name = f"{TEST_STACK}-{self.session}"
        attrs = {"VisibilityTimeout": str(visibility_timeout)}
        self.task_url = self.sqs.create_queue(QueueName=f"{name}-tasks", Attributes=attrs)[
            "QueueUrl"]
        self.result_url = self.sqs.create_queue(QueueName=f"{name}-results")["QueueUrl"]
        self.urls = [self.task_url, self.result_url]
        self.tasks = MessageQueue(self.sqs, self.task_url)
        self.results = MessageQueue(self.sqs, self.result_url)

    def settings(self, **kw) -> SessionSettings:
        kw.setdefault("visibility_timeout", 2)
        kw.setdefault("idle_timeout", 60)
        return SessionSettings(self.session, self.task_url, self.result_url,
                               self.stack.dead_letter_queue_url, self.stack.bucket,
                               f"sessions/{self.session}/", **kw)  # fmt: skip

    def start(self, n=1, **kw) -> list[subprocess.Popen]:
        settings = self.settings(**kw)
        env = {**os.environ, **settings.to_env(), **self.clients.worker_environment(),
               "PYTHONPATH": os.pathsep.join([TESTS, *sys.path]),
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        for _ in range(n):
            with open(os.path.join(self.log_dir, f"worker-{len(self.workers)}.log"), "wb") as log:
                self.workers.append(subprocess.Popen(
                    [sys.executable, "-m", "batchexec", "worker"], env=env, stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
        return self.workers[-n:]

    def send(self, *calls) -> list[str]:
        """One task message holding these calls; returns their task ids."""
        fns, entries = {}, []
        for fn, args in calls:
            fns[digest(fn)] = fn
            entries.append(TaskEntry(str(next(self._ids)), fn=digest(fn), args=args))
        self.tasks.send([TaskMessage(self.session, entries, fns).encode()], self.session)
        return [e.task_id for e in entries]

    def poll(self, until, timeout=60.0) -> None:
        """Read the result queue until until(self) is true."""
        deadline = time.monotonic() + timeout
        while not until(self):
            assert time.monotonic() < deadline, f"timed out; got {self.messages}"
            for m in self.results.receive(wait=1):
                self.messages.append(protocol.decode(m.body))
                self.arrived.append(time.monotonic())
                self.results.delete([m.receipt])

    def results_by_id(self) -> dict:
        out = {}
        for msg in self.messages:
            if isinstance(msg, ResultMessage):
                for e in msg.results:
                    value = loads(e.data, "result")
                    out.setdefault(e.task_id, []).append(
                        (e.ok, value if e.ok else value.rebuild()))
        return out

    def wait_results(self, ids, timeout=60.0) -> dict:
        self.poll(lambda s: all(i in s.results_by_id() for i in ids), timeout)
        return {i: self.results_by_id()[i][0] for i in ids}

    def close(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
        for url in self.urls:
            try:
                self.sqs.delete_queue(QueueUrl=url)
            except Exception:
                pass

    def log(self, i=0) -> str:
        with open(os.path.join(self.log_dir, f"worker-{i}.log"), "rb") as f:
            return f.read().decode(errors="replace")


@pytest.fixture
def direct(emulator, tmp_path):
    (tmp_path / "workers").mkdir()
    s = DirectSession(emulator.endpoint_url, str(tmp_path / "workers"))
    s.create(visibility_timeout=2)
    yield s
    s.close()


def runner_of(worker: subprocess.Popen) -> psutil.Process | None:
    for child in psutil.Process(worker.pid).children():
        if "batchexec.worker.runner" in " ".join(child.cmdline()):
            return child
    return None


def test_a_task_holding_the_gil_runs_exactly_once(direct, tmp_path):
    """The GIL-holding call stops the runner's threads, not the supervisor's heartbeat:
    with a 2 s visibility timeout and a second worker waiting, no one else runs it."""
    direct.start(2, visibility_timeout=2)
    (tid,) = direct.send(call(wf.hold_gil, "g", str(tmp_path), 8))
    assert direct.wait_results([tid], timeout=90)[tid] == (True, "g")
    time.sleep(3)  # a redelivery would have started a second run by now
    assert len(wf.runs(tmp_path, "g")) == 1


def test_a_stopped_runner_is_not_counted_dead(direct, tmp_path):
    (worker,) = direct.start(1, visibility_timeout=2)
    direct.start(1, visibility_timeout=2)  # a second worker that would take a redelivery
    (tid,) = direct.send(call(wf.pid_then_sleep, "s", str(tmp_path), 1))
    deadline = time.monotonic() + 60
    while not wf.runs(tmp_path, "s"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (pid,) = wf.runs(tmp_path, "s")
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(6)  # three visibility timeouts
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    finally:
        os.kill(pid, signal.SIGCONT)
    ok, (value, runner_pid) = direct.wait_results([tid])[tid]
    assert ok and value == "s" and runner_pid == pid
    assert len(wf.runs(tmp_path, "s")) == 1


def test_a_runner_that_exits_is_replaced_and_the_task_fails_after_max_attempts(direct,
                                                                               tmp_path):
    log = str(tmp_path)
    (worker,) = direct.start(1, max_attempts=2)
    ids = direct.send(call(wf.record, "a", log), call(wf.exit_hard, "b", log, 3),
                      call(wf.crash_first_run, "c", log, "segfault"),
                      call(wf.record, "d", log))
    got = direct.wait_results(ids)
    assert got[ids[0]] == (True, "a") and got[ids[3]] == (True, "d")
    assert got[ids[2]] == (True, "c")  # segfaulted once, succeeded on its retry
    ok, err = got[ids[1]]
    assert not ok and isinstance(err, TaskCrashedError)
    assert err.attempts == 2 and "exited with status 3" in str(err)
    assert "task b is about to exit with status 3" in str(err)
    # Pack-mates ran once each; the crashing tasks once per attempt, in fresh runners.
    assert [len(wf.runs(log, x)) for x in "abcd"] == [1, 2, 2, 1]
    assert len(set(wf.runs(log, "b"))) == 2
    assert worker.poll() is None  # the supervisor survived all of it
    assert len(direct.results_by_id()) == 4 and all(
        len(v) == 1 for v in direct.results_by_id().values())  # one result per task


def test_a_runner_death_is_seen_at_once_not_after_the_visibility_timeout(direct, tmp_path):
    direct.start(1, max_attempts=1, visibility_timeout=30)
    started = time.monotonic()
    (tid,) = direct.send(call(wf.segfault, "x", str(tmp_path)))
    ok, err = direct.wait_results([tid], timeout=25)[tid]
    assert isinstance(err, TaskCrashedError) and "killed by SIGSEGV" in str(err)
    assert time.monotonic() - started < 25  # well under the 30 s visibility timeout


def test_a_result_is_sent_while_its_pack_mate_still_runs(direct, tmp_path):
    direct.start(1)
    quick, slow = direct.send(call(wf.sleep_then, "quick", 0), call(wf.sleep_then, "slow", 4))
    direct.wait_results([quick, slow])
    arrival = {}
    for msg, at in zip(direct.messages, direct.arrived, strict=True):
        if isinstance(msg, ResultMessage):
            for e in msg.results:
                arrival[e.task_id] = at
    assert arrival[slow] - arrival[quick] > 2.5, arrival


def test_a_leaked_thread_and_process_do_not_keep_the_worker_alive(direct, tmp_path):
    (worker,) = direct.start(1, idle_timeout=2)
    (tid,) = direct.send(call(wf.leak, 1, str(tmp_path)))
    ok, (runner_pid, grandchild) = direct.wait_results([tid])[tid]
    assert ok
    assert worker.wait(timeout=30) == 0  # idle exit despite the non-daemon thread
    deadline = time.monotonic() + 10
    while psutil.pid_exists(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(runner_pid) and not psutil.pid_exists(grandchild)


def test_sigterm_takes_the_runner_and_its_leftovers_down(direct, tmp_path):
    (worker,) = direct.start(1)
    (tid,) = direct.send(call(wf.leak, 1, str(tmp_path)))
    ok, (runner_pid, grandchild) = direct.wait_results([tid])[tid]
    worker.send_signal(signal.SIGTERM)  # as Batch (and the emulator) stop a job
    assert worker.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while psutil.pid_exists(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(runner_pid) and not psutil.pid_exists(grandchild)


def test_a_sigkilled_supervisor_takes_its_runner_along(direct, tmp_path):
    (worker,) = direct.start(1)
    (tid,) = direct.send(call(wf.record, "x", str(tmp_path)))
    direct.wait_results([tid])
    runner = runner_of(worker)
    assert runner is not None
    worker.kill()
    worker.wait()
    runner.wait(timeout=10)  # PR_SET_PDEATHSIG


def test_the_first_message_is_started_and_protocol_mismatches_are_reported(direct, tmp_path):
    direct.start(1)
    body = TaskMessage(direct.session, [TaskEntry("old", fn="d", args=b"")],
                       {"d": cloudpickle.dumps(wf.record)}).encode()
    body = body.replace(f'"v":{protocol.PROTOCOL_VERSION}', '"v":1')
    direct.tasks.send([body], direct.session)
    direct.poll(lambda s: any(isinstance(m, WorkerEvent) and m.event == "protocol_mismatch"
                              for m in s.messages))  # fmt: skip
    first = direct.messages[0]
    assert isinstance(first, WorkerEvent) and first.event == "started"
    assert first.info["protocol"] == protocol.PROTOCOL_VERSION
    assert first.info["cloudpickle"] == cloudpickle.__version__
    (event,) = [m for m in direct.messages if getattr(m, "event", "") == "protocol_mismatch"]
    assert "version 1" in event.message and f"version {protocol.PROTOCOL_VERSION}" in event.message


def test_a_task_past_max_task_seconds_fails_once_and_is_not_redelivered(direct, tmp_path):
    log = str(tmp_path)
    direct.start(2, max_task_seconds=2, visibility_timeout=2)
    (tid,) = direct.send(call(wf.pid_then_sleep, "long", log, 60))
    ok, err = direct.wait_results([tid], timeout=60)[tid]
    assert isinstance(err, TaskTimeoutError) and "12 hours" in str(err)
    time.sleep(3)
    assert len(wf.runs(log, "long")) == 1 and len(direct.results_by_id()[tid]) == 1


def test_an_old_worker_takes_no_new_task_and_exits_0(direct, tmp_path):
    log = str(tmp_path)
    (worker,) = direct.start(1, max_task_seconds=2, job_timeout=4)
    (a,) = direct.send(call(wf.record, "a", log))
    assert direct.wait_results([a])[a] == (True, "a")
    assert worker.wait(timeout=30) == 0  # past job_timeout - max_task_seconds
    (b,) = direct.send(call(wf.record, "b", log))
    time.sleep(1)
    assert wf.runs(log, "b") == []  # nobody took it: the client would launch a new worker
    direct.start(1)
    assert direct.wait_results([b])[b] == (True, "b")


# -- a pack pipelined into the runner ----------------------------------------------------------
# The supervisor sends up to PIPELINE_DEPTH tasks of a message to the runner before the first
# result is back; output is attributed by the marks the runner writes, crashes and timeouts
# by the runner's order. These packs are larger than the depth, so tasks were queued behind.


def output_lines(direct) -> list:
    return [ln for m in direct.messages if isinstance(m, protocol.OutputMessage)
            for ln in m.lines]


def test_pipelined_output_lands_under_its_task_in_order_and_the_initializers_under_none(
        direct, tmp_path):
    key = f"sessions/{direct.session}/init"
    initializer = cloudpickle.dumps((print, ("the initializer speaks",)))
    direct.clients.client("s3").put_object(Bucket=direct.stack.bucket, Key=key,
                                           Body=initializer)
    direct.start(1, initializer_key=key, initializer_digest=digest(initializer))
    names = [f"t{i}" for i in range(20)]
    ids = direct.send(*[call(wf.chatty, name, 3) for name in names])
    got = direct.wait_results(ids)
    assert [got[i] for i in ids] == [(True, name) for name in names]
    direct.poll(lambda s: any(ln.task_id is None for ln in output_lines(s)))
    lines = output_lines(direct)
    assert [(ln.stream, ln.text) for ln in lines if ln.task_id is None] == [
        ("stdout", "the initializer speaks")]
    for task_id, name in zip(ids, names, strict=True):
        mine = [(ln.stream, ln.text) for ln in lines if ln.task_id == task_id]
        # Everything the task wrote, by every path, and nothing of any other task.
        assert sorted(mine) == sorted([("stdout", f"task {name} line {i}") for i in range(3)] + [
            ("stderr", f"task {name} to stderr"), ("stderr", f"task {name} via logging"),
            ("stdout", f"task {name} via fd 1"), ("stdout", f"task {name} via printf"),
            ("stdout", f"task {name} without newline")]), (name, mine)
        stdout = [text for stream, text in mine if stream == "stdout"]
        assert stdout.index(f"task {name} line 0") < stdout.index(f"task {name} line 1") < (
            stdout.index(f"task {name} line 2"))
    # A task's output is sent before its result.
    sent_at = {}
    for n, msg in enumerate(direct.messages):
        if isinstance(msg, protocol.OutputMessage):
            for ln in msg.lines:
                sent_at.setdefault(("line", ln.task_id), []).append(n)
        elif isinstance(msg, ResultMessage):
            for e in msg.results:
                sent_at[("result", e.task_id)] = [n]
    assert all(max(sent_at[("line", i)]) <= sent_at[("result", i)][0] for i in ids)
    assert "batchexec-" not in direct.log()  # the marks never reach the worker's log


def test_a_crash_in_a_pipelined_pack_charges_only_the_running_task(direct, tmp_path):
    log = str(tmp_path)
    (worker,) = direct.start(1, max_attempts=1)
    calls = [call(wf.record, f"r{i}", log) for i in range(12)]
    calls[3] = call(wf.exit_hard, "r3", log, 5)
    ids = direct.send(*calls)
    got = direct.wait_results(ids)
    ok, err = got[ids[3]]
    assert not ok and isinstance(err, TaskCrashedError) and err.attempts == 1
    assert "task r3 is about to exit with status 5" in err.output_tail
    # With max_attempts=1 a pack-mate charged for the crash would have failed: each of them
    # ran exactly once, the ones queued behind r3 in a fresh runner.
    assert all(got[ids[i]] == (True, f"r{i}") for i in range(12) if i != 3)
    assert all(len(wf.runs(log, f"r{i}")) == 1 for i in range(12))
    first, after = wf.runs(log, "r0")[0], wf.runs(log, "r4")[0]
    assert wf.runs(log, "r3") == [first] and after != first
    assert worker.poll() is None
    assert all(len(v) == 1 for v in direct.results_by_id().values())


def test_a_timeout_in_a_pipelined_pack_fails_only_the_running_task(direct, tmp_path):
    log = str(tmp_path)
    direct.start(1, max_task_seconds=2)
    ids = direct.send(call(wf.record, "a", log), call(wf.pid_then_sleep, "long", log, 60),
                      *[call(wf.record, f"q{i}", log) for i in range(10)])
    got = direct.wait_results(ids, timeout=60)
    ok, err = got[ids[1]]
    assert not ok and isinstance(err, TaskTimeoutError) and "max_task_seconds=2" in str(err)
    assert got[ids[0]] == (True, "a")
    assert all(got[ids[2 + i]] == (True, f"q{i}") for i in range(10))
    assert all(len(wf.runs(log, f"q{i}")) == 1 for i in range(10))  # queued, not charged
    assert wf.runs(log, "q0") != wf.runs(log, "long")  # in the fresh runner
