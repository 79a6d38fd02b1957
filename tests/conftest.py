"""Shared fixtures: one emulator for the whole run, and executors on it.

Starting `batchexec local` and deploying the stack takes a few seconds, so the suite shares one
(`emulator`); every executor still gets its own session (queues, S3 prefix, worker jobs), which
is exactly the isolation the product promises. Tests that need the no-argument embedded default
start their own.
"""

from __future__ import annotations

import os

import pytest

from batchexec.emulator.control import EmulatorControl

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


@pytest.fixture(scope="module")
def moto_endpoint():
    """A bare moto server (S3 and friends, no batchexec stack) for /vsis3/ tests: GDAL reads
    and writes through it as it would through S3."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def control(emulator):
    c = EmulatorControl(emulator.endpoint_url)
    yield c
    c.clear_faults()


def pytest_configure(config):
    # Workers import test helper modules by reference: they get the client's sys.path through
    # the emulator; make sure the tests directory is on it before the emulator starts.
    here = os.path.dirname(__file__)
    import sys

    if here not in sys.path:
        sys.path.insert(0, here)
