"""Unhappy paths: killed workers, poison tasks, a failing initializer, workers that cannot
start, throttling, and configuration that points nowhere. Each ends in a clear error or the
right result, never a hang."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import time

import pytest
import taskfuncs as tf

from batchexec import (
    BatchExecutor,
    EndpointUnreachableError,
    StackNotFoundError,
    TaskDeadLetteredError,
    WorkersUnavailableError,
)


def attempts(log_dir, x) -> int:
    path = os.path.join(log_dir, str(x))
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return len(f.read().split())


def test_worker_killed_mid_run_loses_nothing(make_executor, tmp_path):
    ex = make_executor(2, visibility_timeout=2)
    futures = [ex.submit(tf.record_then, i, str(tmp_path), 0.15) for i in range(40)]
    # Wait until some work is done, then SIGKILL a worker that is busy with a task.
    cf.wait(futures[:3], timeout=60)
    busy = None
    deadline = time.monotonic() + 30
    while busy is None and time.monotonic() < deadline:
        pids = set()
        for i in range(40):
            p = tmp_path / str(i)
            if p.exists():
                pids.update(int(line) for line in p.read_text().split())
        pending = [f for f in futures if not f.done()]
        if pids and pending:
            busy = next(iter(pids))
    assert busy is not None
    os.kill(busy, signal.SIGKILL)
    assert [f.result(timeout=120) for f in futures] == list(range(40))
    # Every task ran at least once; the killed worker's task ran again elsewhere.
    assert all(attempts(tmp_path, i) >= 1 for i in range(40))


def test_poison_task_fails_after_max_attempts_others_succeed(make_executor, tmp_path):
    ex = make_executor(2, max_attempts=2, visibility_timeout=2)
    futures = [ex.submit(tf.kill_worker_on, i, 5, str(tmp_path)) for i in range(12)]
    for i, f in enumerate(futures):
        if i == 5:
            err = f.exception(timeout=180)
            assert isinstance(err, TaskDeadLetteredError), err
            assert err.attempts == 2 and "task " in str(err) and "kill_worker_on" in str(err)
        else:
            assert f.result(timeout=180) == i
    assert attempts(tmp_path, 5) == 2


def test_initializer_failure_breaks_the_executor(make_executor, caplog):
    ex = make_executor(1, initializer=tf.init_raises, initargs=("no GPU here",))
    f = ex.submit(tf.square, 2)
    err = f.exception(timeout=120)
    # Logged at CRITICAL with the remote traceback, as ProcessPoolExecutor does.
    (record,) = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert "initializer" in record.getMessage()
    assert "no GPU here" in str(record.exc_info[1].__cause__)
    assert isinstance(err, WorkersUnavailableError)
    assert isinstance(err, cf.BrokenExecutor)
    assert "initializer raised" in str(err) and "no GPU here" in str(err)
    assert isinstance(err.__cause__, RuntimeError)
    with pytest.raises(WorkersUnavailableError):
        ex.submit(tf.square, 3)


def test_workers_that_cannot_start_break_the_executor(make_executor):
    ex = make_executor(1, max_attempts=1)
    # A worker environment it cannot parse: every worker job exits 1 at start.
    ex._launcher.environment["BATCHEXEC_IDLE_TIMEOUT"] = "not-a-number"
    started = time.monotonic()
    err = ex.submit(tf.square, 2).exception(timeout=120)
    assert isinstance(err, WorkersUnavailableError), err
    assert "worker jobs failed" in str(err) and "exit code 1" in str(err)
    assert time.monotonic() - started < 120


def test_throttling_is_retried(make_executor, control):
    ex = make_executor(2)
    assert ex.submit(tf.square, 1).result(timeout=60) == 1
    control.add_fault("SendMessageBatch", 3)
    control.add_fault("ReceiveMessage", 3)
    control.add_fault("DeleteMessageBatch", 2, code="RequestThrottled")
    assert list(ex.map(tf.square, range(30))) == [i * i for i in range(30)]
    assert not control.faults()  # every injected fault was hit, and retried


def test_missing_stack_is_a_one_line_error(emulator, clean_env):
    with pytest.raises(StackNotFoundError) as info:
        BatchExecutor(stack="no-such-stack", endpoint_url=emulator.endpoint_url)
    message = str(info.value)
    assert "\n" not in message
    assert "no-such-stack" in message and "batchexec stack deploy" in message


def test_unreachable_endpoint_fails_fast(clean_env):
    started = time.monotonic()
    with pytest.raises(EndpointUnreachableError, match="cannot reach http://127.0.0.1:9"):
        BatchExecutor(stack="x", endpoint_url="http://127.0.0.1:9")
    assert time.monotonic() - started < 30


def test_workers_exit_when_the_session_ends(make_executor, emulator):
    psutil = pytest.importorskip("psutil")
    ex = make_executor(2)
    assert list(ex.map(tf.square, range(4))) == [0, 1, 4, 9]

    def workers():
        found = []
        for p in psutil.Process(emulator.pid).children(recursive=True):
            try:
                if "worker" in " ".join(p.cmdline()) and ex.session_id in str(p.environ()):
                    found.append(p)
            except psutil.Error:  # exited while we looked
                pass
        return found

    assert workers()
    ex.shutdown()
    deadline = time.monotonic() + 30
    while workers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not workers()


def test_bad_options_are_rejected(clean_env, emulator):
    with pytest.raises(ValueError, match="max_workers"):
        BatchExecutor(0, stack="x", endpoint_url=emulator.endpoint_url)
    for wrong in (True, 2.0, "4"):
        with pytest.raises(TypeError, match="max_workers must be an int"):
            BatchExecutor(wrong, stack="x", endpoint_url=emulator.endpoint_url)
    with pytest.raises(TypeError, match="unexpected keyword"):
        BatchExecutor(stack="x", endpoint_url=emulator.endpoint_url, visibilty_timeout=3)


def test_dead_letters_of_two_sessions_reach_their_own_owner(make_executor, tmp_path):
    """The stack's dead-letter queue is shared: each executor claims only its own messages."""
    a = make_executor(1, max_attempts=1, visibility_timeout=2)
    b = make_executor(1, max_attempts=1, visibility_timeout=2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fa = [a.submit(tf.kill_worker_on, i, 1, str(tmp_path / "a")) for i in range(3)]
    fb = [b.submit(tf.kill_worker_on, i, 2, str(tmp_path / "b")) for i in range(3)]
    for futures, poison in ((fa, 1), (fb, 2)):
        for i, f in enumerate(futures):
            if i == poison:
                err = f.exception(timeout=180)
                assert isinstance(err, TaskDeadLetteredError) and err.task_id == f"{i}", err
            else:
                assert f.result(timeout=180) == i
