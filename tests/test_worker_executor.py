"""The worker through the executor: what a user of BatchExecutor sees of the worker's
behaviour (output replayed with a prefix, crash and version errors on futures), and a real
script run as `python script.py`, as multiprocessing's spawn would treat it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
import taskfuncs as tf
import workerfuncs as wf
from conftest import TEST_STACK

from batchexec import WorkersUnavailableError
from batchexec.errors import TaskCrashedError

pytestmark = pytest.mark.timeout(180)
PREFIX = r"\(worker [0-9a-z-]{1,6}(:\d+)?\) "


def test_task_output_is_replayed_on_the_clients_streams_before_its_result(make_executor,
                                                                          capsys):
    ex = make_executor(1)
    assert ex.submit(wf.chatty, "t", 2).result(timeout=60) == "t"
    out, err = capsys.readouterr()  # at once: the output came before the result
    for text in ("task t line 0", "task t line 1", "task t via fd 1", "task t via printf",
                 "task t without newline"):
        assert re.search(PREFIX + re.escape(text) + "$", out, re.M), out
    assert re.search(PREFIX + "task t to stderr$", err, re.M), err
    assert re.search(PREFIX + "task t via logging$", err, re.M), err
    assert out.index("task t line 0") < out.index("task t line 1")


def test_task_output_is_bounded(make_executor, capsys):
    ex = make_executor(1)
    ex._launcher.environment["BATCHEXEC_OUTPUT_LIMIT"] = "1000"
    assert ex.submit(wf.flood, 1, 100).result(timeout=60) == 1
    out, err = capsys.readouterr()
    assert 5 <= len(re.findall(PREFIX + r"\d{6} x+$", out, re.M)) <= 10
    assert "cut after" in err and "output_limit=1000" in err


def test_a_task_that_kills_its_process_fails_with_task_crashed_error(make_executor, tmp_path):
    ex = make_executor(1, max_attempts=2)
    bad = ex.submit(wf.exit_hard, "b", str(tmp_path), 3)
    good = [ex.submit(tf.square, i) for i in range(5)]
    err = bad.exception(timeout=90)
    assert isinstance(err, TaskCrashedError), err
    assert err.attempts == 2 and "exited with status 3" in str(err)
    assert "about to exit" in str(err)
    assert [f.result(timeout=60) for f in good] == [0, 1, 4, 9, 16]
    assert len(wf.runs(tmp_path, "b")) == 2
    assert len(ex._launcher.jobs) == 1  # the worker survived: no replacement job


def test_a_worker_on_another_python_breaks_the_executor_with_what_to_do(make_executor):
    ex = make_executor(1)
    ex._launcher.environment["BATCHEXEC_CLIENT_PYTHON"] = "2.7"
    err = ex.submit(tf.square, 2).exception(timeout=90)
    assert isinstance(err, WorkersUnavailableError), err
    assert "Python 2.7 on the client" in str(err) and "PYTHON_VERSION=2.7" in str(err)


SCRIPT = textwrap.dedent('''\
    import sys
    import traceback

    from batchexec import BatchExecutor

    SEEN = []
    GREETING = None


    def init(greeting):
        global GREETING
        GREETING = greeting
        print("initializer says", greeting)


    def task(x):
        SEEN.append(x)
        print(f"task {x} sees {GREETING!r}")
        return GREETING, x, len(SEEN), __name__


    def boom(x):
        raise ValueError(f"boom {x}")


    class Oops(Exception):
        pass


    def oops(x):
        raise Oops(f"oops {x}")


    if __name__ == "__main__":
        endpoint, stack = sys.argv[1:3]
        with BatchExecutor(1, stack=stack, endpoint_url=endpoint, initializer=init,
                           initargs=("hello",), visibility_timeout=3) as ex:
            print("RESULTS", [ex.submit(task, i).result(timeout=90) for i in range(3)])
            try:
                ex.submit(boom, 7).result(timeout=90)
            except ValueError as exc:
                print("REMOTE", "".join(traceback.format_exception(exc)))
            try:
                ex.submit(oops, 2).result(timeout=90)
            except Oops as exc:  # the script's own class, on both sides
                print("CAUGHT", repr(exc))
''')


def test_a_script_runs_as_with_multiprocessing_spawn(emulator, clean_env, tmp_path):
    """Functions of the client's script resolve to one module per worker process, imported
    as __mp_main__: the initializer's globals are seen by tasks, state persists between
    tasks, and remote tracebacks show the script's path and source lines."""
    script = tmp_path / "my_job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    r = subprocess.run([sys.executable, str(script), emulator.endpoint_url, TEST_STACK],
                       capture_output=True, text=True, timeout=150, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    results = next(line for line in r.stdout.splitlines() if line.startswith("RESULTS"))
    assert results == ("RESULTS [('hello', 0, 1, '__mp_main__'), ('hello', 1, 2, '__mp_main__'),"
                       " ('hello', 2, 3, '__mp_main__')]")
    assert re.search(PREFIX + "initializer says hello$", r.stdout, re.M), r.stdout
    assert re.search(PREFIX + "task 1 sees 'hello'$", r.stdout, re.M), r.stdout
    remote = r.stdout[r.stdout.index("REMOTE"):]
    assert f'File "{script}", line 23, in boom' in remote, remote
    assert 'raise ValueError(f"boom {x}")' in remote
    assert "ValueError: boom 7" in remote
    assert "CAUGHT Oops('oops 2')" in r.stdout
