"""Swap-in: one program, ProcessPoolExecutor and BatchExecutor, identical observable results."""

from __future__ import annotations

import concurrent.futures as cf
import traceback

import pytest
import taskfuncs as tf


@pytest.fixture(params=["process", "batch"])
def executor_factory(request, make_executor):
    def make(max_workers=2, **kw):
        if request.param == "process":
            ex = cf.ProcessPoolExecutor(max_workers, **kw)
            request.addfinalizer(ex.shutdown)
            return ex
        return make_executor(max_workers, **kw)

    return make


def program(ex) -> dict:
    """A little of everything the standard library promises, as plain data to compare."""
    out = {}
    out["submit"] = ex.submit(tf.add, 2, y=3, z=4).result(timeout=60)
    out["map"] = list(ex.map(tf.square, range(25), timeout=60))
    out["map_chunked"] = list(ex.map(tf.add, range(17), range(17), chunksize=4, timeout=60))
    out["map_two_iterables_uneven"] = list(ex.map(tf.add, range(5), range(3)))
    futures = {ex.submit(tf.square, i): i for i in range(8)}
    out["as_completed"] = sorted(
        (futures[f], f.result()) for f in cf.as_completed(futures, timeout=60)
    )
    done, not_done = cf.wait([ex.submit(tf.square, i) for i in range(4)], timeout=60)
    out["wait"] = (sorted(f.result() for f in done), len(not_done))
    err = ex.submit(tf.fail_on, 3, 3).exception(timeout=60)
    out["exception"] = (type(err).__name__, str(err))
    with pytest.raises(ValueError, match="bad value 2"):
        list(ex.map(tf.fail_on, [1, 2, 3], [2, 2, 2]))
    callback_values = []
    f = ex.submit(tf.square, 9)
    f.add_done_callback(lambda fut: callback_values.append(fut.result()))
    cf.wait([f], timeout=60)
    out["callback"] = f.result()
    return out


def test_same_results_as_process_pool(executor_factory):
    result = program(executor_factory())
    assert result == {
        "submit": 9,
        "map": [i * i for i in range(25)],
        "map_chunked": [2 * i for i in range(17)],
        "map_two_iterables_uneven": [0, 2, 4],
        "as_completed": [(i, i * i) for i in range(8)],
        "wait": ([0, 1, 4, 9], 0),
        "exception": ("ValueError", "bad value 3"),
        "callback": 81,
    }


def test_remote_traceback_is_the_cause(executor_factory):
    ex = executor_factory()
    with pytest.raises(ValueError) as info:
        ex.submit(tf.fail_on, 5, 5).result(timeout=60)
    cause = info.value.__cause__
    assert cause is not None
    text = str(cause)
    assert "fail_on" in text and "bad value 5" in text and "Traceback" in text
    assert "fail_on" in "".join(traceback.format_exception(info.value))


def test_initializer_runs_in_each_worker(executor_factory):
    ex = executor_factory(2, initializer=tf.set_state, initargs=("ready",))
    assert set(ex.map(tf.get_state, range(6))) == {"ready"}


def test_context_manager_and_shutdown(executor_factory):
    with executor_factory() as ex:
        f = ex.submit(tf.square, 4)
    assert f.result() == 16
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tf.square, 1)


def test_map_timeout(executor_factory):
    ex = executor_factory(1)
    with pytest.raises(cf.TimeoutError):
        list(ex.map(tf.slow_pid, [1, 2], [3, 3], timeout=0.5))
