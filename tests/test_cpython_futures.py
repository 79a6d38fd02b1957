"""CPython's own concurrent.futures tests, run against BatchExecutor (issue 7).

The tests are the standard library's, unchanged: Debian ships CPython's test package as
``libpython3.11-testsuite`` (scripts/bootstrap.sh installs it), and this module loads its
``test_concurrent_futures.py`` by path and combines each executor-independent mixin
(ExecutorTest, WaitTests, AsCompletedTests, ExecutorShutdownTest, InitializerMixin,
FailingInitializerMixin) with a BatchExecutor mixin, exactly as CPython's own
``create_executor_tests`` combines them with ThreadPoolExecutor and ProcessPoolExecutor.
pytest collects the resulting unittest classes. ProcessPoolExecutorTest's own extra tests run
too where they apply (BatchExecutor is the process pool's remote twin); the rest are listed,
skipped, with the reason.

What is adapted, and why:
- Workers import the test functions by reference, as ProcessPoolExecutor's do: the file is
  loaded under the name ``cpython_test_concurrent_futures`` from a private directory (a
  symlink to Debian's file) that is put on sys.path at import time, before the shared emulator
  starts, so its workers (which get the client's sys.path) can import it too.
- The three tests that run a fresh interpreter (``from concurrent.futures import
  {executor_type}``) are rewritten equivalently for BatchExecutor: the child reaches the shared
  emulator through AWS_ENDPOINT_URL / BATCHEXEC_STACK and imports the same test module.
- Tests that cannot apply by nature are skipped with the reason. Every other test must pass:
  none is marked as an expected failure.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
import unittest

import pytest
from conftest import TEST_STACK

#: Where Debian's libpython3.X-testsuite puts the file (3.12 split it into a package, which
#: this adapter does not handle: then the module is skipped and says so).
CPYTHON_TESTS = os.environ.get(
    "BATCHEXEC_CPYTHON_FUTURES_TESTS",
    f"/usr/lib/python{sys.version_info.major}.{sys.version_info.minor}/test/"
    f"test_concurrent_futures.py",
)
MODULE_NAME = "cpython_test_concurrent_futures"


def _load_cpython_tests():
    if not os.path.isfile(CPYTHON_TESTS):
        pytest.skip(
            f"CPython's concurrent.futures tests are not installed ({CPYTHON_TESTS} is "
            f"missing): install the Debian package libpython{sys.version_info.major}."
            f"{sys.version_info.minor}-testsuite (scripts/bootstrap.sh does), or point "
            f"BATCHEXEC_CPYTHON_FUTURES_TESTS at the file",
            allow_module_level=True,
        )
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME], os.path.dirname(sys.modules[MODULE_NAME].__file__)
    # A directory holding only this module, on sys.path for this process and (through the
    # emulator, which hands its workers the client's sys.path) for the workers.
    where = tempfile.mkdtemp(prefix="bx-cpython-tests-")
    atexit.register(shutil.rmtree, where, True)
    path = os.path.join(where, MODULE_NAME + ".py")
    os.symlink(CPYTHON_TESTS, path)
    sys.path.append(where)
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except unittest.SkipTest as exc:  # e.g. no _multiprocessing, or a sanitizer build
        del sys.modules[MODULE_NAME]
        pytest.skip(f"CPython's concurrent.futures tests skip themselves here: {exc}",
                    allow_module_level=True)
    return module, where


cft, IMPORT_DIR = _load_cpython_tests()

from batchexec import BatchExecutor  # noqa: E402


class EmulatorBatchExecutor(BatchExecutor):
    """BatchExecutor on the shared test emulator with short timeouts (as conftest's
    make_executor), constructible the way CPython's mixins construct an executor_type."""

    endpoint = None  # set per test by the autouse fixture below

    def __init__(self, max_workers=None, **kwargs):
        if type(self).endpoint is None:
            raise RuntimeError("the emulator fixture did not run")
        kwargs.setdefault("stack", TEST_STACK)
        kwargs.setdefault("endpoint_url", type(self).endpoint)
        kwargs.setdefault("visibility_timeout", 3)
        kwargs.setdefault("monitor_interval", 0.5)
        kwargs.setdefault("worker_idle_timeout", 60)
        super().__init__(max_workers, **kwargs)


@pytest.fixture(autouse=True)
def _on_shared_emulator(emulator, clean_env):
    EmulatorBatchExecutor.endpoint = emulator.endpoint_url
    yield
    EmulatorBatchExecutor.endpoint = None


class BatchExecutorMixin(cft.ExecutorMixin):
    executor_type = EmulatorBatchExecutor
    # Two workers fit this 2-core machine; CPython uses 5 (the tests only need more than one,
    # and test_cancel_futures needs few).
    worker_count = 2


def _cannot_apply(reason: str):
    return unittest.skip("cannot apply to BatchExecutor: " + reason)


# -- subprocess tests, rewritten for BatchExecutor -----------------------------------------------

_ANY_WORKER_PREFIX = r"(\(worker [^)]*\) )?"


def _run_client_script(script: str):
    """Run `script` in a fresh interpreter that reaches the shared emulator by environment,
    as a user's program would; CPython's script_helper checks that it exits with status 0."""
    from test.support.script_helper import assert_python_ok

    return assert_python_ok(
        "-c", script,
        AWS_ENDPOINT_URL=EmulatorBatchExecutor.endpoint,
        BATCHEXEC_STACK=TEST_STACK,
        # The same batchexec and test module as this process (the worktree, IMPORT_DIR).
        PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path),
    )



# A task defined in the child's `-c` program (so it travels by value) that leaves a file
# once it has slept: the child's exit must wait for it, whatever happens to its output.
_SLEEP_AND_WRITE = """
import time
def sleep_and_write(t, path, text):
    time.sleep(t)
    with open(path, "w") as f:
        f.write(text)
"""


class BatchExecutorShutdownTest(BatchExecutorMixin, cft.ExecutorShutdownTest, cft.BaseTestCase):
    def _marker(self):
        d = tempfile.mkdtemp(prefix="bx-cpython-shutdown-")
        self.addCleanup(shutil.rmtree, d, True)
        return os.path.join(d, "marker")

    def _assert_marker(self, path):
        self.assertTrue(os.path.exists(path), "the task did not finish before the client exited")
        with open(path) as f:
            self.assertEqual(f.read(), "apple")

    def test_interpreter_shutdown_runs_to_completion(self):
        """test_interpreter_shutdown without relying on output replay: the atexit hook of a
        client that never calls shutdown() waits for its running task."""
        marker = self._marker()
        rc, out, err = _run_client_script(f"""if 1:
            {_SLEEP_AND_WRITE.replace(chr(10), chr(10) + ' ' * 12)}
            from batchexec import BatchExecutor
            if __name__ == "__main__":
                t = BatchExecutor(2, visibility_timeout=3, monitor_interval=0.5)
                t.submit(sleep_and_write, 1.0, {marker!r}, "apple")
            """)
        self.assertFalse(err)
        self._assert_marker(marker)

    def test_hang_gh83386_runs_to_completion(self):
        """test_hang_gh83386 without relying on output replay: shutdown(wait=False) then
        exit neither hangs nor drops the running task."""
        marker = self._marker()
        rc, out, err = _run_client_script(f"""if 1:
            {_SLEEP_AND_WRITE.replace(chr(10), chr(10) + ' ' * 12)}
            from batchexec import BatchExecutor
            if __name__ == "__main__":
                t = BatchExecutor(2, visibility_timeout=3, monitor_interval=0.5)
                t.submit(sleep_and_write, 1.0, {marker!r}, "apple")
                t.shutdown(wait=False)
            """)
        self.assertFalse(err)
        self._assert_marker(marker)

    def test_interpreter_shutdown(self):
        # CPython's test, with BatchExecutor for {executor_type}: the atexit hook waits for
        # the running task, whose output is replayed on the client's stdout (prefixed with
        # the worker it ran on, as batchexec documents).
        rc, out, err = _run_client_script(f"""if 1:
            from batchexec import BatchExecutor
            from {MODULE_NAME} import sleep_and_print
            if __name__ == "__main__":
                t = BatchExecutor(2, visibility_timeout=3, monitor_interval=0.5)
                t.submit(sleep_and_print, 1.0, "apple")
            """)
        self.assertFalse(err)
        self.assertRegex(out.decode().strip(), f"^{_ANY_WORKER_PREFIX}apple$")

    def test_submit_after_interpreter_shutdown(self):
        rc, out, err = _run_client_script("""if 1:
            import atexit
            @atexit.register
            def run_last():
                try:
                    t.submit(id, None)
                except RuntimeError:
                    print("runtime-error")
                    raise
            from batchexec import BatchExecutor
            if __name__ == "__main__":
                t = BatchExecutor(2, visibility_timeout=3, monitor_interval=0.5)
                t.submit(id, 42).result()
            """)
        self.assertIn("RuntimeError: cannot schedule new futures", err.decode())
        self.assertEqual(out.strip(), b"runtime-error")

    def test_hang_gh83386(self):
        """shutdown(wait=False) doesn't hang at exit with running futures."""
        rc, out, err = _run_client_script(f"""if True:
            from batchexec import BatchExecutor
            from {MODULE_NAME} import sleep_and_print
            if __name__ == "__main__":
                t = BatchExecutor(max_workers=2, visibility_timeout=3, monitor_interval=0.5)
                t.submit(sleep_and_print, 1.0, "apple")
                t.shutdown(wait=False)
            """)
        self.assertFalse(err)
        self.assertRegex(out.decode().strip(), f"^{_ANY_WORKER_PREFIX}apple$")


# -- the other mixins, combined as CPython's create_executor_tests does --------------------------


class BatchExecutorExecutorTest(BatchExecutorMixin, cft.ExecutorTest, cft.BaseTestCase):
    pass


class BatchExecutorWaitTest(BatchExecutorMixin, cft.WaitTests, cft.BaseTestCase):
    pass


class BatchExecutorAsCompletedTest(BatchExecutorMixin, cft.AsCompletedTests, cft.BaseTestCase):
    pass


class BatchExecutorInitializerTest(cft.InitializerMixin, BatchExecutorMixin, cft.BaseTestCase):
    pass


class BatchExecutorFailingInitializerTest(cft.FailingInitializerMixin, BatchExecutorMixin,
                                          cft.BaseTestCase):
    def test_initializer(self):
        super().test_initializer()


class BatchExecutorProcessPoolExecutorTest(BatchExecutorMixin, cft.BaseTestCase):
    """ProcessPoolExecutorTest's own tests (beyond ExecutorTest, which runs above): BatchExecutor
    is the process pool's remote twin, so those that apply run; the others are listed, skipped,
    with the reason. (ThreadPoolExecutorTest's extras inspect its threads: none apply.)"""

    test_map_chunksize = cft.ProcessPoolExecutorTest.test_map_chunksize

    @classmethod
    def _test_traceback(cls):
        raise RuntimeError(123) # some comment  # noqa: E261, E262 (the line the test looks for)

    def test_traceback(self):
        # CPython's test_traceback, except that the cause is batchexec's RemoteTraceback, not
        # the process pool's private concurrent.futures.process._RemoteTraceback class.
        future = self.executor.submit(self._test_traceback)
        with self.assertRaises(Exception) as cm:
            future.result()

        exc = cm.exception
        self.assertIs(type(exc), RuntimeError)
        self.assertEqual(exc.args, (123,))
        cause = exc.__cause__
        self.assertIsInstance(cause, Exception)
        self.assertIn("raise RuntimeError(123) # some comment", cause.tb)

        from test import support

        with support.captured_stderr() as f1:
            try:
                raise exc
            except RuntimeError:
                sys.excepthook(*sys.exc_info())
        self.assertIn("raise RuntimeError(123) # some comment", f1.getvalue())

    @_cannot_apply("it terminates one of executor._processes, the pool's local child "
                   "processes; a worker that dies is covered by tests/test_executor_failures.py")
    def test_killed_child(self):
        pass

    @_cannot_apply("it needs a multiprocessing Manager reachable from the workers "
                   "(mp_context, authkey of this process)")
    def test_ressources_gced_in_workers(self):
        pass

    @_cannot_apply("it counts executor._processes and blocks tasks on a multiprocessing "
                   "Semaphore shared with local children")
    def test_saturation(self):
        pass

    @_cannot_apply("idle-process reuse is counted through executor._processes; BatchExecutor "
                   "starts all max_workers jobs at once")
    def test_idle_process_reuse_one(self):
        pass

    @_cannot_apply("idle-process reuse is counted through executor._processes")
    def test_idle_process_reuse_multiple(self):
        pass

    @_cannot_apply("max_tasks_per_child and mp_context are ProcessPoolExecutor options")
    def test_max_tasks_per_child(self):
        pass

    @_cannot_apply("max_tasks_per_child and mp_context are ProcessPoolExecutor options")
    def test_max_tasks_per_child_defaults_to_spawn_context(self):
        pass

    @_cannot_apply("max_tasks_per_child and mp_context are ProcessPoolExecutor options")
    def test_max_tasks_early_shutdown(self):
        pass

    @_cannot_apply("Windows-only process limit of ProcessPoolExecutor")
    def test_max_workers_too_large(self):
        pass
