"""The `batchexec` command line: stack commands against an emulator, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from batchexec import cli
from batchexec.stack import OPTIONAL_STACK_OUTPUTS, STACK_OUTPUTS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def endpoint():
    from batchexec.emulator import EmbeddedEmulator

    emu = EmbeddedEmulator.start(stack_name="cli-tests")
    yield emu.endpoint_url
    emu.close()


def batchexec(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchexec", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def assert_one_line_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr


def test_stack_deploy_status_outputs(endpoint):
    r = batchexec("stack", "deploy", "--name", "from-cli", "--wait", "--endpoint-url", endpoint,
                  "--parameter", "DefaultWorkers=4", "-p", "WorkerVcpus=8")  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "from-cli: CREATE_COMPLETE\n"), r.stderr

    r = batchexec("stack", "status", "--name", "from-cli", "--endpoint-url", endpoint)
    assert (r.returncode, r.stdout) == (0, "from-cli: CREATE_COMPLETE\n"), r.stderr

    r = batchexec("stack", "outputs", "--name", "from-cli", "--endpoint-url", endpoint)
    assert r.returncode == 0, r.stderr
    outputs = json.loads(r.stdout)
    assert set(outputs) == {*STACK_OUTPUTS, *OPTIONAL_STACK_OUTPUTS}
    assert outputs["DefaultWorkers"] == "4"
    assert outputs["JobQueueArn"].endswith(":job-queue/from-cli-queue")


def test_stack_name_defaults_to_batchexec_stack_env(endpoint):
    import os

    env = {**os.environ, "BATCHEXEC_STACK": "cli-tests", "AWS_ENDPOINT_URL": endpoint}
    r = batchexec("stack", "status", env=env)
    assert (r.returncode, r.stdout) == (0, "cli-tests: CREATE_COMPLETE\n"), r.stderr


def test_missing_stack_is_one_line_with_exit_2(endpoint):
    r = batchexec("stack", "outputs", "--name", "absent", "--endpoint-url", endpoint)
    assert_one_line_error(r, "'absent' was not found", "batchexec stack deploy --name absent")


def test_bad_parameter_is_one_line_with_exit_2(endpoint):
    r = batchexec("stack", "deploy", "--endpoint-url", endpoint, "--parameter", "NoEquals")
    assert_one_line_error(r, "KEY=VALUE")
    r = batchexec("stack", "deploy", "--name", "x", "--endpoint-url", endpoint,
                  "--parameter", "Bogus=1")  # fmt: skip
    assert_one_line_error(r, "unknown stack parameter(s) Bogus")
    r = batchexec("stack", "deploy", "--name", "Bad_Name", "--endpoint-url", endpoint)
    assert_one_line_error(r, "lowercase")


def test_unreachable_endpoint_is_one_line_with_exit_2():
    r = batchexec("stack", "status", "--endpoint-url", "http://127.0.0.1:9")
    assert_one_line_error(r, "cannot reach http://127.0.0.1:9")


def test_usage_errors_exit_2():
    r = batchexec()
    assert r.returncode == 2 and "usage: batchexec" in r.stderr
    r = batchexec("stack", "explode")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_help_lists_the_subcommands():
    r = batchexec("--help")
    assert r.returncode == 0
    for command in ("local", "stack", "worker", "gc"):
        assert command in r.stdout
    r = batchexec("worker", "--help")
    assert r.returncode == 0 and "--self-check" in r.stdout


def test_console_script_is_the_same_program():
    script = Path(sys.executable).parent / "batchexec"
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "stack" in r.stdout


def test_worker_subcommand_delegates_to_batchexec_worker_main(monkeypatch):
    calls = []
    fake = types.ModuleType("batchexec.worker")
    fake.main = lambda argv=None: calls.append(argv) or 7
    monkeypatch.setitem(sys.modules, "batchexec.worker", fake)
    assert cli.main(["worker"]) == 7
    assert calls == [None]


#: Run Python with moto (the emulator extra) made unimportable, as in a base install.
WITHOUT_MOTO = """
import importlib.abc, sys
class NoEmulatorExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "moto":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, NoEmulatorExtra())
"""


def test_without_the_emulator_extra_the_executor_says_what_to_install(clean_env):
    code = WITHOUT_MOTO + (
        "from batchexec import BatchExecutor\n"
        "from batchexec.emulator import EmulatorNotInstalledError\n"
        "try:\n    BatchExecutor()\n"
        "except EmulatorNotInstalledError as exc:\n    print(exc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and "pip install 'batchexec[emulator]'" in r.stdout
    assert "BATCHEXEC_STACK" in r.stdout


def test_batchexec_local_without_the_emulator_extra_is_one_line():
    code = WITHOUT_MOTO + "from batchexec.cli import main\nsys.exit(main(['local']))\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert_one_line_error(r, "pip install 'batchexec[emulator]'")
