"""Buffers named instead of sent: the client's guess of what every worker holds (held.py), the
worker's cache (worker/buffer_cache.py), and the way back when a guess is wrong (a "missing"
answer: TaskTable.requeue, the collector, the dispatcher sending the task again whole).

The supervisor's side runs for real in test_worker_supervisor.py; here the client's side,
in memory, and one graph end to end on the emulator."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future

import pytest

from batchexec import protocol
from batchexec.collector import ResultCollector
from batchexec.dispatcher import TaskDispatcher
from batchexec.held import WORKER_SILENCE_SECONDS, HeldBuffers
from batchexec.protocol import ResultEntry, ResultMessage, TaskMessage
from batchexec.serialization import digest, dumps_apart, loads
from batchexec.tasks import TaskTable, WorkItem
from batchexec.transport import Received
from batchexec.worker.buffer_cache import BufferCache

KB = 1000


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


# -- HeldBuffers: what the client may name --------------------------------------------------


def test_a_buffer_is_named_only_once_every_worker_heard_from_received_it():
    held = HeldBuffers(worker_cache_bytes=1_000 * KB)
    assert not held.held_by_all("a")  # never sent
    held.sent(0, {"a": b"x" * KB})
    assert not held.held_by_all("a")  # sent, but no worker has said it received it
    held.delivered(0, "w1")
    assert held.held_by_all("a")  # the only worker known holds it
    held.delivered(99, "w2")  # a second worker reports (on a message without "a")
    assert not held.held_by_all("a")
    held.sent(1, {"a": b"x" * KB})  # sent inline again: now w2 receives it
    held.delivered(1, "w2")
    held.delivered(1, "w1")  # a later result of the same message adds nothing
    assert held.held_by_all("a")


def test_a_buffer_sent_longer_ago_than_the_window_is_not_named():
    held = HeldBuffers(worker_cache_bytes=100 * KB)  # window: 50 KB of inline buffers
    held.sent(0, {"old": b"o" * 10 * KB})
    held.delivered(0, "w")
    held.sent(1, {"b": b"b" * 30 * KB})
    assert held.held_by_all("old")  # 30 KB sent since: the worker's cache still has it
    held.sent(2, {"c": b"c" * 30 * KB})
    assert not held.held_by_all("old")  # 60 KB since: it may have been dropped
    held.delivered(1, "w")
    held.delivered(2, "w")
    assert held.held_by_all("b") and held.held_by_all("c")


def test_a_silent_worker_stops_counting_and_a_failed_send_is_forgotten():
    clock = Clock()
    held = HeldBuffers(worker_cache_bytes=1_000 * KB, clock=clock)
    held.delivered(50, "gone")  # a worker that will exit
    held.sent(0, {"a": b"x" * KB})
    held.delivered(0, "w")
    assert not held.held_by_all("a")  # "gone" never received it
    clock.now = WORKER_SILENCE_SECONDS + 2
    held.delivered(51, "w")
    assert held.held_by_all("a")
    held.sent(1, {"b": b"x" * KB})
    held.forget(1)  # its send failed: nobody will ever report it
    held.delivered(1, "w")
    assert not held.held_by_all("b")


def test_a_worker_that_announced_itself_counts_before_its_first_result():
    held = HeldBuffers(worker_cache_bytes=1_000 * KB)
    held.sent(0, {"a": b"x" * KB})
    held.delivered(0, "w1")
    assert held.held_by_all("a")
    held.started("w2")  # its "started" event: it will take messages, and holds nothing
    assert not held.held_by_all("a")
    held.sent(1, {"a": b"x" * KB})
    held.delivered(1, "w2")
    assert held.held_by_all("a")


def test_a_zero_cache_names_nothing():
    held = HeldBuffers(worker_cache_bytes=0)
    held.sent(0, {"a": b"x"})
    held.delivered(0, "w")
    assert not held.held_by_all("a")


# -- BufferCache: what a worker keeps ---------------------------------------------------------


def test_the_worker_cache_drops_the_least_recently_used_past_its_budget():
    cache = BufferCache(capacity=3 * KB)
    cache.keep({"a": b"a" * KB, "b": b"b" * KB, "c": b"c" * KB})
    assert cache.get("a") == b"a" * KB  # used: now the most recent
    cache.keep({"d": b"d" * KB, "a": b"a" * KB})  # "a" again costs nothing
    assert cache.get("b") is None and len(cache) == 3 and cache.size == 3 * KB
    assert cache.get("c") and cache.get("d") and cache.get("a")
    cache.keep({"big": b"x" * 5 * KB})  # alone over the budget: the newest stays
    assert cache.get("big") and len(cache) == 1 and cache.get("a") is None
    off = BufferCache(capacity=0)
    off.keep({"a": b"a"})
    assert off.get("a") is None and len(off) == 0


# -- the way back: a worker that does not hold what was named ---------------------------------


def _array_item(i, *arrays):
    args, buffers, order = dumps_apart((arrays, {}), "arguments", blobs={})
    return WorkItem(str(i), Future(), "f", b"fn", digest(b"fn"), args, {}, buffers, order)


class _SentQueue:
    def __init__(self):
        self.bodies = []

    def send_each(self, bodies, session):
        self.bodies += bodies
        return [None] * len(bodies)


def _collector(table, held):
    return ResultCollector(table, queue=None, store=None, session="s", on_broken=pytest.fail,
                           held=held)


def _answer(collector, worker, *entries):
    body = ResultMessage("s", worker, list(entries)).encode()
    collector._handle(Received(body, "r", "m", 1, {}))


def test_a_task_whose_worker_lacks_a_named_buffer_is_sent_again_whole_and_resolved_once():
    np = pytest.importorskip("numpy")
    table = TaskTable(credits=4)
    held = HeldBuffers(worker_cache_bytes=10_000 * KB)
    queue = _SentQueue()
    d = TaskDispatcher(table, queue, store=None, session="s", inline_limit=256 * 1024,
                       on_broken=pytest.fail, held=held)
    collector = _collector(table, held)
    chunk = np.random.default_rng(0).random((50, 50))
    key = digest(chunk.tobytes())

    def send(item):
        table.reserve(item.future)
        assert table.add(item)
        d.dispatch(table.take_packs(protocol.SQS_BATCH_ENTRIES))
        return protocol.decode(queue.bodies[-1])

    first = send(_array_item(0, chunk))
    assert key in first.bufs and first.held == []
    _answer(collector, "w1", ResultEntry("0", True, data=b"\x80\x05K\x01."))
    second_item = _array_item(1, chunk)
    second = send(second_item)
    assert second.bufs == {} and second.held == [key]  # w1, the only worker, holds it
    assert table.credits == 3
    # Another worker received it: it answers "missing". The task goes out again, whole, its
    # future still running; its credit came back with the answer and went with the resend.
    _answer(collector, "w2", ResultEntry("1", False, missing=[key]))
    assert second_item.future.running() and table.outstanding() == 1
    d.dispatch(table.take_packs(protocol.SQS_BATCH_ENTRIES))
    again = protocol.decode(queue.bodies[-1])
    assert again.held == [] and again.bufs == {key: chunk.tobytes()}
    assert [t.task_id for t in again.tasks] == ["1"] and table.credits == 3
    # A second "missing" (the first message redelivered elsewhere) changes nothing.
    _answer(collector, "w2", ResultEntry("1", False, missing=[key]))
    assert len(queue.bodies) == 3 and table.outstanding() == 1
    _answer(collector, "w2", ResultEntry("1", True, data=b"\x80\x05K\x02."))
    _answer(collector, "w1", ResultEntry("1", True, data=b"\x80\x05K\x03."))  # a duplicate
    assert second_item.future.result() == 2 and table.outstanding() == 0
    assert table.credits == 4 and table._in_flight == {}


def test_a_task_sent_again_is_not_cancelled_by_shutdown_and_nothing_is_kept_after_it_resolves():
    table = TaskTable(credits=1)
    kept, plain = (WorkItem(str(i), Future(), "f", b"fn", "d", b"a") for i in range(2))
    table.reserve(kept.future)
    table.add(kept)
    (pack,) = table.take_packs(1)
    assert pack == [kept]
    kept.future.set_running_or_notify_cancel()
    kept.names_held = True
    number = table.register_message([(kept, None)])
    table.reserve(plain.future)
    table.add(plain)  # not sent yet
    assert table._in_flight["0"].retained is kept
    assert table.requeue("0").message == number and table.requeue("0") is None
    assert [it.task_id for it in table.drain_pending()] == ["1"]  # "0" was sent: it finishes
    (pack,) = table.take_packs(1)
    assert pack == [kept] and kept.resend
    table.register_message([(kept, None)])
    assert table._in_flight["0"].retained is None  # sent whole: nothing to send again
    record = table.resolve("0")
    assert record.retained is None and table.outstanding() == 0


def test_the_dispatcher_never_names_a_buffer_for_a_task_sent_again():
    np = pytest.importorskip("numpy")
    held = HeldBuffers(worker_cache_bytes=10_000 * KB)
    d = TaskDispatcher(TaskTable(credits=4), queue=None, store=None, session="s",
                       inline_limit=256 * 1024, on_broken=pytest.fail, held=held)
    chunk, other = np.ones((50, 50)), np.zeros((50, 50))
    held.sent(0, {digest(chunk.tobytes()): chunk.tobytes()})
    held.delivered(0, "w")
    fresh, again = _array_item(0, chunk, other), _array_item(1, chunk, other)
    again.resend = True
    ((batch, body, bufs),) = d._encode([fresh, again])
    msg = protocol.decode(body)
    assert isinstance(msg, TaskMessage) and msg.held == [digest(chunk.tobytes())]
    assert set(msg.bufs) == set(bufs) == {digest(chunk.tobytes()), digest(other.tobytes())}
    assert fresh.names_held and not again.names_held
    for entry in msg.tasks:
        (a, b), _ = loads(entry.args, "arguments", None,
                          [bytearray(msg.bufs[k]) for k in entry.buffers])
        assert (a == 1).all() and (b == 0).all()


# -- end to end --------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_an_array_passed_again_later_is_named_and_results_are_right(make_executor, caplog):
    np = pytest.importorskip("numpy")
    import taskfuncs as tf

    caplog.set_level(logging.DEBUG, logger="batchexec.collector")
    chunks = [np.random.default_rng(i).random((50, 50)) for i in range(4)]

    def rounds(ex, n):
        for round_ in range(n):  # each round waits for the last: later ones reuse the chunks
            futures = [ex.submit(tf.bump_and_sum, c, round_) for c in chunks]
            assert [f.result(timeout=60) for f in futures] == pytest.approx(
                [c.sum() + round_ * c.size for c in chunks])

    ex = make_executor(2)
    rounds(ex, 1)
    held = ex._threads[0].held
    # Until a worker has announced itself the client cannot count it (a round named before
    # the second worker started would meet "missing" there, at the cost of a round trip).
    # The collector reads the result queue only while tasks are outstanding: keep one so.
    deadline = time.monotonic() + 60
    while len(held._workers) < 2 and time.monotonic() < deadline:
        assert ex.submit(abs, -1).result(timeout=60) == 1
    assert len(held._workers) == 2
    rounds(ex, 5)
    assert 0 < held._sent_bytes < 6 * sum(c.nbytes for c in chunks)  # later rounds named them
    assert not [r for r in caplog.records if "does not hold" in r.getMessage()]  # and held
    assert all((c == np.random.default_rng(i).random((50, 50))).all()  # the caller's arrays
               for i, c in enumerate(chunks))  # are untouched by the tasks' in-place changes
    off = make_executor(2, buffer_cache_bytes=0)  # off: right results, nothing named
    rounds(off, 2)
    assert off._threads[0].held.window == 0


@pytest.mark.timeout(180)
def test_a_replacement_worker_that_lacks_a_named_array_gets_the_task_again_whole(
        make_executor, tmp_path, caplog):  # fmt: skip
    """The worker that received the array dies; the client names the array before it has
    heard from the replacement, which answers "missing"; the task is sent again whole."""
    np = pytest.importorskip("numpy")
    import taskfuncs as tf

    caplog.set_level(logging.DEBUG, logger="batchexec.collector")
    ex = make_executor(1, visibility_timeout=2)
    chunk = np.random.default_rng(3).random((50, 50))
    assert ex.submit(tf.bump_and_sum, chunk, 0).result(timeout=60) == pytest.approx(chunk.sum())
    killer = ex.submit(tf.kill_worker_once, str(tmp_path / "killed"))
    after = [ex.submit(tf.bump_and_sum, chunk, i) for i in range(1, 4)]  # named: the only
    assert killer.result(timeout=120) != ""  # worker the client knows received it
    assert [f.result(timeout=120) for f in after] == pytest.approx(
        [chunk.sum() + i * chunk.size for i in range(1, 4)])
    asked = [r for r in caplog.records if "does not hold" in r.getMessage()]
    assert asked, "the replacement worker was never asked for the array it lacked"
