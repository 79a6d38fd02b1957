"""`batchexec gc`: remove what sessions whose client vanished left behind.

A client that shuts down deletes its two queues and its S3 prefix. One that is killed
(SIGKILL, a lost laptop, a crashed CI runner) leaves them: its workers exit on their own
(idle timeout, or the task queue gone), the bucket's lifecycle rule expires sessions/ after
SessionObjectExpirationDays, but the queues stay until someone deletes them.

When is a session gone? SQS keeps no "last received" time, and a long job's client may send
nothing for hours, so age alone cannot tell a dead client from a patient one. The rule:

    last sign of life = the newest of
        - the queue's batchexec:heartbeat tag (unix seconds; a live client refreshes it every
          HEARTBEAT_INTERVAL_SECONDS), and
        - the queue's CreatedTimestamp (a session too young to have beaten yet)
    a session is gone when the last sign of life of each of its queues is older than
    --older-than (default 24 h, at least MIN_OLDER_THAN_SECONDS: three missed heartbeats).

Queues without a heartbeat tag (clients that predate it) are judged by creation time alone,
so a client of that kind running longer than --older-than would lose its queues: the output
says "(no heartbeat)" for them. Only queues named "<stack>_..." and tagged with this stack
(batchexec:stack) are considered; anything else is left alone. S3 prefixes sessions/<id>/
whose session has no queue left and whose newest object is older than --older-than are
removed too (a client killed between deleting its queues and its payloads).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import botocore.exceptions

from .aws import AwsClients, connection_errors_explained, error_code
from .errors import ConfigurationError
from .stack import (
    SESSION_KEY_PREFIX,
    SESSION_TAG,
    STACK_TAG,
    StackResources,
    session_queue_prefix,
)

#: Tag a live client refreshes on its queues (unix seconds, as a decimal string).
HEARTBEAT_TAG = "batchexec:heartbeat"
#: How often a live client refreshes HEARTBEAT_TAG: SQS TagQueue is cheap, but a fleet of
#: clients beating every few seconds would throttle; minutes are plenty against hours.
HEARTBEAT_INTERVAL_SECONDS = 300
#: gc refuses durations under three heartbeat intervals: one late beat must not kill a session.
MIN_OLDER_THAN_SECONDS = 3 * HEARTBEAT_INTERVAL_SECONDS
DEFAULT_OLDER_THAN_SECONDS = 24 * 3600

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """'90m', '24h', '1h30m', '2d', '3600s' or a bare number of seconds -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConfigurationError(
            f"duration {text!r} is not understood: use e.g. 90m, 24h, 1h30m, 2d"
        )
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass
class SessionLeftovers:
    """One session's queues (name -> url) and what is known about its last sign of life."""

    session: str
    queues: dict[str, str] = field(default_factory=dict)
    last_alive: float = 0.0
    heartbeat: bool = False
    objects: int = 0


@dataclass
class GcReport:
    removed: list[SessionLeftovers]
    kept: list[SessionLeftovers]
    orphan_prefixes: list[tuple[str, int]]  # (session, objects) with no queue left
    dry_run: bool

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = []
        for s in self.removed:
            how = "" if s.heartbeat else " (no heartbeat: judged by creation time)"
            queues = ", ".join(sorted(s.queues))
            where = f"{SESSION_KEY_PREFIX}{s.session}/"
            queues = ", ".join(sorted(s.queues))
            where = f"{SESSION_KEY_PREFIX}{s.session}/"
            out.append(f"{verb} session {s.session}: queues {queues}; {s.objects} object(s) "
                       f"under {where}{how}")  # fmt: skip
        for session, count in self.orphan_prefixes:
            out.append(f"{verb} {SESSION_KEY_PREFIX}{session}/: {count} object(s), no queues left")
        if not out:
            out.append("nothing to remove")
        if self.kept:
            out.append(f"kept {len(self.kept)} live session(s): "
                       f"{', '.join(sorted(s.session for s in self.kept))}")  # fmt: skip
        return out


def collect(clients: AwsClients, stack: StackResources, older_than: float, *,
            dry_run: bool = False, now: Callable[[], float] = time.time) -> GcReport:  # fmt: skip
    """Find the sessions of `stack` that are gone (see the module docstring) and remove them."""
    with connection_errors_explained(clients.endpoint_url):
        sessions = _find_sessions(clients, stack)
        cutoff = now() - older_than
        gone = [s for s in sessions.values() if s.last_alive < cutoff]
        kept = [s for s in sessions.values() if s.last_alive >= cutoff]
        s3 = clients.client("s3")
        for s in gone:
            keys = _keys(s3, stack.bucket, f"{SESSION_KEY_PREFIX}{s.session}/")
            s.objects = len(keys)
            if not dry_run:
                _delete_queues(clients, s)
                _delete_keys(s3, stack.bucket, keys)
        orphans = []
        for session in _session_prefixes(s3, stack.bucket):
            if session in sessions:
                continue
            objects = _objects(s3, stack.bucket, f"{SESSION_KEY_PREFIX}{session}/")
            if objects and max(o["LastModified"].timestamp() for o in objects) < cutoff:
                orphans.append((session, len(objects)))
                if not dry_run:
                    _delete_keys(s3, stack.bucket, [o["Key"] for o in objects])
    return GcReport(removed=sorted(gone, key=lambda s: s.session),
                    kept=sorted(kept, key=lambda s: s.session),
                    orphan_prefixes=sorted(orphans), dry_run=dry_run)  # fmt: skip


def _find_sessions(clients: AwsClients, stack: StackResources) -> dict[str, SessionLeftovers]:
    sqs = clients.client("sqs")
    prefix = session_queue_prefix(stack.name)
    sessions: dict[str, SessionLeftovers] = {}
    for page in sqs.get_paginator("list_queues").paginate(QueueNamePrefix=prefix):
        for url in page.get("QueueUrls", []):
            name = url.rstrip("/").rsplit("/", 1)[-1]
            if not name.startswith(prefix):
                continue
            try:
                tags = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
                attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["CreatedTimestamp"])[
                    "Attributes"
                ]
            except botocore.exceptions.ClientError as exc:
                if "NonExistentQueue" in error_code(exc) or "QueueDoesNotExist" in error_code(exc):
                    continue  # deleted meanwhile (its client shut down)
                raise
            if tags.get(STACK_TAG) != stack.name or not tags.get(SESSION_TAG):
                continue  # not made by a batchexec client of this stack: not ours to delete
            session = sessions.setdefault(tags[SESSION_TAG], SessionLeftovers(tags[SESSION_TAG]))
            session.queues[name] = url
            alive = float(attrs.get("CreatedTimestamp", 0))
            beat = _heartbeat(tags)
            if beat is not None:
                session.heartbeat = True
                alive = max(alive, beat)
            session.last_alive = max(session.last_alive, alive)
    return sessions


def _heartbeat(tags: dict[str, str]) -> float | None:
    try:
        return float(tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return None


def _delete_queues(clients: AwsClients, session: SessionLeftovers) -> None:
    sqs = clients.client("sqs")
    for url in session.queues.values():
        try:
            sqs.delete_queue(QueueUrl=url)
        except botocore.exceptions.ClientError as exc:
            if "NonExistentQueue" not in error_code(exc) and "QueueDoesNotExist" not in error_code(
                exc
            ):
                raise


def _session_prefixes(s3, bucket: str) -> list[str]:
    found = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=SESSION_KEY_PREFIX, Delimiter="/"):
        for p in page.get("CommonPrefixes", []):
            found.append(p["Prefix"][len(SESSION_KEY_PREFIX) :].rstrip("/"))
    return found


def _objects(s3, bucket: str, prefix: str) -> list[dict]:
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        objects.extend(page.get("Contents", []))
    return objects


def _keys(s3, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in _objects(s3, bucket, prefix)]


def _delete_keys(s3, bucket: str, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        chunk = [{"Key": k} for k in keys[i : i + 1000]]
        s3.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
