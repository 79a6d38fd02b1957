"""The supervisor with a real runner process, over in-memory queues (no emulator needed).

Each test hands the supervisor task messages through a FakeQueue, lets it run until its idle
timeout, and inspects what it sent: events, output and results in order, deletions, dead
letters. The task functions (tests/workerfuncs.py) crash, stall and print for real.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import threading
import time

import cloudpickle
import pytest
import workerfuncs as wf

from batchexec import protocol
from batchexec.config import SessionSettings
from batchexec.errors import (
    InitializerCrashedError,
    TaskCrashedError,
    TaskTimeoutError,
)
from batchexec.protocol import (
    OutputMessage,
    ResultMessage,
    TaskEntry,
    TaskMessage,
    WorkerEvent,
)
from batchexec.serialization import digest, dumps_apart, loads
from batchexec.transport import Received, TransportError
from batchexec.worker import worker_id
from batchexec.worker.supervisor import Supervisor

pytestmark = pytest.mark.timeout(120)
TESTS = os.path.dirname(__file__)


class FakeQueue:
    """A MessageQueue in memory: what was sent (with monotonic timestamps), received,
    deleted and extended."""

    def __init__(self, messages=()):
        self.inbox = list(messages)
        self.sent: list[tuple[float, str]] = []
        self.deleted: list[str] = []
        self.extended: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def send(self, bodies, session):
        with self._lock:
            self.sent += [(time.monotonic(), b) for b in bodies]

    def send_each(self, bodies, session, rejected=""):
        self.send(bodies, session)
        return [None] * len(bodies)

    def receive(self, max_messages=10, wait=20):
        if self.inbox:
            return [self.inbox.pop(0)]
        time.sleep(min(wait, 0.05))
        return []

    def delete(self, receipts):
        self.deleted += list(receipts)

    def extend(self, receipt, seconds):
        self.extended.append((receipt, seconds))

    def decoded(self):
        return [protocol.decode(b) for _, b in self.sent]


class FakeStore:
    def __init__(self, objects=None):
        self.objects = dict(objects or {})

    def get(self, key):
        return self.objects[key]

    def put(self, name, data):
        self.objects[name] = data
        return name


def call(fn, *args, **kwargs):
    return cloudpickle.dumps(fn), cloudpickle.dumps((args, kwargs))


def message(*calls, prior=0, receive_count=1, receipt="r1", ids=None):
    """A task message of (fn_bytes, args_bytes) calls, as received."""
    fns, entries = {}, []
    for i, (fn, args) in enumerate(calls):
        d = digest(fn)
        fns[d] = fn
        entries.append(TaskEntry(ids[i] if ids else str(i), fn=d, args=args))
    body = TaskMessage("s", entries, fns, prior).encode()
    return Received(body, receipt, f"m-{receipt}", receive_count, {})


def array_message(*calls):
    """A task message whose calls' array arguments travel out of band, as the client sends
    them: each distinct buffer once in the message's ``bufs``."""
    fns, entries, bufs = {}, [], {}
    for i, (fn, *args) in enumerate(calls):
        fn_bytes = cloudpickle.dumps(fn)
        data, buffers, order = dumps_apart((args, {}), "arguments")
        fns[digest(fn_bytes)] = fn_bytes
        bufs.update(buffers)
        entries.append(TaskEntry(str(i), fn=digest(fn_bytes), args=data, buffers=list(order)))
    return Received(TaskMessage("s", entries, fns, 0, bufs=bufs).encode(), "r1", "m-r1", 1, {})


@pytest.fixture
def worker(monkeypatch):
    """Build and run a supervisor: worker(messages, **settings) -> (exit code, queues)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, *sys.path]))

    def run(messages, store=None, **overrides):
        kw = dict(visibility_timeout=3, idle_timeout=1.5, max_attempts=2)
        kw.update(overrides)
        if kw.get("initializer_key") and "initializer_digest" not in kw:
            # As the client does: the digest of the initializer it uploaded.
            kw["initializer_digest"] = digest(store.objects[kw["initializer_key"]])
        settings = SessionSettings("s", "tq", "rq", "dq", "b", "p/", **kw)
        tasks, results, dead = FakeQueue(messages), FakeQueue(), FakeQueue()
        sup = Supervisor(settings, "w:0", tasks, results, dead, store or FakeStore())
        code = sup.run()
        return code, sup, tasks, results, dead

    return run


def results_of(queue: FakeQueue) -> dict:
    """task id -> (ok, unpickled value or rebuilt exception)."""
    out = {}
    for msg in queue.decoded():
        if isinstance(msg, ResultMessage):
            for e in msg.results:
                value = loads(e.data, "result")
                out[e.task_id] = (e.ok, value if e.ok else value.rebuild())
    return out


def test_first_message_is_started_with_versions_then_results_then_delete(worker, tmp_path):
    code, sup, tasks, results, _ = worker([message(call(wf.record, 1, str(tmp_path)),
                                                   call(wf.sleep_then, "x", 0))])
    assert code == 0
    first = results.decoded()[0]
    assert isinstance(first, WorkerEvent) and first.event == WorkerEvent.STARTED
    assert first.info == {"python": f"{sys.version_info.major}.{sys.version_info.minor}",
                          "cloudpickle": cloudpickle.__version__,
                          "protocol": protocol.PROTOCOL_VERSION}
    assert results_of(results) == {"0": (True, 1), "1": (True, "x")}
    assert tasks.deleted == ["r1"]
    assert sup.runners_started == 1


def test_a_crashing_task_is_retried_in_a_fresh_runner_and_its_pack_mates_are_not_charged(
        worker, tmp_path):
    log = str(tmp_path)
    code, sup, tasks, results, _ = worker(
        [message(call(wf.record, "a", log), call(wf.exit_hard, "b", log, 3),
                 call(wf.record, "c", log))],
        max_attempts=3,
        initializer_key="init",
        store=FakeStore({"init": cloudpickle.dumps((wf.init_count, (log,)))}),
    )
    assert code == 0
    got = results_of(results)
    assert got["0"] == (True, "a") and got["2"] == (True, "c")
    ok, err = got["1"]
    assert not ok and isinstance(err, TaskCrashedError)
    assert err.task_id == "1" and err.attempts == 3 and err.exit_status == 3
    assert "exited with status 3" in str(err) and "3 attempt" in str(err)
    assert "task b is about to exit with status 3" in err.output_tail
    assert "task b is about to exit" in str(err)
    assert len(wf.runs(log, "a")) == 1 and len(wf.runs(log, "c")) == 1
    assert len(wf.runs(log, "b")) == 3
    assert len(set(wf.runs(log, "b"))) == 3  # each attempt in a fresh process
    # One runner for a, three for b's attempts... and c ran in a fresh one: initializer
    # re-run in each.
    assert sup.runners_started == 4 and len(wf.runs(log, "init")) == 4
    assert tasks.deleted == ["r1"]


def test_prior_attempts_and_redeliveries_count_toward_max_attempts(worker, tmp_path):
    log = str(tmp_path)
    msg = message(call(wf.exit_hard, "b", log, 3), prior=1, receive_count=2)
    code, _, tasks, results, _ = worker([msg], max_attempts=3)
    ok, err = results_of(results)["0"]
    assert isinstance(err, TaskCrashedError) and err.attempts == 3
    assert len(wf.runs(log, "b")) == 1  # 1 prior + 1 lost with a supervisor + this run
    assert tasks.deleted == ["r1"]


def test_segfault_is_named_and_shows_the_python_stack(worker, tmp_path):
    code, _, _, results, _ = worker([message(call(wf.segfault, "s", str(tmp_path)))],
                                    max_attempts=1)
    ok, err = results_of(results)["0"]
    assert isinstance(err, TaskCrashedError) and err.exit_status == -11
    assert "killed by SIGSEGV" in str(err)
    assert "about to dereference NULL" in err.output_tail
    assert "Segmentation fault" in err.output_tail  # faulthandler's report


def test_a_task_that_crashes_once_succeeds_on_its_retry(worker, tmp_path):
    code, _, _, results, _ = worker(
        [message(call(wf.crash_first_run, 7, str(tmp_path), "kill"))], max_attempts=2)
    assert results_of(results)["0"] == (True, 7)
    assert len(wf.runs(str(tmp_path), 7)) == 2


def test_a_finished_result_is_sent_while_its_pack_mate_still_runs(worker, tmp_path):
    started = time.monotonic()
    code, _, tasks, results, _ = worker(
        [message(call(wf.sleep_then, "quick", 0), call(wf.sleep_then, "slow", 3))])
    sent = {}
    for at, body in results.sent:
        msg = protocol.decode(body)
        if isinstance(msg, ResultMessage):
            for e in msg.results:
                sent[e.task_id] = at - started
    # The quick result leaves long before the slow task ends (generous margins: the runner
    # takes a moment to start; the flush timer is 0.2 s).
    assert sent["1"] - sent["0"] > 2.0, sent
    assert tasks.deleted == ["r1"]


def test_output_is_forwarded_line_by_line_before_its_result(worker):
    code, _, _, results, _ = worker([message(call(wf.chatty, "t", 3), call(wf.chatty, "u", 1))])
    order = []  # ("line", id, stream, text) and ("result", id), in send order
    for msg in results.decoded():
        if isinstance(msg, OutputMessage):
            order += [("line", ln.task_id, ln.stream, ln.text) for ln in msg.lines]
        elif isinstance(msg, ResultMessage):
            order += [("result", e.task_id) for e in msg.results]
    lines_of_t = [(s, t) for kind, i, *rest in order if kind == "line" and i == "0"
                  for s, t in [rest]]
    assert ("stdout", "task t line 0") in lines_of_t and ("stdout", "task t line 2") in lines_of_t
    assert ("stderr", "task t to stderr") in lines_of_t
    assert ("stderr", "task t via logging") in lines_of_t
    assert ("stdout", "task t via fd 1") in lines_of_t
    assert ("stdout", "task t via printf") in lines_of_t  # C stdio, flushed after the task
    assert ("stdout", "task t without newline") in lines_of_t  # ended at the task's end
    assert not any(t.startswith("task u") for _, t in lines_of_t)
    last_line_of_t = max(i for i, x in enumerate(order) if x[0] == "line" and x[1] == "0")
    assert last_line_of_t < order.index(("result", "0"))
    last_line_of_u = max(i for i, x in enumerate(order) if x[0] == "line" and x[1] == "1")
    assert last_line_of_u < order.index(("result", "1"))
    # The print order of one stream is kept.
    stdout_t = [t for s, t in lines_of_t if s == "stdout"]
    assert stdout_t.index("task t line 0") < stdout_t.index("task t line 1")


def test_output_is_bounded_per_task_with_a_marker(worker):
    code, _, _, results, _ = worker([message(call(wf.flood, 1, 200), call(wf.flood, 2, 3))],
                                    output_limit=2000)
    lines = [ln for m in results.decoded() if isinstance(m, OutputMessage) for ln in m.lines]
    first = [ln for ln in lines if ln.task_id == "0"]
    marker = [ln for ln in first if "cut after" in ln.text]
    assert len(marker) == 1 and "output_limit=2000" in marker[0].text
    assert first[-1] is marker[0]
    assert sum(len(ln.text) + 1 for ln in first if ln is not marker[0]) <= 2000
    assert len([ln for ln in lines if ln.task_id == "1"]) == 3  # a fresh budget per task


def test_output_forwarding_off(worker):
    code, _, _, results, _ = worker([message(call(wf.flood, 1, 5))], output_limit=0)
    assert not [m for m in results.decoded() if isinstance(m, OutputMessage)]
    assert results_of(results)["0"] == (True, 1)


def test_a_task_past_max_task_seconds_is_stopped_and_not_retried(worker, tmp_path):
    log = str(tmp_path)
    code, _, tasks, results, _ = worker(
        [message(call(wf.pid_then_sleep, "long", log, 30), call(wf.record, "next", log))],
        max_task_seconds=1.5)
    ok, err = results_of(results)["0"]
    assert isinstance(err, TaskTimeoutError) and "12 hours" in str(err)
    assert "split" in str(err) and "max_task_seconds=1.5" in str(err)
    assert len(wf.runs(log, "long")) == 1
    assert results_of(results)["1"] == (True, "next")  # the pack goes on in a new runner
    assert tasks.deleted == ["r1"]


def test_a_worker_too_old_for_another_task_hands_the_rest_back_and_exits(worker, tmp_path):
    log = str(tmp_path)
    msg = message(call(wf.record, "a", log, 1.5), call(wf.record, "b", log),
                  call(wf.record, "c", log), prior=1)
    code, sup, tasks, results, _ = worker([msg], max_task_seconds=2, job_timeout=3.5,
                                          idle_timeout=30)
    assert code == 0 and sup.retiring
    assert results_of(results) == {"0": (True, "a")}
    (handed_back,) = tasks.decoded()
    assert [t.task_id for t in handed_back.tasks] == ["1", "2"]
    assert handed_back.prior_attempts == 1 and set(handed_back.fns) == {
        e.fn for e in handed_back.tasks}
    assert tasks.deleted == ["r1"]
    assert wf.runs(log, "b") == []


def test_tasks_sharing_a_buffer_each_get_their_own_copy_and_hand_backs_keep_it(worker,
                                                                              tmp_path):
    np = pytest.importorskip("numpy")
    import taskfuncs as tf

    shared, other = np.arange(1000.0), np.ones(2000)
    code, _, _, results, _ = worker([array_message(
        (tf.bump_and_sum, shared, 1), (tf.bump_and_sum, shared, 2), (tf.bump_and_sum, other, 3))])
    assert results_of(results) == {"0": (True, shared.sum() + 1000),
                                   "1": (True, shared.sum() + 2000), "2": (True, 2000.0 + 6000)}
    log = str(tmp_path)
    msg = array_message((wf.record, "a", log, 1.5), (tf.bump_and_sum, shared, 1),
                        (tf.bump_and_sum, other, 2), (tf.bump_and_sum, shared, 3))
    code, sup, tasks, results, _ = worker([msg], max_task_seconds=2, job_timeout=3.5,
                                          idle_timeout=30)
    assert code == 0 and sup.retiring and results_of(results) == {"0": (True, "a")}
    (back,) = tasks.decoded()
    assert [t.task_id for t in back.tasks] == ["1", "2", "3"]
    assert back.bufs == {digest(shared.tobytes()): shared.tobytes(),
                         digest(other.tobytes()): other.tobytes()}
    assert back.tasks[0].buffers == back.tasks[2].buffers == [digest(shared.tobytes())]


def test_a_task_whose_buffer_or_callable_is_missing_fails_alone_with_a_protocol_error(worker):
    np = pytest.importorskip("numpy")
    import taskfuncs as tf

    msg = protocol.decode(array_message((tf.bump_and_sum, np.arange(1000.0), 1),
                                        (tf.bump_and_sum, np.ones(1000), 2)).body)
    lost = TaskEntry("2", fn="nowhere", args=msg.tasks[0].args)
    msg.bufs.pop(msg.tasks[0].buffers[0])
    msg.tasks.append(lost)
    code, _, tasks, results, _ = worker([Received(msg.encode(), "r1", "m-r1", 1, {})])
    got = results_of(results)
    assert got["1"] == (True, 1000.0 + 2000)
    assert not got["0"][0] and f"names buffer {msg.tasks[0].buffers[0]!r}" in str(got["0"][1])
    assert not got["2"][0] and "names callable 'nowhere'" in str(got["2"][1])
    assert tasks.deleted == ["r1"]


def _with_receipt(msg: TaskMessage, receipt: str) -> Received:
    return Received(msg.encode(), receipt, f"m-{receipt}", 1, {})


def test_a_buffer_named_as_held_is_taken_from_an_earlier_message_and_a_lacking_one_is_asked_for(
        worker):  # fmt: skip
    np = pytest.importorskip("numpy")
    import taskfuncs as tf

    shared, unseen = np.arange(1000.0), np.ones(1000)
    first = protocol.decode(array_message((tf.bump_and_sum, shared, 1)).body)
    key = first.tasks[0].buffers[0]
    # A later message names the buffer instead of carrying it; a third names one this worker
    # never received (beside a task that needs nothing held: it runs).
    later = protocol.decode(array_message((tf.bump_and_sum, shared, 2)).body)
    later.bufs, later.held = {}, [key]
    later.tasks[0].task_id = "1"
    lacking = protocol.decode(array_message((tf.bump_and_sum, unseen, 3),
                                            (tf.bump_and_sum, shared, 4)).body)
    lost = lacking.tasks[0].buffers[0]
    lacking.bufs.pop(lost)
    lacking.held = [lost]
    lacking.tasks[0].task_id, lacking.tasks[1].task_id = "2", "3"
    code, sup, tasks, results, _ = worker([_with_receipt(first, "r1"), _with_receipt(later, "r2"),
                                           _with_receipt(lacking, "r3")],
                                          buffer_cache_bytes=1 << 20)
    entries = {e.task_id: e for m in results.decoded() if isinstance(m, ResultMessage)
               for e in m.results}
    assert loads(entries["0"].data, "r") == shared.sum() + 1000
    assert loads(entries["1"].data, "r") == shared.sum() + 2000  # from the first message
    assert loads(entries["3"].data, "r") == shared.sum() + 4000
    missing = entries["2"]  # not run, not failed: the client sends it again whole
    assert missing.missing == [lost] and not missing.ok and not missing.data
    assert sup.tasks_run == 3 and sorted(tasks.deleted) == ["r1", "r2", "r3"]


def test_without_a_buffer_cache_every_held_buffer_is_missing(worker):
    np = pytest.importorskip("numpy")
    import taskfuncs as tf

    shared = np.arange(1000.0)
    first = protocol.decode(array_message((tf.bump_and_sum, shared, 1)).body)
    later = protocol.decode(array_message((tf.bump_and_sum, shared, 2)).body)
    later.held, later.bufs = list(later.bufs), {}
    later.tasks[0].task_id = "1"
    _, _, _, results, _ = worker([_with_receipt(first, "r1"), _with_receipt(later, "r2")],
                                 buffer_cache_bytes=0)
    entries = {e.task_id: e for m in results.decoded() if isinstance(m, ResultMessage)
               for e in m.results}
    assert entries["0"].ok and entries["1"].missing == later.held


def test_another_protocol_version_is_reported_and_dead_lettered_unexecuted(worker, tmp_path):
    good = message(call(wf.record, "x", str(tmp_path)))
    old = good.body.replace(f'"v":{protocol.PROTOCOL_VERSION}', '"v":1')
    code, _, tasks, results, dead = worker([Received(old, "r9", "m9", 1, {})])
    events = [m for m in results.decoded() if isinstance(m, WorkerEvent)]
    mismatch = [e for e in events if e.event == WorkerEvent.PROTOCOL_MISMATCH]
    assert len(mismatch) == 1
    assert "version 1" in mismatch[0].message and (
        f"version {protocol.PROTOCOL_VERSION}" in mismatch[0].message)
    assert [b for _, b in dead.sent] == [old] and tasks.deleted == ["r9"]
    assert wf.runs(str(tmp_path), "x") == []


def test_version_mismatch_is_reported_and_nothing_runs(worker, tmp_path):
    code, sup, tasks, results, _ = worker([message(call(wf.record, "x", str(tmp_path)))],
                                          client_python="2.7")
    assert code == 1
    events = results.decoded()
    assert [e.event for e in events] == ["started", "version_mismatch"]
    assert "Python 2.7 on the client" in events[1].message
    assert "PYTHON_VERSION=2.7" in events[1].message
    assert tasks.inbox and not tasks.deleted and sup.runners_started == 0


def test_redelivered_pack_is_split_and_a_single_past_max_attempts_dead_lettered(worker, tmp_path):
    log = str(tmp_path)
    pack = message(call(wf.record, "a", log), call(wf.record, "b", log), receive_count=2,
                   receipt="pack")
    single = message(call(wf.record, "c", log), prior=1, receive_count=2, receipt="one")
    code, _, tasks, results, dead = worker([pack, single], max_attempts=2)
    assert sorted(tasks.deleted) == ["one", "pack"]
    singles = tasks.decoded()
    assert [len(m.tasks) for m in singles] == [1, 1]
    assert all(m.prior_attempts == 1 for m in singles)
    assert [b for _, b in dead.sent] == [single.body]
    assert not [m for m in results.decoded() if isinstance(m, ResultMessage)]
    assert wf.runs(log, "a") == wf.runs(log, "c") == []


def test_a_leaked_thread_and_process_do_not_stop_the_idle_exit(worker, tmp_path):
    code, sup, _, results, _ = worker([message(call(wf.leak, 1, str(tmp_path)))],
                                      idle_timeout=1.0)
    assert code == 0
    runner_pid, grandchild = (int(p) for p in (tmp_path / "pids").read_text().split())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_alive(runner_pid) or _alive(grandchild)):
        time.sleep(0.1)
    assert not _alive(runner_pid) and not _alive(grandchild)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# -- the client's script as __mp_main__ ------------------------------------------------------

SCRIPT = '''\
import os
CACHE = []
READY = None

def init(value):
    global READY
    READY = value
    print("initializer ran")

def task(x):
    CACHE.append(x)
    return READY, len(CACHE), __name__, __file__

def boom(x):
    raise ValueError(f"boom {x}")

if __name__ == "__main__":
    raise SystemExit("the main block must not run on a worker")
'''


def by_reference(name: str) -> bytes:
    """What the client sends for a function of its script: a reference to __main__.name
    (pickle's GLOBAL opcode, as pickle writes any function by reference)."""
    return f"c__main__\n{name}\n.".encode()


class _MainModule:
    def __reduce__(self):
        return importlib.import_module, ("__main__",)


class MainRef:
    """Pickles as a reference to the script's ``name`` (for use inside other pickles)."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return getattr, (_MainModule(), self.name)


def script_message(*calls):
    fns, entries = {}, []
    for i, (name, args) in enumerate(calls):
        fn = by_reference(name)
        fns[digest(fn)] = fn
        entries.append(TaskEntry(str(i), fn=digest(fn), args=pickle.dumps((args, {}))))
    return Received(TaskMessage("s", entries, fns).encode(), "r1", "m1", 1, {})


@pytest.mark.parametrize("where", ["local file", "shipped copy"])
def test_the_clients_script_is_one_module_shared_by_initializer_and_tasks(worker, tmp_path,
                                                                         where):
    path = tmp_path / "job.py"
    source = SCRIPT.encode()
    store = FakeStore({"init": pickle.dumps((MainRef("init"), ("ready",)))})
    if where == "local file":
        path.write_bytes(source)
        main_path = str(path)
    else:  # the worker does not have the file: it uses the copy shipped in S3
        main_path = str(tmp_path / "elsewhere" / "job.py")
        store.objects["main"] = source
    code, _, _, results, _ = worker(
        [script_message(("task", (1,)), ("task", (2,)), ("boom", (3,)))],
        store=store, initializer_key="init", main_path=main_path, main_key="main",
        main_digest=protocol.script_digest(source))
    got = results_of(results)
    assert got["0"] == (True, ("ready", 1, "__mp_main__", main_path))
    assert got["1"] == (True, ("ready", 2, "__mp_main__", main_path))  # module state persists
    ok, err = got["2"]
    assert isinstance(err, ValueError) and str(err) == "boom 3"
    tb = str(err.__cause__)
    assert f'File "{main_path}", line 15, in boom' in tb
    assert 'raise ValueError(f"boom {x}")' in tb  # the source line, even with no file here
    lines = [ln.text for m in results.decoded() if isinstance(m, OutputMessage)
             for ln in m.lines]
    assert "initializer ran" in lines


def test_an_exception_importing_the_script_is_reported_like_a_failing_initializer(worker,
                                                                                  tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("print('importing')\nimport no_such_module_here\n")
    code, sup, tasks, results, _ = worker([script_message(("task", (1,)))],
                                          main_path=str(path))
    assert code == 1
    (event,) = [m for m in results.decoded() if isinstance(m, WorkerEvent)
                and m.event == WorkerEvent.INITIALIZER_FAILED]
    err = loads(event.error, "error").rebuild()
    assert isinstance(err, ModuleNotFoundError)
    assert f'File "{path}", line 2' in str(err.__cause__)
    assert not tasks.deleted  # the held message is left for the client's verdict


def test_an_initializer_that_crashes_is_reported(worker, tmp_path):
    store = FakeStore({"init": cloudpickle.dumps((wf.segfault, ("init", str(tmp_path))))})
    code, _, _, results, _ = worker([], store=store, initializer_key="init")
    assert code == 1
    (event,) = [m for m in results.decoded() if isinstance(m, WorkerEvent)
                and m.event == WorkerEvent.INITIALIZER_FAILED]
    err = loads(event.error, "error").rebuild()
    assert isinstance(err, InitializerCrashedError) and "killed by SIGSEGV" in str(err)


def test_crash_errors_pickle_with_their_attributes():
    for err in (TaskCrashedError("7", 3, -9, "last words\n"),
                TaskTimeoutError("8", 41400.0, ""), InitializerCrashedError(3, "x\n")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert back.__dict__ == err.__dict__
    assert "killed by SIGKILL" in str(TaskCrashedError("7", 3, -9))


def test_worker_names_are_short_and_stable():
    assert worker_id({"AWS_BATCH_JOB_ID": "3f2a9c77-1b2c-4d5e:4",
                      "AWS_BATCH_JOB_ARRAY_INDEX": "4"}) == "3f2a9c:4"
    assert worker_id({"AWS_BATCH_JOB_ID": "3f2a9c77-1b2c-4d5e"}) == "3f2a9c"
    assert worker_id({}).endswith(f":{os.getpid()}")


class FlakyQueue(FakeQueue):
    """Fails the first `n` receives and sends as SQS would after botocore's retries."""

    def __init__(self, messages=(), fail_receives=0, fail_sends=0):
        super().__init__(messages)
        self.fail_receives = fail_receives
        self.fail_sends = fail_sends

    def receive(self, max_messages=10, wait=20):
        if self.fail_receives:
            self.fail_receives -= 1
            raise TransportError("receiving failed: throttled")
        return super().receive(max_messages, wait)

    def send(self, bodies, session):
        if self.fail_sends and not any('"started"' in b for b in bodies):
            self.fail_sends -= 1
            raise TransportError("sending failed: throttled")
        super().send(bodies, session)


def test_failed_receives_and_sends_are_retried_and_results_still_arrive(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, *sys.path]))
    settings = SessionSettings("s", "tq", "rq", "dq", "b", "p/", idle_timeout=4)
    tasks = FlakyQueue([message(call(wf.record, "a", str(tmp_path)))], fail_receives=2)
    results = FlakyQueue(fail_sends=2)
    sup = Supervisor(settings, "w:0", tasks, results, FakeQueue(), FakeStore())
    assert sup.run() == 0
    assert results_of(results) == {"0": (True, "a")}
    assert tasks.deleted == ["r1"]  # only once the result was accepted


def test_too_many_failed_receives_end_the_worker(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, *sys.path]))
    settings = SessionSettings("s", "tq", "rq", "dq", "b", "p/", idle_timeout=60)
    sup = Supervisor(settings, "w:0", FlakyQueue(fail_receives=99), FakeQueue(), FakeQueue(),
                     FakeStore())
    with pytest.raises(TransportError):
        sup.run()
    assert sup.runner is None  # the runner was stopped on the way out


def test_a_script_that_starts_an_executor_unguarded_is_refused_on_the_worker(worker,
                                                                            tmp_path):
    path = tmp_path / "unguarded.py"
    path.write_text("from batchexec import BatchExecutor\nex = BatchExecutor(2)\n")
    code, _, _, results, _ = worker([script_message(("task", (1,)))], main_path=str(path))
    assert code == 1
    (event,) = [m for m in results.decoded() if isinstance(m, WorkerEvent)
                and m.event == WorkerEvent.INITIALIZER_FAILED]
    err = loads(event.error, "error").rebuild()
    assert 'if __name__ == "__main__":' in str(err) and str(path) in str(err)
    assert f'File "{path}", line 2' in str(err.__cause__)


class _Creates:
    """Unpickling this creates a file (proof that attacker data was unpickled)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_an_s3_payload_changed_after_upload_is_refused_unread(worker, tmp_path):
    marker = tmp_path / "pwned"
    fn = cloudpickle.dumps(wf.record)
    genuine = cloudpickle.dumps(((1, str(tmp_path)), {}))
    entry = TaskEntry("0", digest(fn), ref="tasks/0", sha=digest(genuine))
    body = TaskMessage("s", [entry], {digest(fn): fn}).encode()
    store = FakeStore({"tasks/0": pickle.dumps(_Creates(str(marker)))})  # swapped in S3
    code, _, tasks, results, _ = worker([Received(body, "r1", "m1", 1, {})], store=store)
    ok, error = results_of(results)["0"]
    assert not ok and isinstance(error, protocol.ProtocolError)
    assert "does not match the digest" in str(error)
    assert not marker.exists()
    assert tasks.deleted == ["r1"]


def test_an_unauthenticated_task_message_is_dead_lettered_unread(worker, tmp_path):
    marker = tmp_path / "pwned"
    fn = pickle.dumps(_Creates(str(marker)))
    body = TaskMessage("s", [TaskEntry("0", digest(fn), args=fn)], {digest(fn): fn}).encode()
    forged = Received(body, "r1", "m1", 1, {}, authentic=False)
    code, _, tasks, results, dead = worker([forged])
    assert [b for _, b in dead.sent] == [body]
    assert tasks.deleted == ["r1"]
    assert not any(isinstance(m, ResultMessage) for m in results.decoded())
    assert not marker.exists()


def test_an_initializer_changed_in_s3_is_not_run(worker, tmp_path):
    marker = tmp_path / "pwned"
    store = FakeStore({"init": pickle.dumps(_Creates(str(marker)))})
    code, _, _, results, _ = worker([], store=store, initializer_key="init",
                                    initializer_digest=digest(b"what the client uploaded"))
    assert code == 1
    (event,) = [m for m in results.decoded() if isinstance(m, WorkerEvent)
                and m.event == WorkerEvent.INITIALIZER_FAILED]
    assert "does not match the digest" in str(loads(event.error, "error").rebuild())
    assert not marker.exists()


def _by_value(source: str, name: str):
    """A function cloudpickle sends by value (its module is not importable anywhere)."""
    namespace = {"__name__": "batchexec_tests_by_value"}
    exec(source, namespace)
    return namespace[name]


def test_a_task_handed_back_after_crashing_its_runner_keeps_that_attempt(worker, tmp_path):
    """b crashes its runner late in the worker's life; c was queued behind it (pipelined).
    Too old to retry b, the worker hands both back: c uncharged, b charged its crash."""
    crash_late = _by_value("def crash_late(x):\n    import os, time\n    time.sleep(1.5)\n"
                           "    os._exit(3)\n", "crash_late")
    log = str(tmp_path)
    code, sup, tasks, results, _ = worker(
        [message(call(crash_late, "b"), call(wf.record, "c", log))],
        max_task_seconds=2, job_timeout=3.5, idle_timeout=30, max_attempts=3)
    assert code == 0 and sup.retiring
    assert not [m for m in results.decoded() if isinstance(m, ResultMessage)]
    handed_back = {m.tasks[0].task_id: m for m in tasks.decoded()}
    assert sorted(handed_back) == ["0", "1"]
    assert [len(m.tasks) for m in handed_back.values()] == [1, 1]
    assert handed_back["0"].prior_attempts == 1  # b: its crash here counts
    assert handed_back["1"].prior_attempts == 0  # c: queued behind b, never started
    assert wf.runs(log, "c") == [] and tasks.deleted == ["r1"]
