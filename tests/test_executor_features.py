"""BatchExecutor beyond what ProcessPoolExecutor can do: cloudpickle, S3 payloads, buffersize,
cancellation, packing, and the embedded default."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import threading
import time

import pytest
import taskfuncs as tf

from batchexec import BatchExecutor, PayloadTooLargeError, SerializationError


def test_lambdas_and_closures(make_executor):
    ex = make_executor()
    offset = 10

    def closure(x):
        return x + offset

    assert ex.submit(lambda: "lambda").result(timeout=60) == "lambda"
    assert list(ex.map(closure, range(5))) == [10, 11, 12, 13, 14]


def test_unpicklable_callable_and_argument_fail_that_future_only(make_executor):
    ex = make_executor()
    lock = threading.Lock()
    bad_fn = ex.submit(lambda: lock)
    bad_arg = ex.submit(tf.identity, lock)
    good = ex.submit(tf.square, 3)
    for f, what in ((bad_fn, "callable"), (bad_arg, "arguments")):
        err = f.exception(timeout=5)
        assert isinstance(err, SerializationError)
        assert f"cannot pickle the {what}" in str(err) and "picklable" in str(err)
    assert good.result(timeout=60) == 9


def test_unpicklable_result_and_exception_are_clear_errors_and_worker_survives(make_executor):
    ex = make_executor(1)
    err = ex.submit(tf.return_lock).exception(timeout=60)
    assert isinstance(err, SerializationError)
    assert "result of taskfuncs.return_lock" in str(err) and "cannot be pickled" in str(err)
    err = ex.submit(tf.raise_unpicklable).exception(timeout=60)
    assert isinstance(err, SerializationError)
    assert "UnpicklableError: carries a lock" in str(err)
    assert ex.submit(tf.square, 5).result(timeout=60) == 25  # the same single worker


def test_payload_above_inline_limit_goes_through_s3(make_executor, control):
    ex = make_executor(1, inline_limit=1024)
    control.reset_requests()
    blob = os.urandom(300_000)
    assert ex.submit(tf.nbytes, blob).result(timeout=60) == len(blob)
    big_result = ex.submit(tf.identity, blob).result(timeout=60)
    assert big_result == blob
    counts = control.requests()
    assert counts.get("s3.PutObject", 0) >= 3, counts  # 2 task payloads, 1 result


def test_payloads_up_to_the_inline_limit_travel_in_the_message(make_executor, control):
    """SQS takes 1 MiB messages: a 200 KB argument and a 200 KB result go inline, without
    the three S3 requests each would cost, in queues made to hold them."""
    ex = make_executor(1)
    control.reset_requests()
    blob = os.urandom(200_000)
    assert ex.submit(tf.identity, blob).result(timeout=60) == blob
    counts = control.requests()
    assert not any(op.startswith("s3.") for op in counts), counts
    sqs = ex._clients.client("sqs")
    for url in (ex._session.tasks.url, ex._session.results.url):
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["MaximumMessageSize"])
        assert attrs["Attributes"]["MaximumMessageSize"] == str(1024 * 1024)


def test_tasks_passing_one_array_share_its_bytes_and_each_gets_its_own_copy(make_executor):
    np = pytest.importorskip("numpy")
    ex = make_executor(1)
    sent = []
    ex._clients.client("sqs").meta.events.register(
        "before-send.sqs.SendMessageBatch", lambda request, **_: sent.append(len(request.body)))
    shared = np.random.default_rng(0).random(5000)  # 40 KB: inline, out of band
    n = 40
    results = list(ex.map(tf.bump_and_sum, [shared] * n, range(n)))
    assert results == pytest.approx([shared.sum() + i * shared.size for i in range(n)])
    assert shared.sum() == pytest.approx(results[0])  # the client's array is untouched
    # Each message carries the array once, however many of its tasks pass it: well under
    # what n inline copies would cost (base64 makes each 4/3 of its size).
    assert sum(sent) < 0.5 * n * shared.nbytes * 4 / 3, (len(sent), sum(sent))


def test_a_large_array_shared_by_a_map_is_a_private_copy_in_each_task(make_executor):
    """A large argument (a blob, uploaded once per session) is unpickled once per worker, but
    each task still gets its own copy, as with ProcessPoolExecutor: a task that changes it in
    place must not change it for the next task on that worker."""
    np = pytest.importorskip("numpy")
    ex = make_executor(1)
    shared = np.random.default_rng(1).random(50_000)  # 400 KB: a blob
    n = 6
    results = list(ex.map(tf.bump_and_sum, [shared] * n, range(n)))
    assert results == pytest.approx([shared.sum() + i * shared.size for i in range(n)])
    # Within one call the same object passed twice stays one object, as pickle keeps it.
    assert ex.submit(tf.same_and_bumped, shared, shared).result(timeout=60) == (True, True)
    data = bytearray(300_000)
    assert list(ex.map(tf.bump_first_byte, [data] * 3)) == [1, 1, 1]
    # The callable is kept by its worker (the README's cheap way to share a large table):
    # what is bound to it is not copied, so a change persists, as a module global's would.
    bound = functools.partial(tf.bump_and_sum, shared)
    results = list(ex.map(bound, [1, 1, 1]))
    assert results == pytest.approx([shared.sum() + k * shared.size for k in (1, 2, 3)])


def test_payload_above_max_payload_size_is_rejected_at_once(make_executor):
    ex = make_executor(1)
    started = time.monotonic()
    f = ex.submit(tf.nbytes, b"x" * (101 * 2**20))
    err = f.exception(timeout=5)
    assert isinstance(err, PayloadTooLargeError)
    assert "max_payload_size" in str(err) and "S3" in str(err)
    assert time.monotonic() - started < 5
    assert ex.submit(tf.square, 2).result(timeout=60) == 4


def test_cancel_before_sent_and_shutdown_cancel_futures(make_executor):
    ex = make_executor(1, messages_per_worker=1)
    first = ex.submit(tf.slow_pid, 0, 1.0)
    deadline = time.monotonic() + 30
    while not first.running() and time.monotonic() < deadline:  # sent: no longer cancellable
        time.sleep(0.01)
    assert not first.cancel()
    rest = [ex.submit(tf.slow_pid, i, 1.0) for i in range(1, 30)]
    assert rest[-1].cancel()
    assert rest[-1].cancelled()
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result()[0] == 0
    cancelled = [f for f in rest if f.cancelled()]
    finished = [f for f in rest if not f.cancelled()]
    assert len(cancelled) >= 20
    assert all(f.done() and f.exception() is None for f in finished)


def test_shutdown_without_wait_returns_at_once_and_tasks_finish(make_executor):
    ex = make_executor(1)
    futures = [ex.submit(tf.slow_pid, i, 0.3) for i in range(3)]
    started = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - started < 1
    assert [f.result(timeout=60)[0] for f in futures] == [0, 1, 2]


def test_map_with_buffersize_submits_lazily(make_executor):
    ex = make_executor(2)
    consumed = []

    def numbers():
        for i in range(200):
            consumed.append(i)
            yield i

    it = ex.map(tf.square, numbers(), buffersize=10)
    assert len(consumed) == 10
    assert next(it) == 0
    assert len(consumed) == 11
    assert list(it) == [i * i for i in range(1, 200)]


def test_packing_keeps_requests_low(make_executor, control):
    ex = make_executor(2)
    list(ex.map(tf.square, range(20)))  # warm up: workers started, durations measured
    control.reset_requests()
    assert list(ex.map(tf.square, range(1000))) == [i * i for i in range(1000)]
    counts = control.requests()
    total = sum(v for k, v in counts.items() if k.startswith("sqs."))
    assert total / 1000 < 0.2, counts


def test_one_at_a_time_tasks_share_their_deletes(make_executor, control):
    """A submit-and-wait loop sends one message each way per task; the deletes of those
    messages wait briefly for company (batching.py) instead of costing a call each."""
    ex = make_executor(2)
    list(ex.map(tf.square, range(20)))
    control.reset_requests()
    for i in range(45):  # not a multiple of 10: the last deletes wait for no tenth message
        assert ex.submit(tf.square, i).result(timeout=60) == i * i
    # ... and they are made: soon no message of either queue is left in flight.
    sqs = ex._clients.client("sqs")
    settings = ex._session.settings
    deadline = time.monotonic() + 10
    for url in (settings.task_queue_url, settings.result_queue_url):
        while True:
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            left = int(attrs["ApproximateNumberOfMessagesNotVisible"])
            left += int(attrs["ApproximateNumberOfMessages"])
            if left == 0:
                break
            assert time.monotonic() < deadline, (url, attrs)
            time.sleep(0.1)
    counts = control.requests()
    assert counts.get("sqs.SendMessageBatch", 0) >= 90, counts  # one task, one result each
    assert counts.get("sqs.DeleteMessageBatch", 0) <= 45, counts  # not one per message (90)


def test_two_executors_on_one_stack_do_not_cross_talk(make_executor):
    a, b = make_executor(1), make_executor(1)
    assert a.session_id != b.session_id
    fa = [a.submit(tf.tagged, "a", i) for i in range(30)]
    fb = [b.submit(tf.tagged, "b", i) for i in range(30)]
    assert [f.result(timeout=60) for f in fa] == [("a", i) for i in range(30)]
    assert [f.result(timeout=60) for f in fb] == [("b", i) for i in range(30)]


def test_embedded_default_with_no_configuration(clean_env):
    with BatchExecutor(2) as ex:
        assert ex.endpoint_url.startswith("http://127.0.0.1:")
        assert list(ex.map(tf.square, range(6))) == [0, 1, 4, 9, 16, 25]
        assert len(set(pid for _, pid in ex.map(tf.slow_pid, range(8)))) >= 1


def test_as_completed_over_many(make_executor):
    ex = make_executor(2)
    fs = [ex.submit(tf.square, i) for i in range(100)]
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=120)) == sorted(
        i * i for i in range(100)
    )
