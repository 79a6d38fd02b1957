"""One executor session's private resources: two queues and an S3 prefix.

Per session, so that two executors on one stack never see each other's messages, and so that
shutdown can remove everything by deleting two queues and one prefix. The stack supplies the
bucket and the dead-letter queue; the task queue redrives to it after ``max_attempts``
receives. Queue names start with the stack's name, which is what the stack's job role allows
workers to use. Both queues are encrypted at rest (SQS-managed SSE) and refuse requests made
without TLS.

The session also carries what workers need to behave like a spawned process of this one: the
client's main script (uploaded once, for workers that do not share the client's files) and the
client's Python and cloudpickle versions, which a worker must match, and the session's HMAC
key: every message is signed with it and checked before it is decoded, so nothing another
session (or anyone with only sqs:SendMessage) puts on our queues is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import threading
import time
import uuid

import botocore.exceptions
import cloudpickle

from . import gc as gc_rules
from .config import ExecutorOptions, SessionSettings, fit_max_task_seconds
from .errors import ConfigurationError
from .protocol import SQS_MESSAGE_LIMIT, script_digest
from .serialization import digest, dumps, main_script_path
from .stack import SESSION_TAG, STACK_TAG, session_queue_names
from .threads import ServiceThread
from .transport import MessageQueue, PayloadStore, is_queue_gone

log = logging.getLogger(__name__)

#: SQS queue names are at most 80 characters.
_QUEUE_NAME_LIMIT = 80
#: Messages older than this are dropped by SQS: far beyond any session, short enough that a
#: crashed client's queues do not hold data for long.
_RETENTION_SECONDS = 4 * 86400


#: The session queues' tag a live client refreshes, so `batchexec gc` can tell a crashed
#: client's leftovers from a long session (see gc.HEARTBEAT_INTERVAL_SECONDS).
HEARTBEAT_TAG = gc_rules.HEARTBEAT_TAG
HEARTBEAT_SECONDS = gc_rules.HEARTBEAT_INTERVAL_SECONDS

#: "<stack>_<session>-tasks": stack names cannot contain "_", so the job role's "<stack>_*"
#: matches this stack's session queues and no other stack's.
queue_names = session_queue_names


class Session:
    def __init__(self, settings: SessionSettings, sqs, store: PayloadStore, stack_name: str):
        self.settings = settings
        self.sqs = sqs
        self.store = store
        self.stack_name = stack_name
        key = settings.key
        self.tasks = MessageQueue(sqs, settings.task_queue_url, key)
        self.results = MessageQueue(sqs, settings.result_queue_url, key)
        self.dead_letters = MessageQueue(sqs, settings.dead_letter_queue_url, key)

    @property
    def id(self) -> str:
        return self.settings.session

    @classmethod
    def create(cls, clients, stack, options: ExecutorOptions, initializer=None, initargs=()):
        session = uuid.uuid4().hex[:12]
        task_name, result_name = queue_names(stack.name, session)
        if len(task_name) > _QUEUE_NAME_LIMIT or len(result_name) > _QUEUE_NAME_LIMIT:
            raise ConfigurationError(
                f"stack name {stack.name!r} is too long to name session queues after it "
                f"(at most {_QUEUE_NAME_LIMIT - 22} characters): deploy it under a shorter name"
            )
        max_task_seconds = fit_max_task_seconds(options.max_task_seconds, stack.job_timeout,
                                                stack.name)  # before anything is created
        sqs = clients.client("sqs")
        tags = {SESSION_TAG: session, STACK_TAG: stack.name,
                HEARTBEAT_TAG: str(int(time.time()))}
        arn_prefix = stack.dead_letter_queue_arn.rsplit(":", 1)[0]
        task_url = sqs.create_queue(
            QueueName=task_name,
            Attributes={
                **_protected(f"{arn_prefix}:{task_name}"),
                "VisibilityTimeout": str(options.visibility_timeout),
                "ReceiveMessageWaitTimeSeconds": "20",
                "MaximumMessageSize": str(SQS_MESSAGE_LIMIT),
                "MessageRetentionPeriod": str(_RETENTION_SECONDS),
                # One receive more than max_attempts: the worker that receives a message past
                # its attempts moves it to the dead-letter queue itself (after splitting a
                # failed pack, so no innocent task is abandoned with a poison one); the redrive
                # policy is the backstop for a worker that dies while doing so.
                "RedrivePolicy": json.dumps({
                    "deadLetterTargetArn": stack.dead_letter_queue_arn,
                    "maxReceiveCount": str(options.max_attempts + 1),
                }),
            },
            tags=tags,
        )["QueueUrl"]
        try:
            result_url = sqs.create_queue(
                QueueName=result_name,
                Attributes={
                    **_protected(f"{arn_prefix}:{result_name}"),
                    "ReceiveMessageWaitTimeSeconds": "20",
                    "MaximumMessageSize": str(SQS_MESSAGE_LIMIT),
                    "MessageRetentionPeriod": str(_RETENTION_SECONDS),
                },
                tags=tags,
            )["QueueUrl"]
        except Exception:
            sqs.delete_queue(QueueUrl=task_url)
            raise
        store = PayloadStore(clients.client("s3"), stack.bucket, f"sessions/{session}")
        initializer_key = initializer_digest = ""
        main = {}
        try:
            if initializer is not None:
                blob = dumps((initializer, tuple(initargs)), "initializer and initargs")
                initializer_key = store.put("initializer", blob)
                initializer_digest = digest(blob)
            main = _ship_main_script(store)
        except BaseException:
            sqs.delete_queue(QueueUrl=task_url)
            sqs.delete_queue(QueueUrl=result_url)
            raise
        settings = SessionSettings(
            session=session,
            task_queue_url=task_url,
            result_queue_url=result_url,
            dead_letter_queue_url=stack.dead_letter_queue_url,
            bucket=stack.bucket,
            prefix=store.prefix,
            visibility_timeout=options.visibility_timeout,
            max_attempts=options.max_attempts,
            idle_timeout=options.worker_idle_timeout,
            inline_limit=options.inline_limit,
            initializer_key=initializer_key,
            initializer_digest=initializer_digest,
            session_key=secrets.token_hex(32),
            output_limit=options.output_limit if options.forward_output else 0,
            buffer_cache_bytes=options.buffer_cache_bytes,
            max_task_seconds=max_task_seconds,
            job_timeout=stack.job_timeout,
            client_python=f"{sys.version_info.major}.{sys.version_info.minor}",
            client_cloudpickle=cloudpickle.__version__,
            **main,
        )
        log.info("session %s: queues %s, %s; payloads under %s", session, task_name,
                 result_name, store.uri)
        return cls(settings, sqs, store, stack.name)

    def heartbeat(self) -> None:
        """Refresh the queues' heartbeat tag: this session's client is alive."""
        now = {HEARTBEAT_TAG: str(int(time.time()))}
        for queue in (self.tasks, self.results):
            try:
                self.sqs.tag_queue(QueueUrl=queue.url, Tags=now)
            except botocore.exceptions.ClientError as exc:
                log.warning("refreshing the heartbeat of %s failed: %s", queue, exc)

    def is_alive(self, session: str) -> bool:
        """Whether another session of this stack still has its task queue."""
        try:
            self.sqs.get_queue_url(QueueName=queue_names(self.stack_name, session)[0])
            return True
        except botocore.exceptions.ClientError as exc:
            if is_queue_gone(exc):
                return False
            raise

    def close(self) -> None:
        """Delete the queues (workers notice and exit) and every object under the prefix."""
        for queue in (self.tasks, self.results):
            try:
                queue.delete_queue()
            except Exception as exc:
                log.warning("deleting %s failed: %s", queue, exc)
        try:
            self.store.delete_all()
        except Exception as exc:
            log.warning("deleting %s failed: %s", self.store.uri, exc)


class SessionHeartbeat(ServiceThread):
    """Refreshes the session queues' heartbeat tag every HEARTBEAT_SECONDS while the executor
    lives (one TagQueue per queue: negligible), so that `batchexec gc` never removes a long
    session, and does remove a crashed client's within its --older-than."""

    def __init__(self, session: Session, on_broken, interval: float = HEARTBEAT_SECONDS):
        super().__init__("batchexec-session-heartbeat", on_broken)
        self.session = session
        self.interval = interval
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def serve(self) -> None:
        while not self._stopping.wait(self.interval):
            self.session.heartbeat()


def _protected(arn: str) -> dict[str, str]:
    """Queue attributes: SQS-managed encryption at rest, and a policy that denies any
    request made without TLS."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "sqs:*",
            "Resource": arn,
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }],
    }
    return {"SqsManagedSseEnabled": "true", "Policy": json.dumps(policy)}


def _ship_main_script(store: PayloadStore) -> dict[str, str]:
    """Upload the client's main script once, so workers import it as ``__mp_main__``.

    Workers that share the client's files (the emulator, a shared filesystem) import it from
    ``main_path`` when its digest matches; others from the uploaded source.
    """
    path = main_script_path()
    if path is None:
        return {}
    with open(path, "rb") as f:
        source = f.read()
    return {"main_path": path, "main_key": store.put("main.py", source),
            "main_digest": script_digest(source)}
