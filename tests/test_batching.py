"""Lingering deletes (batchexec/batching.py): batches, flush, stop, failures.

A fake queue stands in for SQS: what matters here is which receipts go to which call, and
that nothing asked for is lost or waits longer than the linger.
"""

from __future__ import annotations

import threading
import time
from queue import SimpleQueue

import pytest

from batchexec.batching import MessageDeleter, gather
from batchexec.transport import QueueGone, TransportError

pytestmark = pytest.mark.timeout(30)


class FakeQueue:
    def __init__(self, fail: BaseException | None = None):
        self.calls: list[list[str]] = []
        self.fail = fail
        self.called = threading.Event()

    def delete(self, receipts):
        self.calls.append(list(receipts))
        self.called.set()
        if self.fail is not None:
            raise self.fail


def test_gather_takes_what_comes_within_the_linger():
    work: SimpleQueue = SimpleQueue()
    for i in range(3):
        work.put(i)
    started = time.monotonic()
    assert gather(work, 0.2, lambda items: False) == [0, 1, 2]
    assert 0.15 < time.monotonic() - started < 2  # waited for more, then gave up


def test_gather_stops_early_when_enough_or_stopped():
    work: SimpleQueue = SimpleQueue()
    for i in range(5):
        work.put(i)
    assert gather(work, 10, lambda items: len(items) >= 2) == [0, 1]
    work.put(None)
    started = time.monotonic()
    assert gather(work, 10, lambda items: False) == [2, 3, 4, None]
    assert time.monotonic() - started < 1


def test_one_at_a_time_deletes_share_calls_of_at_most_ten():
    queue = FakeQueue()
    deleter = MessageDeleter(queue, linger=0.5)
    deleter.start()
    for i in range(25):
        deleter.delete_later(f"r{i}")
    deleter.stop(timeout=5)
    assert [r for call in queue.calls for r in call] == [f"r{i}" for i in range(25)]
    assert [len(call) for call in queue.calls] == [10, 10, 5]


def test_a_lone_delete_is_made_after_the_linger():
    queue = FakeQueue()
    deleter = MessageDeleter(queue, linger=0.1)
    deleter.start()
    started = time.monotonic()
    deleter.delete_later("r")
    assert queue.called.wait(5)
    assert time.monotonic() - started < 2
    assert queue.calls == [["r"]]
    deleter.stop()


def test_stop_makes_the_waiting_deletes_at_once():
    queue = FakeQueue()
    deleter = MessageDeleter(queue, linger=30)
    deleter.start()
    deleter.delete_later("a")
    deleter.delete_later("b")
    started = time.monotonic()
    deleter.stop(timeout=5)
    assert time.monotonic() - started < 2
    assert not deleter.is_alive()
    assert queue.calls == [["a", "b"]]


@pytest.mark.parametrize("error", [TransportError("throttled"), QueueGone("gone")])
def test_a_failed_delete_is_not_fatal(error, caplog):
    queue = FakeQueue(fail=error)
    deleter = MessageDeleter(queue, linger=0)
    deleter.start()
    deleter.delete_later("a")
    assert queue.called.wait(5)
    time.sleep(0.1)
    deleter.delete_later("b")
    deleter.stop(timeout=5)
    assert not deleter.is_alive()  # still serving after the failure, then stopped
    if isinstance(error, QueueGone):  # the session ended: no more calls to a queue not there
        assert queue.calls == [["a"]]
    else:
        assert queue.calls == [["a"], ["b"]]
        assert "received again" in caplog.text
