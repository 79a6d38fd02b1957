"""SQS queues and the S3 payload store, as the rest of batchexec needs them.

Thin on purpose: batching to SQS's limits (10 entries, 1 MiB a call), retrying the entries a
batch call reports as failed, telling "the queue is gone" apart from other errors, and moving
large payloads through S3. Retries of whole requests (throttling, 5xx, connection resets) are
botocore's job, configured in aws.py.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from .aws import LONG_POLL_SECONDS, error_code
from .protocol import (
    MAC_ATTRIBUTE,
    REJECTED_ATTRIBUTE,
    SQS_BATCH_ENTRIES,
    SQS_MESSAGE_LIMIT,
    JsonText,
    authentic,
    session_attributes,
    sign,
)

log = logging.getLogger(__name__)

#: Error codes SQS uses for a deleted queue (query protocol, then JSON protocol).
_QUEUE_GONE_CODES = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
#: How often a batch entry the service reported as failed is sent again before giving up.
_ENTRY_RETRIES = 5
#: Multipart transfers above this size; parts of this size. Large payloads (100 MB and more)
#: then move in parallel parts rather than one long request.
_TRANSFER = TransferConfig(multipart_threshold=16 * 2**20, multipart_chunksize=16 * 2**20)


#: What a call can raise once botocore has given up: a service error, or no answer at all.
_AWS_ERRORS = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)


class TransportError(RuntimeError):
    """SQS or S3 refused an operation for good (after botocore's retries)."""


class QueueGone(TransportError):
    """The queue was deleted: its session has ended."""


def is_queue_gone(exc: BaseException) -> bool:
    return error_code(exc) in _QUEUE_GONE_CODES


# -- bodies whose JSON literal is ready (protocol.JsonText) -----------------------------------
# A SendMessageBatch entry for such a body carries a placeholder, and a botocore hook on the
# request puts the literal where botocore serialized the placeholder, before the request is
# signed. botocore then never scans the body (see JsonText for why that matters).

_PLACEHOLDER = "batchexec-body-literal:{}"
_SERIALIZED_PLACEHOLDER = re.compile(rb'"batchexec-body-literal:(\d+)"')
#: The literals of the SendMessageBatch call this thread is making, by entry index.
_pending = threading.local()


def _insert_literals(params, **kwargs) -> None:
    """botocore's before-call hook for SendMessageBatch (serialized, not yet signed)."""
    literals = getattr(_pending, "literals", None)
    if not literals:
        return
    body, parts, at = params["body"], [], 0
    for m in _SERIALIZED_PLACEHOLDER.finditer(body):
        literal = literals.get(int(m.group(1)))
        if literal is not None:
            parts += [body[at : m.start()], literal]
            at = m.end()
    parts.append(body[at:])
    params["body"] = b"".join(parts)
    _pending.inserted = True


def _install_literal_hook(sqs) -> bool:
    """Register the hook on a botocore client once; False for anything else (test doubles)."""
    events = getattr(getattr(sqs, "meta", None), "events", None)
    if events is None:
        return False
    events.register("before-call.sqs.SendMessageBatch", _insert_literals,
                    unique_id="batchexec-body-literals")
    return True


@dataclass
class Received:
    """One received SQS message."""

    body: str
    receipt: str
    message_id: str
    receive_count: int
    attributes: dict
    #: The body carries a valid MAC under the queue's session key (always True for a queue
    #: opened without a key). Nothing that is not authentic may be decoded.
    authentic: bool = True


class MessageQueue:
    """One SQS queue: batched sends, long-polled receives, batched deletes.

    Opened with the session's ``key``, it signs what it sends (HMAC-SHA256 of the body, in
    the ``batchexec-mac`` attribute) and marks what it receives as authentic or not.
    """

    def __init__(self, sqs, url: str, key: bytes | None = None):
        self.sqs = sqs
        self.url = url
        self.key = key
        self._literals = _install_literal_hook(sqs)

    def __repr__(self) -> str:
        return f"MessageQueue({self.url.rsplit('/', 1)[-1]})"

    def send(self, bodies: list[str], session: str) -> None:
        """Send bodies; TransportError if any of them could not be sent."""
        errors = [e for e in self.send_each(bodies, session) if e is not None]
        if errors:
            raise TransportError(f"{len(errors)} message(s) to {self} failed: {errors[0]}")

    def send_each(self, bodies: list[str], session: str, *,
                  rejected: str = "") -> list[str | None]:
        """Send bodies with the session's attributes, in as few SendMessageBatch calls as fit.

        Returns, per body, None if SQS accepted it or the reason it did not (after retrying
        the entries the service reported as failed): a batch can partly succeed, and the
        caller must not treat accepted messages as lost. A call that fails as a whole raises
        (QueueGone when the queue was deleted, else TransportError). ``rejected``: forward
        bodies that failed authentication, unsigned, with the reason as an attribute.
        """
        attrs = session_attributes(session)
        if rejected:
            attrs[REJECTED_ATTRIBUTE] = {"DataType": "String", "StringValue": rejected}
        signing = self.key is not None and not rejected
        attr_size = sum(
            len(k) + len(v["StringValue"]) + len(v["DataType"]) for k, v in attrs.items()
        ) + (len(MAC_ATTRIBUTE) + 64 + 6 if signing else 0)
        errors: list[str | None] = [None] * len(bodies)
        for group in _size_groups(list(enumerate(bodies)), attr_size, errors):
            literals = {i: body.literal.encode("ascii") for i, body in group
                        if self._literals and isinstance(body, JsonText)}  # fmt: skip
            entries = [
                {"Id": str(i),
                 "MessageBody": _PLACEHOLDER.format(i) if i in literals else body,
                 "MessageAttributes": _with_mac(attrs, self.key, body) if signing else attrs}
                for i, body in group
            ]
            for index, reason in self._send_entries(entries, literals).items():
                errors[index] = reason
        return errors

    def _send_batch(self, entries: list[dict], literals: dict[int, bytes]) -> dict:
        """One SendMessageBatch call, placeholders replaced by their literals."""
        _pending.literals, _pending.inserted = literals, False
        try:
            resp = self.sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
        finally:
            inserted, _pending.literals = _pending.inserted, None
        if literals and not inserted:  # botocore no longer calls the hook: never silent
            raise TransportError(
                "internal error: the request hook that inserts message bodies did not run "
                "(an incompatible botocore?); the messages of this call were sent without "
                "their bodies and will be rejected by the workers"
            )
        return resp

    def _send_entries(self, entries: list[dict],
                      literals: dict[int, bytes]) -> dict[int, str]:  # fmt: skip
        """One batch, retrying failed entries; returns {body index: reason} of those given up.

        Entries SQS blames on the sender (too large, malformed) fail at once; the others
        (throttled, internal errors) are sent again, up to _ENTRY_RETRIES times.
        """
        given_up: dict[int, str] = {}
        for _ in range(_ENTRY_RETRIES):
            try:
                resp = self._send_batch(entries, literals)
            except _AWS_ERRORS as exc:
                if is_queue_gone(exc):
                    raise QueueGone(f"{self} no longer exists") from exc
                raise TransportError(f"sending to {self} failed: {exc}") from exc
            by_id = {e["Id"]: e for e in entries}
            entries = []
            for f in resp.get("Failed") or []:
                if f.get("SenderFault"):
                    given_up[int(f["Id"])] = f"{self} rejected the message: {f.get('Message')}"
                else:
                    entries.append(by_id[f["Id"]])
            if not entries:
                return given_up
        for e in entries:
            given_up[int(e["Id"])] = f"{self} kept failing the message after retries"
        return given_up

    def receive(
        self, max_messages: int = SQS_BATCH_ENTRIES, wait: float = LONG_POLL_SECONDS
    ) -> list[Received]:
        try:
            resp = self.sqs.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=max_messages,
                WaitTimeSeconds=max(0, min(LONG_POLL_SECONDS, int(wait))),
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
                MessageAttributeNames=["All"],
            )
        except _AWS_ERRORS as exc:
            if is_queue_gone(exc):
                raise QueueGone(f"{self} no longer exists") from exc
            raise TransportError(f"receiving from {self} failed: {exc}") from exc
        out = []
        for m in resp.get("Messages", []):
            attrs = {k: v.get("StringValue") for k, v in m.get("MessageAttributes", {}).items()}
            out.append(Received(
                m["Body"],
                m["ReceiptHandle"],
                m["MessageId"],
                int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
                attrs,
                self.key is None or authentic(self.key, m["Body"], attrs.get(MAC_ATTRIBUTE)),
            ))
        return out

    def delete(self, receipts: Iterable[str]) -> None:
        receipts = list(receipts)
        for i in range(0, len(receipts), SQS_BATCH_ENTRIES):
            chunk = receipts[i : i + SQS_BATCH_ENTRIES]
            try:
                resp = self.sqs.delete_message_batch(
                    QueueUrl=self.url,
                    Entries=[{"Id": str(j), "ReceiptHandle": r} for j, r in enumerate(chunk)],
                )
            except _AWS_ERRORS as exc:
                if is_queue_gone(exc):
                    raise QueueGone(f"{self} no longer exists") from exc
                raise TransportError(f"deleting from {self} failed: {exc}") from exc
            for f in resp.get("Failed") or []:
                # An expired receipt: the message went back to the queue and will be seen
                # again; duplicates are ignored by task id, so this is safe to log and skip.
                log.debug("delete of a message on %s failed: %s", self, f.get("Message"))

    def extend(self, receipt: str, seconds: int) -> None:
        """Keep a message invisible while its task runs (the worker's heartbeat)."""
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=int(seconds)
            )
        except _AWS_ERRORS as exc:
            if is_queue_gone(exc):
                raise QueueGone(f"{self} no longer exists") from exc
            raise TransportError(f"extending visibility on {self} failed: {exc}") from exc

    def delete_queue(self) -> None:
        try:
            self.sqs.delete_queue(QueueUrl=self.url)
        except botocore.exceptions.ClientError as exc:
            if not is_queue_gone(exc):
                raise


def _with_mac(attrs: dict, key: bytes, body: str) -> dict:
    return {**attrs, MAC_ATTRIBUTE: {"DataType": "String", "StringValue": sign(key, body)}}


def _size_groups(bodies: list[tuple[int, str]], attr_size: int, errors: list):
    """Split (index, body) pairs into SendMessageBatch calls: at most 10 entries and 1 MiB
    each. A body too large for any message gets its reason in ``errors`` and is skipped."""
    group: list[tuple[int, str]] = []
    size = 0
    for index, body in bodies:
        n = len(body.encode("utf-8")) + attr_size
        if n > SQS_MESSAGE_LIMIT:
            errors[index] = f"a message of {n} bytes exceeds SQS's {SQS_MESSAGE_LIMIT}"
            continue
        if group and (len(group) == SQS_BATCH_ENTRIES or size + n > SQS_MESSAGE_LIMIT):
            yield group
            group, size = [], 0
        group.append((index, body))
        size += n
    if group:
        yield group


class PayloadStore:
    """Large payloads under one session's S3 prefix; removed with the session."""

    def __init__(self, s3, bucket: str, prefix: str):
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix.rstrip("/") + "/"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def put(self, name: str, data: bytes) -> str:
        key = self.prefix + name
        try:
            self.s3.upload_fileobj(io.BytesIO(data), self.bucket, key, Config=_TRANSFER)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise TransportError(f"uploading s3://{self.bucket}/{key} failed: {exc}") from exc
        except Exception as exc:  # s3transfer wraps ClientError in its own exception types
            raise TransportError(f"uploading s3://{self.bucket}/{key} failed: {exc}") from exc
        return key

    def get(self, key: str) -> bytes:
        """One GetObject (download_fileobj would add a HeadObject to every payload)."""
        try:
            return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise TransportError(f"downloading s3://{self.bucket}/{key} failed: {exc}") from exc

    def delete(self, keys: list[str]) -> None:
        """Delete these objects (payloads that are no longer needed), 1,000 a request."""
        for i in range(0, len(keys), 1000):
            try:
                self.s3.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
                )
            except _AWS_ERRORS as exc:
                raise TransportError(f"deleting payloads under {self.uri} failed: {exc}") from exc

    def delete_all(self) -> int:
        """Remove every object under the prefix; returns how many."""
        n = 0
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                self.s3.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys[i : i + 1000], "Quiet": True}
                )
            n += len(keys)
        return n
