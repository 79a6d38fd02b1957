"""The worker: the job definition's container command, ``batchexec worker``.

One worker is one AWS Batch array child (or, on the emulator, one local process). It serves
exactly one executor session, described by the BATCHEXEC_* environment (config.SessionSettings),
and is two processes:

    supervisor (this process: supervisor.py)            runner (child: runner.py)
    ─────────────────────────────────────────          ─────────────────────────────
    task queue ─▶ receive, split, dead-letter           started once, reused; replaced
    heartbeat: visibility of the held message           when it dies
    S3 payloads as raw bytes ── control channel ──▶     import client's script, initializer
                                 (channel.py)           unpickle fn + args, call, pickle
    outbox: results + output ◀── "result" frames ──     result or exception
      ─▶ result queue (≤ 0.2 s)  ◀── fd 1 / fd 2 pipes ──  print, logging, C writes
    process.py: spawn, watch (pidfd), kill the group     capture.py cuts them into lines

The supervisor never runs or unpickles user code, so whatever a task does to its own process
(crash it, stall it, hold its GIL, leave threads behind) the supervisor goes on heartbeating,
reports the right result and replaces the runner. docs/protocol.md lists what each failure does.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

log = logging.getLogger("batchexec.worker")

#: Characters of the Batch job id kept in a worker's name: short in every printed line, and
#: distinct enough between the jobs of one session.
JOB_ID_CHARS = 6


def worker_id(env: dict[str, str] | None = None) -> str:
    """A short, stable name: Batch job id prefix and array index ("3f2a9c:1"), else host:pid."""
    env = os.environ if env is None else env
    job = env.get("AWS_BATCH_JOB_ID")
    if job:
        base, _, index = job.partition(":")
        index = env.get("AWS_BATCH_JOB_ARRAY_INDEX", index)
        return f"{base[:JOB_ID_CHARS]}:{index}" if index else base[:JOB_ID_CHARS]
    return f"{socket.gethostname()}:{os.getpid()}"


def main(argv: list[str] | None = None) -> int:
    from ..aws import AwsClients
    from ..config import SessionSettings
    from ..transport import MessageQueue, PayloadStore
    from .supervisor import Supervisor

    logging.basicConfig(
        level=os.environ.get("BATCHEXEC_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = SessionSettings.from_env()
    clients = AwsClients.resolve()
    wid = worker_id()
    log.info("worker %s serving session %s", wid, settings.session)
    sqs = clients.client("sqs")
    supervisor = Supervisor(
        settings,
        wid,
        tasks=MessageQueue(sqs, settings.task_queue_url, settings.key),
        results=MessageQueue(sqs, settings.result_queue_url, settings.key),
        dead_letters=MessageQueue(sqs, settings.dead_letter_queue_url, settings.key),
        store=PayloadStore(clients.client("s3"), settings.bucket, settings.prefix),
    )
    return supervisor.run()
