"""Shared fixtures: one emulator for the whole run, and executors on it.

Starting `batchexec local` and deploying the stack takes a few seconds, so the suite shares one
(`emulator`); every executor still gets its own session (queues, S3 prefix, worker jobs), which
is exactly the isolation the product promises. Tests that need the no-argument embedded default
start their own.
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

TEST_STACK = "bx-test"


@pytest.fixture(scope="session")
def emulator():
    from batchexec.emulator.embedded import EmbeddedEmulator

    emu = EmbeddedEmulator.start(stack_name=TEST_STACK)
    yield emu
    emu.close()


@pytest.fixture
def clean_env(monkeypatch):
    """No stack, endpoint or credentials leak in from the developer's environment."""
    for var in ("BATCHEXEC_STACK", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def make_executor(emulator, clean_env):
    """Executors on the shared emulator with short timeouts; all shut down after the test."""
    from batchexec import BatchExecutor

    made = []

    def make(max_workers=2, **kw):
        kw.setdefault("visibility_timeout", 3)
        kw.setdefault("monitor_interval", 0.5)
        kw.setdefault("worker_idle_timeout", 60)
        ex = BatchExecutor(
            max_workers, stack=TEST_STACK, endpoint_url=emulator.endpoint_url, **kw
        )
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


class Control:
    """The emulator's request counters and fault injection (batchexec.emulator.control)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint.rstrip("/")

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.endpoint + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def requests(self) -> dict[str, int]:
        return self._call("GET", "/_batchexec/requests")

    def reset(self) -> None:
        self._call("POST", "/_batchexec/requests/reset")

    def fault(self, operation: str, count: int, code: str = "ThrottlingException",
              status: int = 400) -> None:
        self._call("POST", "/_batchexec/faults",
                   {"operation": operation, "count": count, "code": code, "status": status})

    def armed_faults(self) -> list:
        return self._call("GET", "/_batchexec/faults")

    def clear_faults(self) -> None:
        self._call("DELETE", "/_batchexec/faults")


@pytest.fixture
def control(emulator):
    c = Control(emulator.endpoint_url)
    yield c
    c.clear_faults()


def pytest_configure(config):
    # Workers import test helper modules by reference: they get the client's sys.path through
    # the emulator; make sure the tests directory is on it before the emulator starts.
    here = os.path.dirname(__file__)
    import sys

    if here not in sys.path:
        sys.path.insert(0, here)
