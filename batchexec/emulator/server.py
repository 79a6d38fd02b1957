"""`batchexec local`: one moto server process, every service on one port, jobs as processes.

Why a process of its own (never moto's in-process `mock_aws`): Batch jobs are real processes
that must reach the same endpoint over HTTP, and a client's own boto3 must not be patched.

Contract with callers (EmbeddedEmulator, tests, people): the first line on stdout is exactly
the endpoint, `http://HOST:PORT`, flushed at once; the server then runs until SIGINT or
SIGTERM and, on the way out, kills every job process it started, so nothing is orphaned.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import sys
import threading
import time
from typing import TextIO


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))  # raises OSError (EADDRINUSE, EADDRNOTAVAIL) for the CLI


class _Stop(Exception):
    """Raised by the signal handler to leave serve_forever in the main thread."""


def serve(host: str = "127.0.0.1", port: int = 0, *, log_requests: bool = False,
          exit_with_parent: bool = False, out: TextIO | None = None,
          containers: bool = False, engine: str | None = None,
          image: str | None = None, credentials_file: str | None = None) -> int:  # fmt: skip
    """Serve until SIGINT/SIGTERM. Port 0 picks a free port. Returns the exit status.

    exit_with_parent: also stop when the process that started us dies, even by SIGKILL (the
    embedded emulator's client), so a killed client leaks no server and no jobs.
    containers: run jobs as containers of their image with `engine` (containers.py), every
    job in `image` when given.
    credentials_file: enforce IAM from the first request; an admin user's keys are written
    there (auth.enforce_in_server).
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    from . import jobs, moto_fixes, speedups, sqs_lock
    from .control import ControlMiddleware
    from .keepalive import KeepAliveRequestHandler
    from .sqs_direct import SqsDirect
    from .sqs_fast import SqsFastPath, enabled

    class RequestHandler(KeepAliveRequestHandler):
        pass

    RequestHandler.log_requests = log_requests  # werkzeug would log every request to stderr
    app = SqsDirect(DomainDispatcherApplication(create_backend_app))
    app = ControlMiddleware(SqsFastPath(app) if enabled() else app)
    if port:
        _check_port_free(host, port)  # werkzeug would print a paragraph and sys.exit(1)
    server = make_server(host, port, app, threaded=True, request_handler=RequestHandler)
    bound = server.server_address[1]
    reach = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    endpoint = f"http://{reach}:{bound}"
    os.environ["MOTO_PORT"] = str(bound)  # moto builds some URLs (SQS queue URLs) from it
    moto_fixes.install()
    speedups.install()
    sqs_lock.install()
    runtime = None
    if containers:
        from .containers import ContainerRuntime

        runtime = ContainerRuntime.find(endpoint, engine, image)
    jobs.install(endpoint, runtime)
    if credentials_file:
        from .auth import enforce_in_server

        enforce_in_server(credentials_file)

    def stop(signum, frame):
        raise _Stop()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    if exit_with_parent:
        _watch_parent(os.getppid())
    out = out or sys.stdout
    out.write(endpoint + "\n")
    out.flush()
    # The first thing a caller does is deploy the stack, and moto's CloudFormation takes
    # ~1 s to import (it imports every backend it supports): start that now, while the
    # caller is still creating its boto3 clients.
    threading.Thread(target=importlib.import_module, args=("moto.cloudformation.parsing",),
                     daemon=True).start()  # fmt: skip
    try:
        server.serve_forever(poll_interval=0.2)
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_IGN if s == signal.SIGTERM else handler)
        jobs.registry.kill_all()
        if runtime is not None:
            runtime.remove_all()
        server.server_close()
    return 0


#: How often the server checks that its parent is still alive (exit_with_parent).
PARENT_POLL_SECONDS = 1.0


def _watch_parent(parent: int) -> None:
    """When our parent dies we are re-parented: getppid() changes. Then stop like on SIGTERM."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="batchexec-parent-watch", daemon=True).start()
