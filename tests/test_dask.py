"""dask graphs on BatchExecutor give the same results as on ProcessPoolExecutor (issue 7).

dask runs a graph on any concurrent.futures.Executor (``dask.compute(x, scheduler=ex)``): it
submits one call per task through ``ex.submit`` and sizes its concurrency from
``ex._max_workers``. Each graph below runs on ProcessPoolExecutor(2) and on BatchExecutor(2) on
the shared emulator, and the results must be equal to each other and to dask's own synchronous
scheduler (the oracle: same graph, no executor). Graphs are small, so each test takes seconds.

The task functions are module-level so that both executors pickle them by reference (the
process pool's pickle cannot send lambdas; BatchExecutor's workers import this module through
the client's sys.path, which the emulator hands them).
"""

from __future__ import annotations

import concurrent.futures as cf
import operator

import pytest

dask = pytest.importorskip("dask", reason="dask is not installed (pip install -e '.[dev]')")
np = pytest.importorskip("numpy")
da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")

from conftest import TEST_STACK  # noqa: E402


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def square(x):
    return x * x


def is_even(x):
    return x % 2 == 0


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x


def smooth(block):
    """3 x 3 box mean of the block's interior (map_overlap gives it a 1-pixel halo)."""
    out = block.copy()
    out[1:-1, 1:-1] = sum(
        block[1 + dy : block.shape[0] - 1 + dy, 1 + dx : block.shape[1] - 1 + dx]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    ) / 9.0
    return out


@pytest.fixture(scope="module")
def executors(emulator):
    """ProcessPoolExecutor(2) and BatchExecutor(2), shared by this module's tests (an explicit
    stack and endpoint: nothing from the environment is used)."""
    from batchexec import BatchExecutor

    batch = BatchExecutor(2, stack=TEST_STACK, endpoint_url=emulator.endpoint_url,
                          visibility_timeout=3, monitor_interval=0.5)
    process = cf.ProcessPoolExecutor(2)
    yield {"process": process, "batch": batch}
    process.shutdown()
    batch.shutdown(wait=True, cancel_futures=True)


def compute_everywhere(executors, *collections):
    """dask.compute on each executor and on dask's synchronous scheduler (the oracle)."""
    results = {name: dask.compute(*collections, scheduler=ex) for name, ex in executors.items()}
    results["sync"] = dask.compute(*collections, scheduler="sync")
    return results


def test_delayed_graph(executors):
    # A tree reduction over 64 leaves with a shared node (a diamond) and two outputs.
    leaves = [dask.delayed(inc)(i) for i in range(64)]
    shared = dask.delayed(square)(leaves[3])
    level = [dask.delayed(add)(leaf, shared) for leaf in leaves]
    while len(level) > 1:
        level = [dask.delayed(add)(a, b) for a, b in zip(level[::2], level[1::2], strict=True)]
    total = level[0]
    squares = dask.delayed(list)([dask.delayed(square)(x) for x in leaves[:10]])

    results = compute_everywhere(executors, total, squares)
    expected_total = sum(i + 1 for i in range(64)) + 64 * 16
    assert results["sync"] == (expected_total, [(i + 1) ** 2 for i in range(10)])
    assert results["batch"] == results["process"] == results["sync"]


def test_delayed_error_is_the_same(executors):
    good = dask.delayed(inc)(1)
    bad = dask.delayed(fail_on)(good, 2)
    errors = {}
    for name, ex in executors.items():
        with pytest.raises(ValueError) as info:
            dask.compute(dask.delayed(add)(bad, 1), scheduler=ex)
        errors[name] = (type(info.value), str(info.value))
    assert errors["batch"] == errors["process"] == (ValueError, "bad value 2")
    # The executor is still usable after a failed graph.
    assert dask.compute(good, scheduler=executors["batch"]) == (2,)


def test_array_reductions_and_transpose(executors):
    x = da.random.RandomState(42).random_sample((240, 240), chunks=(60, 60))
    collections = ((x + x.T).mean(axis=0), x.dot(x.T).sum(), x.std(), x[::7, 3:200:5].max())
    results = compute_everywhere(executors, *collections)
    ref = x.compute(scheduler="sync")
    np.testing.assert_allclose(results["sync"][0], (ref + ref.T).mean(axis=0))
    np.testing.assert_allclose(results["sync"][1], (ref @ ref.T).sum())
    np.testing.assert_allclose(results["sync"][2], ref.std())
    for name in ("batch", "process"):
        for got, want in zip(results[name], results["sync"], strict=True):
            # Same graph, same chunking, same order of reduction: bit-identical.
            np.testing.assert_array_equal(got, want)


def test_array_map_overlap(executors):
    x = da.random.RandomState(7).random_sample((200, 200), chunks=(50, 50))
    y = x.map_overlap(smooth, depth=1, boundary="reflect")
    results = compute_everywhere(executors, y)
    # The oracle: the same filter on the whole array, padded by one pixel as dask's "reflect"
    # boundary pads (the edge pixel repeated: numpy's "symmetric").
    ref = x.compute(scheduler="sync")
    padded = np.pad(ref, 1, mode="symmetric")
    whole = smooth(padded)[1:-1, 1:-1]
    np.testing.assert_allclose(results["sync"][0], whole, rtol=1e-12)
    np.testing.assert_array_equal(results["batch"][0], results["sync"][0])
    np.testing.assert_array_equal(results["process"][0], results["sync"][0])


def test_bag_pipeline(executors):
    b = db.from_sequence(range(1000), npartitions=10)
    evens = b.map(square).filter(is_even)
    collections = (
        evens.sum(),
        evens.count(),
        b.map(operator.mod, 7).frequencies(sort=True),
        b.foldby(is_even, add, 0),
        b.map(inc).take(5, npartitions=-1, compute=False),
    )
    results = compute_everywhere(executors, *collections)
    squares_even = [i * i for i in range(1000) if (i * i) % 2 == 0]
    expected = (
        sum(squares_even),
        len(squares_even),
        [(r, sum(1 for i in range(1000) if i % 7 == r)) for r in range(7)],
        sorted([(True, sum(range(0, 1000, 2))), (False, sum(range(1, 1000, 2)))]),
        (1, 2, 3, 4, 5),
    )
    normalised = {
        name: (r[0], r[1], sorted(r[2]), sorted(r[3]), tuple(r[4])) for name, r in results.items()
    }
    assert normalised["sync"] == expected
    assert normalised["batch"] == normalised["process"] == expected


def test_dask_gets_enough_concurrency(executors):
    """dask sizes its in-flight tasks from _max_workers: BatchExecutor offers more than its
    worker count, so the round trip is hidden behind queued tasks; all of them still run."""
    from dask.base import get_scheduler

    batch = executors["batch"]
    get = get_scheduler(scheduler=batch)
    assert get.args[1] >= 2 * batch.max_workers
    values = [dask.delayed(inc)(i) for i in range(200)]
    assert dask.compute(*values, scheduler=batch) == tuple(range(1, 201))


def test_shut_down_executor_is_refused(emulator):
    from batchexec import BatchExecutor

    ex = BatchExecutor(1, stack=TEST_STACK, endpoint_url=emulator.endpoint_url)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        dask.compute(dask.delayed(inc)(1), scheduler=ex)
