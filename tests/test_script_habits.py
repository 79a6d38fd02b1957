"""Habits of ProcessPoolExecutor scripts that must just work (issue 7), each as users hit
them: scripts run as `python script.py`, module globals that cannot or should not travel,
references to finished work, the errors existing code already catches, and configuration
mistakes that must be one line saying what to do."""

from __future__ import annotations

import gc
import http.server
import io
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest
import taskfuncs as tf
from conftest import TEST_STACK

from batchexec import BatchExecutor, ConfigurationError, SerializationError

pytestmark = pytest.mark.timeout(240)

GLOBALS_SCRIPT = textwrap.dedent('''\
    import sys
    import threading

    from batchexec import BatchExecutor

    LOCK = threading.Lock()                   # unpicklable: must not travel with `lookup`
    TABLE = bytes(range(256)) * (38 * 4096)   # 38 MiB: must not travel with every call
    CACHE = {}


    def lookup(i):
        with LOCK:
            CACHE[i] = TABLE[i]
            return TABLE[i], len(CACHE) > 0


    if __name__ == "__main__":
        from batchexec.emulator.control import EmulatorControl

        endpoint, stack = sys.argv[1:3]
        control = EmulatorControl(endpoint)
        with BatchExecutor(1, stack=stack, endpoint_url=endpoint, visibility_timeout=3) as ex:
            control.reset_requests()
            print("RESULTS", list(ex.map(lookup, range(20))))
            print("REQUESTS", sorted(control.requests().items()))
''')


def _run_script(tmp_path, emulator, source, *args):
    script = tmp_path / "job.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    return subprocess.run([sys.executable, str(script), emulator.endpoint_url, TEST_STACK,
                           *args], capture_output=True, text=True, timeout=200, env=env)


def test_module_globals_of_a_script_stay_on_the_worker(emulator, clean_env, tmp_path):
    """A module-level lock does not make a task unpicklable, and a 38 MiB module-level table
    is not sent with the calls (the worker imports the script): no S3 upload at all."""
    r = _run_script(tmp_path, emulator, GLOBALS_SCRIPT)
    assert r.returncode == 0, r.stderr[-3000:]
    results = next(line for line in r.stdout.splitlines() if line.startswith("RESULTS"))
    assert results == "RESULTS " + str([(i, True) for i in range(20)])
    requests = next(line for line in r.stdout.splitlines() if line.startswith("REQUESTS"))
    assert "s3.PutObject" not in requests and "CreateMultipartUpload" not in requests, requests


def test_finished_work_is_not_kept_alive(make_executor):
    """After tasks with 50 MiB arguments and results completed and the caller dropped them,
    the executor holds none of it (CPython's test_free_reference, at a size that shows)."""
    ex = make_executor(2)
    assert ex.submit(tf.square, 1).result(timeout=60) == 1
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        futures = [ex.submit(tf.nbytes, np.full(50 * 2**20, i, dtype=np.uint8))
                   for i in range(4)]
        assert [f.result(timeout=120) for f in futures] == [50 * 2**20] * 4
        del futures
        big = ex.map(tf.identity, [np.zeros(2**20) for _ in range(3)])
        for value in big:
            del value
        del big
        # As CPython's test: collect, and give background threads (S3 transfers, the
        # janitor) a moment to let go of buffers they finished with.
        deadline = time.monotonic() + 10
        while True:
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - baseline
            if held < 10 * 2**20 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        tracemalloc.stop()
    assert held < 10 * 2**20, f"{held / 2**20:.0f} MiB still held by the executor"


def test_pickling_errors_are_what_existing_code_catches(make_executor):
    ex = make_executor(1)
    err = ex.submit(tf.identity, threading.Lock()).exception(timeout=10)
    assert isinstance(err, SerializationError)
    assert isinstance(err, TypeError) and isinstance(err, pickle.PicklingError)


@pytest.mark.parametrize("mode", ["r", "rb", "w", "a+"])
def test_open_files_are_refused_in_every_mode(make_executor, tmp_path, mode):
    ex = make_executor(1)
    path = tmp_path / "data.txt"
    path.write_text("content")
    with open(path, mode) as f:
        err = ex.submit(tf.identity, f).exception(timeout=10)
    assert isinstance(err, SerializationError) and isinstance(err, TypeError)
    assert "open file object" in str(err) and "pass its path" in str(err)
    with io.StringIO("in memory") as buffer:  # an in-memory buffer is plain data: refused too
        assert isinstance(ex.submit(tf.identity, buffer).exception(timeout=10),
                          SerializationError)


def test_an_unknown_aws_profile_is_one_line(emulator, clean_env):
    clean_env.setenv("AWS_PROFILE", "no-such-profile")
    clean_env.delenv("AWS_ACCESS_KEY_ID", raising=False)
    clean_env.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ConfigurationError) as info:
        BatchExecutor(1, stack=TEST_STACK, endpoint_url=emulator.endpoint_url)
    message = str(info.value)
    assert "\n" not in message and "no-such-profile" in message and "AWS_PROFILE" in message


def test_the_offline_default_ignores_an_unknown_aws_profile(clean_env):
    clean_env.setenv("AWS_PROFILE", "no-such-profile")
    with BatchExecutor(1, worker_idle_timeout=30) as ex:
        assert ex.submit(tf.square, 6).result(timeout=120) == 36


class _HtmlHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the standard library's name
        body = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args):
        pass


def test_an_endpoint_that_is_not_aws_is_one_line(clean_env):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ConfigurationError) as info:
            BatchExecutor(1, stack=TEST_STACK, endpoint_url=endpoint)
    finally:
        server.shutdown()
    message = str(info.value)
    assert "\n" not in message and "not as an AWS-compatible endpoint" in message
    assert "<html" not in message
