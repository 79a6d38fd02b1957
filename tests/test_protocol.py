"""Pure units: message codec, task table (packing, credits, exactly-once), settings, pickling."""

from __future__ import annotations

import json
import pickle
import threading
from concurrent.futures import Future

import pytest

from batchexec import protocol, serialization
from batchexec.config import MAX_INLINE_LIMIT, ExecutorOptions, SessionSettings
from batchexec.dispatcher import TaskDispatcher
from batchexec.errors import (
    ConfigurationError,
    RemoteTraceback,
    SerializationError,
    WorkersUnavailableError,
)
from batchexec.protocol import ResultEntry, ResultMessage, TaskEntry, TaskMessage, WorkerEvent
from batchexec.serialization import (
    BLOB_THRESHOLD,
    SHARE_THRESHOLD,
    BlobTable,
    digest,
    dumps,
    dumps_apart,
    dumps_exception,
    loads,
)
from batchexec.tasks import INITIAL_PACK, MAX_PACK, TaskTable, WorkItem
from batchexec.threads import ServiceThread


def enqueue(table, work):
    table.reserve(work.future)
    assert table.add(work)


def item(i, fn=b"fn", args=b"args"):
    return WorkItem(str(i), Future(), "f", fn, digest(fn), args)


def test_task_message_round_trip():
    msg = TaskMessage("s1", [TaskEntry("1", fn="d", args=b"\x00\xff"),
                             TaskEntry("2", fn="big", ref="k", blobs=["b1"])],
                      {"d": b"pickled"}, prior_attempts=2, refs={"big": "s/blobs/big",
                                                                 "b1": "s/blobs/b1"})
    back = protocol.decode(msg.encode())
    assert back == msg


def test_task_message_with_buffers_round_trip():
    msg = TaskMessage("s1", [TaskEntry("1", fn="d", args=b"a", buffers=["b1", "b2", "b1"]),
                             TaskEntry("2", fn="d", ref="k", sha="h", buffers=["b3"])],
                      {"d": b"pickled"}, refs={"b3": "s/blobs/b3"},
                      bufs={"b1": b"\x00" * 10, "b2": b"\xff\x01"})
    back = protocol.decode(msg.encode())
    assert back == msg


def test_messages_with_large_payloads_written_by_hand_round_trip_in_order():
    large = bytes(range(256)) * (protocol.HAND_WRITTEN // 256)  # the threshold exactly
    msg = TaskMessage('s"1', [TaskEntry("1", fn="d", args=b"small"),
                              TaskEntry('2"\\', fn="d", args=large, buffers=["b1"]),
                              TaskEntry("3", fn="d", ref="k", sha="h", blobs=["b2"]),
                              TaskEntry("4", fn="d", args=large[:-1])],
                      {"d": large}, prior_attempts=1, refs={"b2": "s/blobs/b2"},
                      bufs={"b1": large * 3})
    text = msg.encode()
    assert protocol.decode(text) == msg  # tasks keep their order: a pack runs in it
    assert json.loads(text)["tasks"][1]["args"] == protocol.b64(large)
    results = ResultMessage("s", "w", [ResultEntry("1", True, 0.5, data=large),
                                       ResultEntry("2", False, 1.0, ref="key", sha="h"),
                                       ResultEntry("3", True, 0.0, data=b"")])
    assert protocol.decode(results.encode()) == results
    assert protocol.decode(ResultMessage("s", "w", []).encode()).results == []


def test_a_bodys_literal_is_what_json_dumps_writes():
    """MessageQueue sends JsonText.literal as the body's JSON string: it must be exactly what
    botocore would have written, for small and large payloads and ids that need escaping."""
    for payload in (b"x", b"\x00" * 5000):
        tasks = TaskMessage("s\u00e9", [TaskEntry('a"\\\n', "f\u2603", payload, None, [], None,
                                                   ["b"])],
                            {"f\u2603": b"fn"}, 2, {"r": "k"}, {"b": payload})
        results = ResultMessage("s", 'w"1', [ResultEntry("\t", False, 0.5, payload),
                                             ResultEntry("2", True, 0.1, None, "ref", "sha")])
        for text in (tasks.encode(), results.encode()):
            assert text.literal == json.dumps(text)
            assert json.loads(text.literal) == text


def test_result_and_event_round_trip():
    msg = ResultMessage("s", "w:0", [ResultEntry("1", True, 0.5, data=b"x"),
                                     ResultEntry("2", False, 1.0, ref="key")])
    assert protocol.decode(msg.encode()) == msg
    ev = WorkerEvent("s", "w", WorkerEvent.INITIALIZER_FAILED, b"err")
    assert protocol.decode(ev.encode()) == ev


def test_other_versions_and_garbage_are_clear_errors():
    body = json.loads(TaskMessage("s", []).encode())
    body["v"] = 1
    with pytest.raises(protocol.ProtocolError, match="version 1 is not supported.*same batchexec"):
        protocol.decode(json.dumps(body))
    with pytest.raises(protocol.ProtocolError, match="not JSON"):
        protocol.decode("hello")
    with pytest.raises(protocol.ProtocolError, match="malformed"):
        protocol.decode(json.dumps({"v": protocol.PROTOCOL_VERSION, "type": "tasks"}))


def test_single_keeps_only_its_callable():
    msg = TaskMessage("s", [TaskEntry("1", fn="a", args=b""), TaskEntry("2", fn="b", args=b"")],
                      {"a": b"A", "b": b"B"})
    one = msg.single(msg.tasks[1], prior_attempts=1)
    assert one.fns == {"b": b"B"} and one.tasks == [msg.tasks[1]] and one.prior_attempts == 1


def test_single_keeps_only_its_references():
    msg = TaskMessage("s", [TaskEntry("1", fn="a", args=b"", blobs=["x"]),
                            TaskEntry("2", fn="b", ref="r2", blobs=["y"])],
                      {"a": b"A"}, refs={"b": "k/b", "x": "k/x", "y": "k/y"})
    one = msg.single(msg.tasks[1], prior_attempts=0)
    assert one.fns == {} and one.refs == {"b": "k/b", "y": "k/y"}


def test_subset_keeps_only_the_buffers_its_tasks_list():
    msg = TaskMessage("s", [TaskEntry("1", fn="a", args=b"", buffers=["x", "y"]),
                            TaskEntry("2", fn="a", args=b"", buffers=["y"]),
                            TaskEntry("3", fn="a", args=b"", buffers=["z"])],
                      {"a": b"A"}, refs={"z": "k/z"}, bufs={"x": b"X", "y": b"Y"})
    two = msg.subset(msg.tasks[1:], prior_attempts=3)
    assert two.bufs == {"y": b"Y"} and two.refs == {"z": "k/z"} and two.fns == {"a": b"A"}
    assert two.tasks == msg.tasks[1:] and two.prior_attempts == 3
    assert msg.single(msg.tasks[0], 0).bufs == {"x": b"X", "y": b"Y"}


def test_packing_starts_small_then_follows_task_duration():
    table = TaskTable(credits=4)
    for i in range(2000):
        enqueue(table, item(i))
    packs = table.take_packs(10)
    assert [len(p) for p in packs] == [INITIAL_PACK] * 4
    for p in packs:
        table.register_message([(i, None) for i in p])
    assert table.credits == 0
    # Results measured at 1 ms a task: packs of 0.5 s / 1 ms = 500, capped at MAX_PACK.
    for p in packs:
        for it in p:
            assert table.resolve(it.task_id, seconds=0.001) is not None
    assert table.credits == 4
    assert [len(p) for p in table.take_packs(10)] == [MAX_PACK] * 4


def test_low_load_sends_one_task_per_message():
    table = TaskTable(credits=4)
    enqueue(table, item(0))
    assert [len(p) for p in table.take_packs(10)] == [1]


def test_long_tasks_go_one_per_message():
    table = TaskTable(credits=2)
    table.mean_seconds = 2.0
    for i in range(10):
        enqueue(table, item(i))
    assert [len(p) for p in table.take_packs(10)] == [1, 1]


def test_resolution_is_exactly_once_and_returns_credit_per_message():
    table = TaskTable(credits=1)
    items = [item(i) for i in range(3)]
    for it in items:
        enqueue(table, it)
    (pack,) = table.take_packs(10)
    table.register_message([(i, None) for i in pack])
    assert table.credits == 0
    assert table.resolve("0") is not None
    assert table.resolve("0") is None  # duplicate
    assert table.resolve("nope") is None  # stranger
    table.resolve("1")
    assert table.credits == 0
    table.resolve("2")
    assert table.credits == 1 and table.outstanding() == 0 and table.resolved == 3


def test_take_packs_returns_none_when_closing():
    table = TaskTable(credits=1)
    threading.Timer(0.05, table.close).start()
    assert table.take_packs(10) is None


def test_dispatcher_splits_messages_under_the_size_limit():
    table = TaskTable(credits=10)
    d = TaskDispatcher(table, queue=None, store=None, session="s", inline_limit=256 * 1024,
                       on_broken=pytest.fail)
    items = [item(i, args=b"x" * 200_000) for i in range(12)]
    for it in items:
        it.future.set_running_or_notify_cancel()
    out = d._encode(items)
    assert sum(len(batch) for batch, _, _ in out) == 12
    assert len(out) > 1
    for batch, body, _ in out:
        assert len(body.encode()) <= protocol.MESSAGE_BODY_LIMIT
        msg = protocol.decode(body)
        assert len(msg.fns) == 1 and [t.task_id for t in msg.tasks] == [b.task_id for b, _ in batch]


def _array_item(i, *arrays, args_pad=0):
    """A WorkItem pickled as the executor does: out-of-band buffers apart, by digest."""
    args, buffers, order = dumps_apart(((*arrays, b"p" * args_pad), {}), "arguments", blobs={})
    return WorkItem(str(i), Future(), "f", b"fn", digest(b"fn"), args, {}, buffers, order)


def test_dispatcher_sends_a_buffer_its_tasks_share_once_per_message():
    np = pytest.importorskip("numpy")
    table = TaskTable(credits=10)
    d = TaskDispatcher(table, queue=None, store=None, session="s", inline_limit=64 * 1024,
                       on_broken=pytest.fail)
    chunk = np.random.default_rng(0).random((50, 50))  # 20 KB, as a dask chunk
    own = [np.full((40, 40), float(i)) for i in range(9)]
    items = [_array_item(i, chunk, own[i]) for i in range(9)]
    (batch, body, _), = d._encode(items)  # nine 33 KB tasks share one message: 20 KB is sent once
    assert len(body.encode()) < 9 * 4 / 3 * own[0].nbytes + 4 / 3 * chunk.nbytes + 4096
    msg = protocol.decode(body)
    assert set(msg.bufs) == {items[0].buffer_order[0], *(it.buffer_order[1] for it in items)}
    for it, entry in zip(items, msg.tasks, strict=True):
        assert entry.buffers == list(it.buffer_order)
        (got_chunk, got_own, _), _ = loads(entry.args, "arguments", None,
                                           [bytearray(msg.bufs[k]) for k in entry.buffers])
        assert np.array_equal(got_chunk, chunk) and np.array_equal(got_own, own[int(it.task_id)])
    # A buffer that would take the task past the inline limit goes to S3 once per session.
    store = _RecordingStore()
    d = TaskDispatcher(table, queue=None, store=store, session="s", inline_limit=15_000,
                       on_broken=pytest.fail)
    items = [_array_item(i, chunk, own[i]) for i in range(3)]
    out = d._encode(items)
    assert store.puts == [f"blobs/{items[0].buffer_order[0]}-1"]
    for _, body, _ in out:
        msg = protocol.decode(body)
        assert items[0].buffer_order[0] in msg.refs and items[0].buffer_order[0] not in msg.bufs
        assert all(it.buffer_order[1] in msg.bufs for it, _ in out[0][0])


def test_dispatcher_never_packs_past_the_message_limit_with_buffers():
    np = pytest.importorskip("numpy")
    table = TaskTable(credits=10)
    store = _RecordingStore()
    d = TaskDispatcher(table, queue=None, store=store, session="s",
                       inline_limit=MAX_INLINE_LIMIT, on_broken=pytest.fail)
    rng = np.random.default_rng(1)
    items = [_array_item(i, rng.random(20_000), rng.random(20_000), args_pad=30_000)
             for i in range(12)]  # 320 KB of buffers and 30 KB of arguments each: two a message
    out = d._encode(items)
    assert sum(len(batch) for batch, _, _ in out) == 12 and store.puts == []
    assert len(out) == 6
    for _, body, _ in out:
        assert len(body.encode()) <= protocol.MESSAGE_BODY_LIMIT


def test_a_task_at_the_largest_inline_limit_fits_one_message():
    """MAX_INLINE_LIMIT's reason: a callable and arguments of that size each, in base64,
    still fit one SQS message (with the session's attributes)."""
    table = TaskTable(credits=10)
    d = TaskDispatcher(table, queue=None, store=_RecordingStore(), session="s" * 36,
                       inline_limit=MAX_INLINE_LIMIT, on_broken=pytest.fail)
    it = item(0, fn=b"f" * MAX_INLINE_LIMIT, args=b"a" * MAX_INLINE_LIMIT)
    ((batch, body, _),) = d._encode([it])
    assert len(batch) == 1 and d.store.puts == []
    assert len(body.encode()) <= protocol.MESSAGE_BODY_LIMIT < protocol.SQS_MESSAGE_LIMIT


class _RecordingStore:
    def __init__(self):
        self.puts = []

    def put(self, key, data):
        self.puts.append(key)
        return key


def test_out_of_band_buffers_are_set_apart_in_order_and_come_back_writable():
    np = pytest.importorskip("numpy")
    a = np.arange(1000.0)  # 8 KB: set apart
    small = np.arange(10.0)  # 80 bytes: stays in the pickle
    strided = np.arange(2000.0)[::2]  # not contiguous: stays in the pickle
    fortran = np.asfortranarray(np.ones((40, 30)))
    raw = []
    data = dumps(((a, small, a, strided, fortran), {}), "arguments", buffers=raw)
    assert [len(b) for b in raw] == [a.nbytes, fortran.nbytes]  # `a` twice: pickled once
    assert len(data) < strided.nbytes + 1024  # the buffers set apart are not also in it
    (back, _) = loads(data, "arguments", None, [bytearray(b) for b in raw])
    assert back[0] is back[2] and back[3].tolist() == strided.tolist()
    assert np.array_equal(back[4], fortran) and back[4].flags.f_contiguous
    back[0][0] = 42.0  # writable, as an array pickled in band is
    assert a[0] == 0.0
    raw = []
    dumps(np.zeros(SHARE_THRESHOLD // 8 - 1), "arguments", buffers=raw)
    assert raw == []
    blobs, large = {}, np.arange(BLOB_THRESHOLD // 8)
    data = dumps(((large, a), {}), "arguments", blobs=blobs, buffers=raw)
    assert len(blobs) == 1 and [len(b) for b in raw] == [a.nbytes]  # large: a blob, as before
    table = BlobTable()
    for key, pickled in blobs.items():
        table.add(key, pickled)
    (back, _) = loads(data, "arguments", table, [bytearray(b) for b in raw])
    assert np.array_equal(back[0], large) and np.array_equal(back[1], a)
    with pytest.raises(SerializationError, match="out-of-band"):
        loads(dumps(a, "arguments", buffers=[]), "arguments")  # buffers missing


def test_blob_table_gives_callables_the_cached_object_and_arguments_private_copies():
    np = pytest.importorskip("numpy")
    values = {"floats": np.arange(4.0), "objects": np.array([[1], [2]] + [None], dtype=object),
              "bytes": b"abc", "bytearray": bytearray(b"abc")}
    table = BlobTable()
    for key, value in values.items():
        table.add(key, pickle.dumps(value))
    first, second = table.private(), table.private()
    assert first["floats"] is first["floats"]  # named twice in one call: one object
    first["floats"][0] = 9.0
    first["objects"][0].append(3)
    first["bytearray"][0] = 0
    assert second["floats"][0] == 0.0 and second["objects"][0] == [1]
    assert second["bytearray"] == b"abc" and table["bytearray"] == b"abc"
    assert second["bytes"] is table["bytes"]  # immutable: shared
    assert first["floats"] is not table["floats"] and table["floats"][0] == 0.0


def test_session_settings_round_trip_through_environment():
    s = SessionSettings("a", "q", "r", "d", "b", "p/", visibility_timeout=5, idle_timeout=2.5,
                        initializer_key="k")
    assert SessionSettings.from_env(s.to_env()) == s
    with pytest.raises(ConfigurationError, match="BATCHEXEC_SESSION"):
        SessionSettings.from_env({})


def test_executor_options_are_validated():
    with pytest.raises(ConfigurationError, match="max_attempts"):
        ExecutorOptions(max_attempts=0)
    with pytest.raises(ConfigurationError, match="inline_limit"):
        ExecutorOptions(inline_limit=10**9)


@pytest.mark.parametrize("name, value, allowed", [
    ("visibility_timeout", 2.5, r"an integer in \[1, 43200\]"),
    ("visibility_timeout", 43201, r"\[1, 43200\].*12 hours|SQS VisibilityTimeout"),
    ("max_attempts", 1000, r"\[1, 999\].*maxReceiveCount"),
    ("max_attempts", True, "an integer"),
    ("max_task_seconds", 50_000, r"\[1, 41400\].*12 hours"),
    ("forward_output", "yes", "True or False"),
    ("start_timeout", -1, r"\[1, 604800\]"),
])
def test_options_outside_aws_limits_are_refused_with_the_range(name, value, allowed):
    with pytest.raises(ConfigurationError, match=f"{name} must be.*{allowed}"):
        ExecutorOptions(**{name: value})


def test_pickling_errors_say_what_to_do():
    with pytest.raises(SerializationError, match="cannot pickle the argument.*open the resource"):
        dumps(threading.Lock(), "argument")
    with pytest.raises(SerializationError, match="module 'no_such_modul' is not importable"):
        loads(pickle.dumps(_Global()).replace(b"test_protocol", b"no_such_modul"), "callable")


def test_payloads_of_importable_code_skip_cloudpickle_and_the_rest_keep_its_rules(monkeypatch):
    """The C pickler takes payloads whose functions and classes all go by reference (most
    of them: dask's graph nodes); anything cloudpickle's rules decide goes through Pickler."""
    import functools
    import io
    import os

    from batchexec import serialization

    used = []

    class Counting(serialization.Pickler):
        def dump(self, obj):
            used.append(obj)
            return super().dump(obj)

    monkeypatch.setattr(serialization, "Pickler", Counting)
    plain = ((functools.partial(os.path.join, "a"), [1, 2.5], {"t": _Global}, _Global()), {})
    back = loads(dumps(plain, "arguments"), "arguments")
    assert back[0][0]("b") == os.path.join("a", "b") and back[0][2]["t"] is _Global
    assert used == []
    offset = 3
    assert loads(dumps(lambda x: x + offset, "callable"), "callable")(1) == 4  # by value
    assert len(used) == 1
    assert loads(dumps(_Global.method, "callable"), "callable") == _Global.method  # getattr
    for buffer in (io.BytesIO(b"x"), io.StringIO("x")):  # plain pickle would take these
        with pytest.raises(SerializationError, match="open file object"):
            dumps(([buffer], {}), "arguments")


def test_results_skip_cloudpickle_only_where_it_would_write_the_same(monkeypatch):
    import cloudpickle

    from batchexec import serialization

    calls = []
    real = cloudpickle.dumps
    monkeypatch.setattr(cloudpickle, "dumps", lambda *a, **k: calls.append(a) or real(*a, **k))
    plain = {"rows": [(1, 2.5, "x")], "type": _Global, "obj": _Global()}
    back = loads(serialization.dumps_result(plain), "result")
    assert back["rows"] == plain["rows"] and back["type"] is _Global and calls == []
    scale = 3
    assert loads(serialization.dumps_result(lambda v: v * scale), "result")(2) == 6
    assert len(calls) == 1  # by value: cloudpickle's rules, as before


def test_a_module_registered_for_pickling_by_value_goes_by_value_after_it_went_by_reference(
    tmp_path, monkeypatch
):
    import sys

    import cloudpickle

    (tmp_path / "bx_by_value_mod.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import bx_by_value_mod

    try:
        assert b"bx_by_value_mod" in dumps(bx_by_value_mod.double, "callable")  # by reference
        cloudpickle.register_pickle_by_value(bx_by_value_mod)
        data = dumps(bx_by_value_mod.double, "callable")
    finally:
        cloudpickle.unregister_pickle_by_value(bx_by_value_mod)
        del sys.modules["bx_by_value_mod"]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    assert loads(data, "callable")(21) == 42  # the module is gone: it came by value


def test_remote_exception_keeps_type_and_traceback():
    try:
        raise KeyError("k")
    except KeyError as exc:
        data = dumps_exception(exc)
    rebuilt = loads(data, "exception").rebuild()
    assert isinstance(rebuilt, KeyError)
    assert isinstance(rebuilt.__cause__, RemoteTraceback)
    assert "test_remote_exception_keeps_type_and_traceback" in str(rebuilt.__cause__)


def test_a_service_thread_that_crashes_breaks_the_executor_instead_of_dying_silently():
    reported = []

    class Crashing(ServiceThread):
        def serve(self):
            raise KeyError("boom")

    t = Crashing("batchexec-test", reported.append)
    t.start()
    t.join(5)
    (error,) = reported
    assert isinstance(error, WorkersUnavailableError)
    assert "batchexec-test" in str(error) and "KeyError" in str(error)
    assert isinstance(error.__cause__, KeyError)


class _Global:
    """Pickled by reference: renaming its module in the pickle simulates a missing module."""

    @classmethod
    def method(cls):
        return cls


def test_a_callable_that_goes_by_reference_is_pickled_once(monkeypatch):
    """dask submits one module function per task: its pickle is kept, not written again."""
    import json as some_module  # any importable function goes by reference

    first = serialization.dumps_callable(some_module.dumps, "callable")
    calls = []
    monkeypatch.setattr(serialization, "dumps", lambda *a, **k: calls.append(a) or b"")
    assert serialization.dumps_callable(some_module.dumps, "callable") == first
    assert calls == []
    assert loads(first[0], "callable") is some_module.dumps
    assert first[1] == serialization.digest(first[0]) and first[2] == {}
    # functions that go by value are pickled every time (a script may define a name again)
    scale = 2
    serialization.dumps_callable(lambda v: v * scale, "callable")
    assert len(calls) == 1


def test_a_cached_callable_goes_by_value_once_its_module_is_registered(tmp_path, monkeypatch):
    import sys

    import cloudpickle

    (tmp_path / "bx_cached_mod.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import bx_cached_mod

    try:
        by_reference = serialization.dumps_callable(bx_cached_mod.triple, "callable")[0]
        assert b"bx_cached_mod" in by_reference
        assert serialization.dumps_callable(bx_cached_mod.triple, "callable")[0] == by_reference
        cloudpickle.register_pickle_by_value(bx_cached_mod)
        data = serialization.dumps_callable(bx_cached_mod.triple, "callable")[0]
    finally:
        cloudpickle.unregister_pickle_by_value(bx_cached_mod)
        del sys.modules["bx_cached_mod"]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    assert data != by_reference
    assert loads(data, "callable")(7) == 21  # the module is gone: it came by value
