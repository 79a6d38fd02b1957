"""Wire protocol, version 5: the message records that travel through SQS, and their codec.

Pure data and encoding, no AWS calls: the transport moves these bodies, the dispatcher and
worker build them. docs/protocol.md is the prose version of this module; change both at once
and bump PROTOCOL_VERSION when a field's meaning changes.

A body is JSON text (SQS bodies are text). Pickled bytes travel base64-encoded inline, or in
S3 under the session's prefix when larger than the inline limit (the SQS extended-client
pattern); the entry then carries the object key in ``ref`` instead of the bytes.

    task message    {"v":5, "type":"tasks", "session":S, "prior_attempts":N,
                     "fns":{digest: b64(cloudpickle(fn))},
                     ["bufs":{digest: b64(raw bytes)}], ["refs":{digest: s3 key}],
                     ["held":[digest...]],
                     "tasks":[{"id":T, "fn":digest, "args":b64(cloudpickle((args, kwargs)))
                               | "ref":key, "sha":digest,
                               ["blobs":[digest...]], ["bufs":[digest...]]}]}
    result message  {"v":5, "type":"results", "session":S, "worker":W,
                     "results":[{"id":T, "ok":bool, "s":seconds, "data":b64(...)}
                                | {"id":T, "ok":bool, "s":seconds, "ref":key}
                                | {"id":T, "ok":false, "missing":[digest...]}]}
    output message  {"v":5, "type":"output", "session":S, "worker":W,
                     "lines":[{"id":T|null, "stream":"stdout"|"stderr", "text":str}]}
    worker event    {"v":5, "type":"worker", "session":S, "worker":W, "event":E,
                     ["error":b64(cloudpickle(RemoteException))], ["message":str],
                     ["info":{...}]}

Version 5 (from 4): held buffers. A task message's ``held`` lists digests of out-of-band
buffers that it carries neither inline nor in S3, because every worker the client knows of
received them in an earlier message of the session (buffer_cache.py); a worker keeps the
buffers of the messages it receives for a while. A worker that does not hold one answers the
task with a ``missing`` result, not run and not charged, and the client sends it again with
every buffer inline. Version 4 (from 3): SHA-256 digests. Version 3 (from 2): out-of-band
buffers. A task's ``bufs`` lists, in pickle order, the digests of the raw buffers its
arguments were pickled without (serialization.SHARE_THRESHOLD); each is in the message's
``bufs`` (inline, once however many of its tasks list it) or ``refs`` (S3,
content-addressed, once per session). Version 2 (from 1): output messages;
worker events "started", "version_mismatch" and "protocol_mismatch" with their "message" and
"info" fields. A peer that meets another version raises ProtocolVersionError, which names both
versions.

``data`` of an ok result is the pickled return value; of a failed one a pickled
serialization.RemoteException (exception + traceback text).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field

import pybase64

from . import jsonread
from .errors import BatchExecError

PROTOCOL_VERSION = 4

#: SQS's limit on a message body plus attributes, and on a SendMessageBatch call (bytes): 1 MiB
#: since August 2025 (it was 256 KiB), and moto 5's. A queue's own MaximumMessageSize may be
#: lower, so the session creates its queues with this one (and the stack's dead-letter queue
#: has it). Larger messages carry task data that would otherwise cost three S3 requests each
#: (put, get, delete): dask's chunks of 64-256 KiB went through S3 and ran 6x slower.
SQS_MESSAGE_LIMIT = 1024 * 1024
#: Packs stop growing at this encoded size: the margin covers attributes and JSON framing.
MESSAGE_BODY_LIMIT = SQS_MESSAGE_LIMIT - 16 * 1024
#: SendMessageBatch / DeleteMessageBatch accept at most this many entries per call.
SQS_BATCH_ENTRIES = 10
#: Per-entry JSON overhead estimate used while packing (keys, quotes, ids).
ENTRY_OVERHEAD = 96

#: Message attribute naming the session: lets tools and the dead-letter watcher tell
#: sessions apart without parsing bodies.
SESSION_ATTRIBUTE = "batchexec-session"
VERSION_ATTRIBUTE = "batchexec-version"
#: HMAC-SHA256 of the body under the session's key (hex). Checked before a body is decoded,
#: so a message nobody with the key wrote is never unpickled or executed.
MAC_ATTRIBUTE = "batchexec-mac"
#: Set on a message moved to the dead-letter queue because it failed authentication.
REJECTED_ATTRIBUTE = "batchexec-rejected"


def sign(key: bytes, body: str) -> str:
    """The MAC a message body carries (hex HMAC-SHA256 under the session key)."""
    return hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def authentic(key: bytes, body: str, mac: str | None) -> bool:
    """Whether ``mac`` is ``body``'s MAC under ``key`` (constant-time comparison)."""
    return bool(mac) and hmac.compare_digest(sign(key, body), mac)


class ProtocolError(BatchExecError, ValueError):
    """A body that is not a batchexec message of a version this code understands."""


class ProtocolVersionError(ProtocolError):
    """A batchexec message of another protocol version: the two sides run different releases.

    ``version`` is the message's, ``expected`` this installation's; a worker reports both to
    the client (worker event "protocol_mismatch") instead of running the message.
    """

    def __init__(self, version, expected: int = PROTOCOL_VERSION):
        super().__init__(
            f"batchexec protocol version {version} is not supported by this installation "
            f"(it speaks version {expected}): install the same batchexec version on the "
            f"client and in the worker image"
        )
        self.version = version
        self.expected = expected


# base64 through pybase64 (SIMD): every inline byte is encoded once and decoded once each
# way, and the standard library decodes at about 400 MB/s on the 2-core VM (2026-11-25),
# pybase64 at 20 GB/s; over a 1,024-chunk map_overlap graph (280 MB of payload) that was
# about a second of CPU, shared by the client and the workers.


def b64(data: bytes) -> str:
    return pybase64.b64encode_as_string(data)


def unb64(text: str) -> bytes:
    """Strict: a character outside the alphabet is a ProtocolError (binascii.Error is a
    ValueError), not silently dropped as the standard library's default does."""
    return pybase64.b64decode(text, validate=True)


#: Messages holding a payload at least this large are written by hand, base64 between quotes:
#: json.dumps scans every character of a string for what to escape (about 350 MB/s on the
#: 2-core VM, three times base64's cost) and base64 has nothing to escape. A 1 MiB message of
#: array data then encodes in half the time. Messages of small payloads go through one
#: json.dumps, which is faster for many tiny tasks than a call per entry (and one more for
#: their JsonText literal, which botocore would otherwise have made).
HAND_WRITTEN = 4096
_SEPARATORS = (",", ":")


class JsonText(str):
    """A message body's JSON text that also carries ``literal``: the same text as a JSON
    string literal (exactly ``json.dumps(text)``), built from its parts.

    Why: an SQS request holds the body as a JSON string, and botocore's json.dumps would scan
    every character of it for what to escape, base64 included: the largest single cost of
    the client's sending thread over a map_overlap graph (2026-11-25). Here only the small
    JSON parts are escaped; base64 has nothing to escape. MessageQueue hands ``literal`` to
    the request (see transport.py).
    """

    literal: str


class _Writer:
    """Builds a JsonText from plain JSON parts and base64 parts."""

    def __init__(self):
        self._text: list[str] = []
        self._literal: list[str] = ['"']
        self._plain: list[str] = []  # plain parts not yet escaped

    def add(self, text: str) -> None:
        self._text.append(text)
        self._plain.append(text)

    def add_b64(self, data: bytes) -> None:
        encoded = b64(data)
        self._flush()
        self._text.append(encoded)
        self._literal.append(encoded)

    def _flush(self) -> None:
        if self._plain:
            self._literal.append(json.dumps("".join(self._plain))[1:-1])
            self._plain.clear()

    def text(self) -> JsonText:
        self._flush()
        out = JsonText("".join(self._text))
        out.literal = "".join(self._literal) + '"'
        return out


def _b64_object(w: _Writer, items: dict[str, bytes]) -> None:
    """A JSON object of base64 values (keys through json.dumps: any string is safe)."""
    w.add("{")
    for i, (k, v) in enumerate(items.items()):
        w.add(f'{"," if i else ""}{json.dumps(k)}:"')
        w.add_b64(v)
        w.add('"')
    w.add("}")


def _write_entry(w: _Writer, head: dict, key: str, payload: bytes | None) -> None:
    """An entry's JSON text: ``head``, and the inline payload (None: it is in S3) as base64
    under ``key``, written by hand."""
    text = json.dumps(head, separators=_SEPARATORS)
    if payload is None:
        w.add(text)
        return
    w.add(f'{text[:-1]},"{key}":"')
    w.add_b64(payload)
    w.add('"}')


def _json_list(w: _Writer, entries: list) -> None:
    """A JSON list of task or result entries, in their order: by hand when one is large."""
    if not any(e.hand_written() for e in entries):
        w.add(json.dumps([e.to_json() for e in entries], separators=_SEPARATORS))
        return
    w.add("[")
    for i, e in enumerate(entries):
        if i:
            w.add(",")
        e.write_json(w)
    w.add("]")


def encoded_len(n: int) -> int:
    """Length of the base64 text of n bytes."""
    return 4 * ((n + 2) // 3)


class _PayloadEntry:
    """What task and result entries share: one payload, in the attribute and JSON key
    ``PAYLOAD`` (base64) unless it is in S3 at ``ref``; the rest of the entry is ``_head``."""

    PAYLOAD: str
    ref: str | None

    def _head(self) -> dict:
        raise NotImplementedError

    def _inline(self) -> bytes | None:
        return None if self.ref is not None else getattr(self, self.PAYLOAD) or b""

    def to_json(self) -> dict:
        d = self._head()
        payload = self._inline()
        if payload is not None:
            d[self.PAYLOAD] = b64(payload)
        return d

    def hand_written(self) -> bool:
        payload = self._inline()
        return payload is not None and len(payload) >= HAND_WRITTEN

    def write_json(self, w: _Writer) -> None:
        """``to_json`` as JSON text, the payload's base64 written by hand."""
        _write_entry(w, self._head(), self.PAYLOAD, self._inline())


@dataclass
class TaskEntry(_PayloadEntry):
    """One task of a task message.

    ``fn`` is the digest of its pickled callable, found in the message's ``fns`` (inline) or
    ``refs`` (an S3 key: large callables are uploaded once per session, content-addressed).
    The pickled ``(args, kwargs)`` travel inline in ``args`` or, when large, in S3 at ``ref``
    (deleted once the task is resolved). ``blobs`` lists the digests of large buffers pickled
    apart from the arguments (persistent ids), each in the message's ``refs``. ``buffers``
    lists, in the order unpickling takes them, the digests of the raw out-of-band buffers of
    the arguments, each in the message's ``bufs``, ``refs`` or ``held``.
    """

    task_id: str
    fn: str
    args: bytes | None = None
    ref: str | None = None
    blobs: list[str] = field(default_factory=list)
    sha: str | None = None  # digest of the object at ref: checked before it is unpickled
    buffers: list[str] = field(default_factory=list)
    PAYLOAD = "args"

    def _head(self) -> dict:
        """All but the inline arguments."""
        d: dict = {"id": self.task_id, "fn": self.fn}
        if self.ref is not None:
            d["ref"] = self.ref
            d["sha"] = self.sha
        if self.blobs:
            d["blobs"] = self.blobs
        if self.buffers:
            d["bufs"] = self.buffers
        return d

    @classmethod
    def from_json(cls, d: dict) -> TaskEntry:
        return cls(d["id"], d["fn"], unb64(d["args"]) if "args" in d else None, d.get("ref"),
                   list(d.get("blobs", ())), d.get("sha"), list(d.get("bufs", ())))

    def shared(self) -> set[str]:
        """Digests of what this task needs from its message besides its own entry."""
        return {self.fn, *self.blobs, *self.buffers}


@dataclass
class TaskMessage:
    session: str
    tasks: list[TaskEntry]
    fns: dict[str, bytes] = field(default_factory=dict)
    prior_attempts: int = 0
    refs: dict[str, str] = field(default_factory=dict)
    bufs: dict[str, bytes] = field(default_factory=dict)
    #: Digests of buffers its tasks name that the worker should hold from earlier messages.
    held: list[str] = field(default_factory=list)

    def encode(self) -> JsonText:
        """The message's JSON text (payloads written by hand: see HAND_WRITTEN, JsonText)."""
        d: dict = {
            "v": PROTOCOL_VERSION,
            "type": "tasks",
            "session": self.session,
            "prior_attempts": self.prior_attempts,
        }
        if self.refs:
            d["refs"] = self.refs
        if self.held:
            d["held"] = self.held
        w = _Writer()
        w.add(json.dumps(d, separators=_SEPARATORS)[:-1] + ',"fns":')
        _b64_object(w, self.fns)
        w.add(',"tasks":')
        _json_list(w, self.tasks)
        if self.bufs:
            w.add(',"bufs":')
            _b64_object(w, self.bufs)
        w.add("}")
        return w.text()

    def subset(self, entries: list[TaskEntry], prior_attempts: int) -> TaskMessage:
        """A message holding some of this message's tasks, with just what they need (used
        to split a failed pack, and to hand tasks back)."""
        wanted = set().union(*(e.shared() for e in entries))
        return TaskMessage(self.session, entries,
                           {k: v for k, v in self.fns.items() if k in wanted}, prior_attempts,
                           {k: v for k, v in self.refs.items() if k in wanted},
                           {k: v for k, v in self.bufs.items() if k in wanted},
                           [k for k in self.held if k in wanted])  # fmt: skip

    def single(self, entry: TaskEntry, prior_attempts: int) -> TaskMessage:
        """A message holding just one of this message's tasks (used to split a failed pack)."""
        return self.subset([entry], prior_attempts)


@dataclass
class ResultEntry(_PayloadEntry):
    task_id: str
    ok: bool
    seconds: float = 0.0
    data: bytes | None = None
    ref: str | None = None
    sha: str | None = None  # digest of the object at ref: checked before it is unpickled
    #: Not a result: the worker did not hold these buffers of the task's message's ``held``,
    #: so the task did not run; the client sends it again with its buffers inline.
    missing: list[str] | None = None
    PAYLOAD = "data"

    def _head(self) -> dict:
        d: dict = {"id": self.task_id, "ok": self.ok, "s": round(self.seconds, 6)}
        if self.ref is not None:
            d["ref"] = self.ref
            d["sha"] = self.sha
        if self.missing is not None:
            d["missing"] = self.missing
        return d

    @classmethod
    def from_json(cls, d: dict) -> ResultEntry:
        return cls(
            d["id"],
            bool(d["ok"]),
            float(d.get("s", 0.0)),
            unb64(d["data"]) if "data" in d else None,
            d.get("ref"),
            d.get("sha"),
            list(d["missing"]) if "missing" in d else None,
        )

    def encoded_size(self) -> int:
        return ENTRY_OVERHEAD + (len(self.ref) if self.ref else encoded_len(len(self.data or b"")))


@dataclass
class ResultMessage:
    session: str
    worker: str
    results: list[ResultEntry]

    def encode(self) -> JsonText:
        """The message's JSON text (large results written by hand: see HAND_WRITTEN,
        JsonText)."""
        head = json.dumps(
            {"v": PROTOCOL_VERSION, "type": "results", "session": self.session,
             "worker": self.worker},
            separators=_SEPARATORS,
        )
        w = _Writer()
        w.add(f'{head[:-1]},"results":')
        _json_list(w, self.results)
        w.add("}")
        return w.text()


@dataclass
class OutputLine:
    """One line a task wrote (without its newline). ``task_id`` is None for output written
    outside any task: the initializer, the script's import, or a thread the task left behind."""

    task_id: str | None
    stream: str  # "stdout" or "stderr"
    text: str

    def to_json(self) -> dict:
        return {"id": self.task_id, "stream": self.stream, "text": self.text}

    @classmethod
    def from_json(cls, d: dict) -> OutputLine:
        stream = d["stream"]
        if stream not in OUTPUT_STREAMS:
            raise ValueError(f"unknown output stream {stream!r}")
        return cls(d["id"], stream, str(d["text"]))

    def encoded_size(self) -> int:
        # JSON escapes can grow text (a control byte becomes 6 characters): bound it.
        return 48 + len(self.task_id or "") + len(json.dumps(self.text))


#: The two streams a task's output is read from.
OUTPUT_STREAMS = ("stdout", "stderr")


@dataclass
class OutputMessage:
    """What tasks wrote to stdout/stderr, for the client to replay on its own streams."""

    session: str
    worker: str
    lines: list[OutputLine]

    def encode(self) -> str:
        return json.dumps(
            {
                "v": PROTOCOL_VERSION,
                "type": "output",
                "session": self.session,
                "worker": self.worker,
                "lines": [line.to_json() for line in self.lines],
            },
            separators=(",", ":"),
        )


@dataclass
class WorkerEvent:
    """Something a worker reports about itself rather than about a task."""

    #: First message of every worker; ``info`` holds its python (major.minor), cloudpickle
    #: and protocol versions.
    STARTED = "started"
    #: The initializer (or the import of the client's script) raised; ``error`` holds it.
    INITIALIZER_FAILED = "initializer_failed"
    #: The worker's Python or cloudpickle differs from the client's; ``message`` says what to
    #: do. The worker exits 1 without running anything.
    VERSION_MISMATCH = "version_mismatch"
    #: A task message of another protocol version reached the worker; ``message`` names both
    #: versions. The message went to the dead-letter queue unexecuted.
    PROTOCOL_MISMATCH = "protocol_mismatch"

    session: str
    worker: str
    event: str
    error: bytes | None = None
    message: str = ""
    info: dict | None = None

    def encode(self) -> str:
        d = {
            "v": PROTOCOL_VERSION,
            "type": "worker",
            "session": self.session,
            "worker": self.worker,
            "event": self.event,
        }
        if self.error is not None:
            d["error"] = b64(self.error)
        if self.message:
            d["message"] = self.message
        if self.info is not None:
            d["info"] = self.info
        return json.dumps(d, separators=(",", ":"))


Message = TaskMessage | ResultMessage | OutputMessage | WorkerEvent


def decode(body: str) -> Message:
    """Parse any batchexec message body; ProtocolError for anything else."""
    try:
        d = jsonread.loads(body)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"not a batchexec message (not JSON): {exc}") from None
    if not isinstance(d, dict) or "v" not in d:
        raise ProtocolError("not a batchexec message (no version field)")
    if d["v"] != PROTOCOL_VERSION:
        raise ProtocolVersionError(d["v"])
    try:
        kind = d["type"]
        if kind == "tasks":
            return TaskMessage(
                d["session"],
                [TaskEntry.from_json(t) for t in d["tasks"]],
                {k: unb64(v) for k, v in d.get("fns", {}).items()},
                int(d.get("prior_attempts", 0)),
                dict(d.get("refs", {})),
                {k: unb64(v) for k, v in d.get("bufs", {}).items()},
                list(d.get("held", ())),
            )
        if kind == "results":
            return ResultMessage(
                d["session"], d["worker"], [ResultEntry.from_json(r) for r in d["results"]]
            )
        if kind == "output":
            return OutputMessage(
                d["session"], d["worker"], [OutputLine.from_json(x) for x in d["lines"]]
            )
        if kind == "worker":
            return WorkerEvent(
                d["session"],
                d["worker"],
                d["event"],
                unb64(d["error"]) if "error" in d else None,
                str(d.get("message", "")),
                d.get("info"),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed batchexec message: {exc!r}") from None
    raise ProtocolError(f"unknown batchexec message type {kind!r}")


def script_digest(source: bytes) -> str:
    """Content address of the client's main script (SessionSettings.main_digest): a worker
    uses its own copy of the file only when this matches, else the copy shipped in S3."""
    return hashlib.sha256(source).hexdigest()


def session_attributes(session: str) -> dict:
    """Message attributes every batchexec message carries."""
    return {
        SESSION_ATTRIBUTE: {"DataType": "String", "StringValue": session},
        VERSION_ATTRIBUTE: {"DataType": "Number", "StringValue": str(PROTOCOL_VERSION)},
    }
