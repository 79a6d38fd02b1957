"""Every accepted task ends in exactly one terminal state, and the client never hangs.

Each test reproduces one of the ways users broke that (issue 6, client side) on the shared
emulator with real worker processes: a submit racing shutdown, the executor breaking while a
task is being uploaded, shutdown from a done-callback, a callback raising SystemExit, threads
left running after shutdown, a fork, Ctrl-C, payloads left in S3, a partly refused send, and
a dead-letter watcher that believed dead sessions alive forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import boto3
import pytest
import taskfuncs as tf

from batchexec import WorkersUnavailableError
from batchexec.collector import DeadLetterWatcher
from batchexec.dispatcher import TaskDispatcher
from batchexec.errors import ExecutorAbortedError, TaskDeadLetteredError
from batchexec.tasks import TaskTable, WorkItem
from batchexec.threads import TaskFuture
from batchexec.transport import MessageQueue

HERE = os.path.dirname(__file__)


class SlowToPickle:
    """An argument whose pickling takes a while (a big object graph, a slow __reduce__)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __reduce__(self):
        time.sleep(self.seconds)
        return (int, (7,))


def test_shutdown_waits_for_a_task_still_being_pickled(make_executor):
    ex = make_executor(1)
    futures = []
    submitter = threading.Thread(target=lambda: futures.append(ex.submit(tf.identity,
                                                                         SlowToPickle(2))))
    submitter.start()
    time.sleep(0.5)  # submit() is inside pickling now
    ex.shutdown(wait=True)
    submitter.join(10)
    (future,) = futures
    assert future.done(), "shutdown(wait=True) returned while an accepted task was pending"
    assert future.result(timeout=0) == 7


def test_breaking_fails_a_task_the_dispatcher_is_still_uploading(make_executor, control):
    ex = make_executor(1, inline_limit=1024)
    assert ex.submit(tf.square, 1).result(timeout=60) == 1
    control.add_fault("PutObject", 6, code="SlowDown", status=503)  # retried with backoff
    future = ex.submit(tf.nbytes, os.urandom(100_000))  # its arguments go to S3
    time.sleep(0.3)
    ex._set_broken(WorkersUnavailableError("simulated: every worker job failed"))
    assert isinstance(future.exception(timeout=30), WorkersUnavailableError)
    started = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - started < 15


def test_shutdown_wait_from_a_done_callback_raises_instead_of_deadlocking(make_executor):
    ex = make_executor(1)
    seen = []

    def callback(_):
        try:
            ex.shutdown(wait=True)
        except RuntimeError as exc:
            seen.append(exc)

    future = ex.submit(tf.slow_pid, 0, 0.5)
    future.add_done_callback(callback)
    future.result(timeout=60)
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen and "cannot join current thread" in str(seen[0])
    assert ex.submit(tf.square, 6).result(timeout=60) == 36  # still usable
    ex.submit(tf.slow_pid, 1, 0.2).add_done_callback(lambda f: ex.shutdown(wait=False))
    ex.shutdown(wait=True)


def test_a_callback_raising_systemexit_cannot_kill_the_collector(make_executor):
    ex = make_executor(1)
    first = ex.submit(tf.slow_pid, 0, 0.3)
    first.add_done_callback(lambda f: sys.exit(3))
    first.add_done_callback(lambda f: (_ for _ in ()).throw(KeyboardInterrupt))
    later_callback = []
    first.add_done_callback(later_callback.append)
    others = [ex.submit(tf.square, i) for i in range(10)]
    assert [f.result(timeout=60) for f in others] == [i * i for i in range(10)]
    assert later_callback == [first]  # callbacks after the raising ones still ran


def test_shutdown_joins_every_thread_it_started(make_executor):
    ex = make_executor(2)
    assert list(ex.map(tf.square, range(10))) == [i * i for i in range(10)]
    ex.shutdown(wait=True)
    alive = [t.name for t in (*ex._threads, ex._closer) if t.is_alive()]
    assert not alive, alive


def test_a_forked_child_cannot_use_or_tear_down_the_parents_executor(emulator, clean_env):
    env = _script_env(emulator)
    out = subprocess.run([sys.executable, os.path.join(HERE, "scripts", "fork_child.py")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "parent before fork 9" in out.stdout
    assert "child refused:" in out.stdout and "forked child cannot use it" in out.stdout
    assert "child exit status 0" in out.stdout
    assert "parent after child 25" in out.stdout, out.stdout + out.stderr[-3000:]


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_the_fleet_and_exits_within_10_s(emulator, clean_env, tmp_path, presses):
    psutil = pytest.importorskip("psutil")
    env = _script_env(emulator)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "scripts", "interrupt_map.py"), str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        session = proc.stdout.readline().split()[1]
        deadline = time.monotonic() + 60
        while len(os.listdir(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(os.listdir(tmp_path)) >= 2, "tasks never started"
        interrupted = time.monotonic()
        for _ in range(presses):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.2)
        proc.wait(timeout=30)
        elapsed = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    assert proc.returncode != 0 and "KeyboardInterrupt" in stderr, stderr[-3000:]
    assert elapsed < 10, f"exited {elapsed:.1f} s after Ctrl-C"
    if presses > 1:
        return  # a second Ctrl-C exits at once: what was not cleaned up is `batchexec gc`'s
    # Nothing of the session is left running or queued.
    sqs = boto3.client("sqs", endpoint_url=emulator.endpoint_url, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    urls = sqs.list_queues(QueueNamePrefix=f"bx-test-{session}").get("QueueUrls", [])
    assert not urls, urls
    deadline = time.monotonic() + 10
    while _workers_of(psutil, emulator, session) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _workers_of(psutil, emulator, session)
    assert len(os.listdir(tmp_path)) < 12  # the tasks not started were never run


def test_payloads_live_only_as_long_as_needed(make_executor, control):
    ex = make_executor(2, inline_limit=64 * 1024)
    s3 = boto3.client("s3", endpoint_url=ex.endpoint_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    prefix = f"sessions/{ex.session_id}/"

    def objects():
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=ex.stack.bucket,
                                                             Prefix=prefix)
        return [o["Key"] for p in pages for o in p.get("Contents", [])]

    # Distinct large arguments and large results: each object is deleted once consumed.
    blobs = [os.urandom(300_000) for _ in range(6)]
    assert [len(r) for r in ex.map(tf.identity, blobs)] == [300_000] * 6
    # A 3 MiB callable (a closure over a large table) used by 20 tasks: uploaded once.
    table = os.urandom(3 * 2**20)
    control.reset_requests()
    assert list(ex.map(lambda i: table[i], range(20))) == list(table[:20])
    puts = control.requests().get("s3.PutObject", 0) + control.requests().get(
        "s3.CreateMultipartUpload", 0)
    assert puts == 1, control.requests()
    # A 100 KB array (above the inline limit, below a blob) passed to 20 tasks: uploaded once.
    np = pytest.importorskip("numpy")
    array = np.arange(12_800.0)
    control.reset_requests()
    assert list(ex.map(tf.bump_and_sum, [array] * 20, range(20))) == [
        array.sum() + i * array.size for i in range(20)]
    assert control.requests().get("s3.PutObject", 0) == 1, control.requests()
    deadline = time.monotonic() + 10
    while objects() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert objects() == [], objects()


class _PartlyRefusingSqs:
    """SendMessageBatch that accepts every entry but one."""

    def __init__(self, refuse: str):
        self.refuse = refuse
        self.sent = []

    def send_message_batch(self, QueueUrl, Entries):
        ok = [e for e in Entries if e["Id"] != self.refuse]
        self.sent += ok
        return {"Successful": [{"Id": e["Id"]} for e in ok],
                "Failed": [{"Id": self.refuse, "SenderFault": True, "Code": "InvalidMessage",
                            "Message": "refused for the test"}]}


def test_a_partly_refused_send_fails_only_the_refused_entries():
    table = TaskTable(credits=10)
    sqs = _PartlyRefusingSqs(refuse="1")
    failed = []
    dispatcher = TaskDispatcher(table, MessageQueue(sqs, "http://q/tasks"), store=None,
                                session="s", inline_limit=64 * 1024, on_broken=failed.append)
    items = []
    for i in range(3):
        future = TaskFuture()
        table.reserve(future)
        items.append(WorkItem(str(i), future, "f", b"fn%d" % i, f"d{i}", b"args"))
        table.add(items[-1])
    packs = table.take_packs(10)
    assert [len(p) for p in packs] == [1, 1, 1]  # three messages in one batch call
    dispatcher.dispatch(packs)
    assert len(sqs.sent) == 2
    assert isinstance(items[1].future.exception(timeout=0), Exception)
    assert "refused for the test" in str(items[1].future.exception(timeout=0))
    assert not items[0].future.done() and not items[2].future.done()  # in flight, not failed
    assert table.outstanding() == 2 and not failed


def test_a_partly_refused_send_on_the_emulator_fails_only_the_refused_entry(make_executor,
                                                                            control):
    """The emulator refuses the second entry of one SendMessageBatch of task messages, as SQS
    reports a partial failure (and refuses that body again on the retry)."""
    from concurrent.futures import wait

    ex = make_executor(2)
    assert ex.submit(tf.square, 0).result(timeout=60) == 0  # workers up: sends batch from now
    control.add_fault("SendMessageBatch", entry=1, queue="-tasks",
                      code="InvalidMessageContents", message="refused for the test")
    futures: list = []
    for _ in range(20):  # until a send carried two messages or more and the fault fired
        futures += [ex.submit(tf.square, i) for i in range(len(futures), len(futures) + 40)]
        wait(futures, timeout=60)
        if not control.faults():
            break
    assert control.faults() == [], "no send of task messages had two entries"
    failed = [i for i, f in enumerate(futures) if f.exception(timeout=60) is not None]
    assert failed, "the refused entry's tasks did not fail"
    assert failed == list(range(failed[0], failed[-1] + 1))  # one message: one pack of tasks
    assert all("refused for the test" in str(futures[i].exception()) for i in failed)
    assert all(f.result() == i * i for i, f in enumerate(futures) if i not in failed)


def test_the_dead_letter_watchers_liveness_cache_expires(monkeypatch):
    import batchexec.collector as collector

    calls = []
    watcher = DeadLetterWatcher(TaskTable(1), queue=None, session="me", max_attempts=3,
                                session_alive=lambda s: calls.append(s) or True,
                                on_broken=pytest.fail)
    assert watcher._alive("other") and watcher._alive("other")
    assert calls == ["other"]  # cached
    monkeypatch.setattr(collector, "ALIVE_CACHE_SECONDS", 0.0)
    time.sleep(0.01)
    watcher._alive("other")
    assert calls == ["other", "other"]  # asked again once the entry expired


def test_a_dead_letter_of_an_ended_session_is_parked_not_redelivered(moto_endpoint, caplog):
    """SQS counts the 12-hour visibility limit from the receive: asking for all of it a moment
    later is refused, and the stale message then crowds every poll of the shared queue."""
    import batchexec.collector as collector
    from batchexec import protocol

    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    queue = MessageQueue(sqs, sqs.create_queue(QueueName="ended-dead-letters")["QueueUrl"])
    sqs.send_message(QueueUrl=queue.url, MessageBody="{}", MessageAttributes={
        protocol.SESSION_ATTRIBUTE: {"DataType": "String", "StringValue": "ended"}})
    watcher = DeadLetterWatcher(TaskTable(1), queue, session="me", max_attempts=3,
                                session_alive=lambda s: False, on_broken=pytest.fail)
    (message,) = queue.receive(wait=0)
    time.sleep(1.1)  # the liveness lookup and the call itself take time after the receive
    watcher._handle(message)
    sqs.set_queue_attributes(QueueUrl=queue.url, Attributes={"VisibilityTimeout": "0"})
    assert queue.receive(wait=0) == []  # still hidden, not back after the queue's default
    assert collector.ENDED_HIDE_SECONDS > 12 * 3600 - 3600  # parked for most of 12 hours


def test_another_live_sessions_dead_letter_is_released_at_once_and_a_forged_one_parked(
        moto_endpoint):
    """Other sessions sign with their own keys, so their dead letters are never authentic
    to us: the session attribute decides the hiding, and their owner must get them back."""
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    url = sqs.create_queue(QueueName="shared-dead-letters")["QueueUrl"]
    ours, theirs = MessageQueue(sqs, url, b"k" * 32), MessageQueue(sqs, url, b"x" * 32)
    asked = []
    watcher = DeadLetterWatcher(TaskTable(1), ours, session="me", max_attempts=3,
                                session_alive=lambda s: asked.append(s) or True,
                                on_broken=pytest.fail)
    theirs.send(['{"from": "a live session"}'], session="other")
    (message,) = ours.receive(wait=0)
    assert not message.authentic
    watcher._handle(message)
    assert asked == ["other"]
    (again,) = ours.receive(wait=0)  # visible again at once, for its owner's watcher
    assert again.body == '{"from": "a live session"}'
    sqs.delete_message(QueueUrl=url, ReceiptHandle=again.receipt)
    theirs.send(['{"claims": "to be mine"}'], session="me")  # not signed with our key
    (forged,) = ours.receive(wait=0)
    watcher._handle(forged)
    time.sleep(1.5)
    assert ours.receive(wait=0) == [] and asked == ["other"]  # parked, no liveness asked


def _outstanding_table(task_id: str) -> tuple[TaskTable, TaskFuture]:
    """A task table with one task sent and not yet resolved, and that task's future."""
    table = TaskTable(credits=1)
    future = TaskFuture()
    table.reserve(future)
    item = WorkItem(task_id, future, "f", b"fn", "d", b"args")
    table.add(item)
    (pack,) = table.take_packs(1)
    pack[0].future.set_running_or_notify_cancel()
    table.register_message([(pack[0], None)])
    return table, future


def test_a_session_polling_the_dead_letters_faster_does_not_starve_their_owner(moto_endpoint):
    """Two live sessions on one stack's dead-letter queue. A polls it often and never gets a
    dead letter of its own; B's dead letter must still reach B's watcher promptly (a fixed
    hide let the other watcher receive it again at every expiry)."""
    from batchexec import protocol

    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    url = sqs.create_queue(QueueName="contended-dead-letters",
                           Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    key_a, key_b = b"a" * 32, b"b" * 32
    broken = []
    a = DeadLetterWatcher(_outstanding_table("a0")[0], MessageQueue(sqs, url, key_a), session="a",
                          max_attempts=1, session_alive=lambda s: True,
                          on_broken=broken.append, interval=0.05)
    table_b, future_b = _outstanding_table("7")
    b = DeadLetterWatcher(table_b, MessageQueue(sqs, url, key_b), session="b", max_attempts=1,
                          session_alive=lambda s: True, on_broken=broken.append, interval=1.0)
    body = protocol.TaskMessage("b", [protocol.TaskEntry("7", fn="d", args=b"")]).encode()
    MessageQueue(sqs, url, key_b).send([body], session="b")
    a.start()
    time.sleep(0.3)  # A has received B's dead letter, and goes on polling every 50 ms
    b.start()
    try:
        deadline = time.monotonic() + 8
        while not future_b.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert future_b.done(), "B's dead letter never reached B's watcher"
        assert isinstance(future_b.exception(), TaskDeadLetteredError)
    finally:
        a.stop()
        b.stop()
        a.join(5)
        b.join(5)
    assert not broken and sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]["ApproximateNumberOfMessages"] == "0"


def test_a_dead_letter_is_parked_once_its_session_ends_on_the_emulator(make_executor,
                                                                       monkeypatch):
    """Real sessions on the emulator: B's watcher hides A's dead letter briefly while A lives,
    asks again once its liveness cache expires, and parks it for good after A shut down."""
    import batchexec.collector as collector
    from batchexec import protocol

    monkeypatch.setattr(collector, "FOREIGN_HIDE_SECONDS", 1)
    monkeypatch.setattr(collector, "ALIVE_CACHE_SECONDS", 1.0)
    b = make_executor(1)
    assert b.submit(tf.square, 2).result(timeout=60) == 4
    watcher = b._watcher
    watcher.interval = 0.3
    a = make_executor(1)
    receipts = {}  # receipt -> message id, of every dead letter the watcher handed back
    release = watcher._release
    monkeypatch.setattr(watcher, "_release", lambda message, owner: (
        receipts.__setitem__(message.receipt, message.message_id), release(message, owner))[1])
    hides = []  # (message id, seconds hidden)
    extend = watcher.queue.extend
    monkeypatch.setattr(watcher.queue, "extend", lambda receipt, seconds: (
        hides.append((receipts.get(receipt), seconds)), extend(receipt, seconds))[1])
    sqs = b._clients.client("sqs")
    sent = sqs.send_message(QueueUrl=b._session.dead_letters.url, MessageBody="{}",
                            MessageAttributes={protocol.SESSION_ATTRIBUTE: {
                                "DataType": "String", "StringValue": a._session_id}})
    mine = sent["MessageId"]
    running = b.submit(tf.slow_pid, 0, 10)  # B has work outstanding: its watcher polls

    def seen() -> int:
        return sum(1 for m, _ in hides if m == mine)

    deadline = time.monotonic() + 30
    while seen() < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert seen() >= 2, "A's live dead letter was not handed back and seen again"
    assert all(s == 1 for m, s in hides if m == mine)  # A lives: hidden briefly only
    a.shutdown(wait=True)
    parked = (mine, collector.ENDED_HIDE_SECONDS)
    deadline = time.monotonic() + 30
    while parked not in hides and time.monotonic() < deadline:
        time.sleep(0.1)
    assert parked in hides, "A ended, but its dead letter was not parked"
    parked_at = seen()
    time.sleep(3)  # three cache lifetimes, ten watcher polls
    assert seen() == parked_at  # parked: not received again
    assert running.result(timeout=30)[0] == 0


def test_aborted_tasks_fail_with_a_clear_error(make_executor):
    ex = make_executor(1)
    running = ex.submit(tf.slow_pid, 0, 30)
    waiting = [ex.submit(tf.slow_pid, i, 30) for i in range(1, 5)]
    deadline = time.monotonic() + 60
    while not running.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    ex._abort("test")
    assert time.monotonic() - started < 10
    assert isinstance(running.exception(timeout=0), ExecutorAbortedError)
    assert all(f.done() for f in waiting)


def _script_env(emulator) -> dict:
    env = dict(os.environ)
    env.update(AWS_ENDPOINT_URL=emulator.endpoint_url, BATCHEXEC_STACK="bx-test",
               PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE)]),
               AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    env.pop("AWS_PROFILE", None)
    return env


def _workers_of(psutil, emulator, session):
    found = []
    for p in psutil.Process(emulator.pid).children(recursive=True):
        try:
            if session in str(p.environ()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_start_timeout_applies_whenever_work_waits_with_no_worker(make_executor, control):
    """Workers idle-exit; their replacements sit RUNNABLE (no capacity): the executor breaks
    after start_timeout, quoting Batch's reason, instead of waiting forever."""
    ex = make_executor(1, worker_idle_timeout=1, start_timeout=4)
    assert ex.submit(tf.square, 2).result(timeout=60) == 4
    deadline = time.monotonic() + 30
    while ex._launcher.counts().alive and time.monotonic() < deadline:
        time.sleep(0.2)  # the worker idle-exits
    assert not ex._launcher.counts().alive
    control.set_capacity(False, "CAPACITY:INSUFFICIENT_INSTANCE_CAPACITY - none for the test")
    try:
        started = time.monotonic()
        err = ex.submit(tf.square, 3).exception(timeout=60)
    finally:
        control.set_capacity(True)
    assert isinstance(err, WorkersUnavailableError), err
    assert "start_timeout=4" in str(err) and "INSUFFICIENT_INSTANCE_CAPACITY" in str(err)
    assert time.monotonic() - started < 30
