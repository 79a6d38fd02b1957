"""The control channel between the supervisor and its runner: JSON headers and raw bytes.

One frame is a JSON header (``{"kind": ..., ..., "sizes": [n, ...]}``) and byte strings of
those sizes: in one ``Connection.send_bytes`` (4-byte header length, header, blobs) when
they are small, so a task costs one write each way; the header then each blob on its own when
they are large, so a 100 MB argument is not copied to be framed. Nothing on this channel is
pickled as a whole: the
supervisor must never unpickle what the runner sends (the runner executes user code, and a
pickle runs code when loaded), so user pickles travel as opaque blobs that only the runner
opens.

    supervisor ──▶ runner   "init"    {main_path}            blobs: [script source, initializer]
                            "task"    {id, digest}           blobs: [pickled fn, pickled args]
    runner ──▶ supervisor   "ready"   {ok}                   blobs: [pickled RemoteException]?
                            "result"  {id, ok, seconds}      blobs: [pickled value | exception]
"""

from __future__ import annotations

import json
from multiprocessing.connection import Connection

#: Blobs up to this many bytes in total travel in the header's write (one syscall, one copy).
JOIN_LIMIT = 1 << 20


class ChannelError(EOFError):
    """The other end closed the channel or sent something that is not a frame."""


def send(conn: Connection, kind: str, header: dict | None = None, *blobs: bytes) -> None:
    sizes = [len(b) for b in blobs]
    joined = sum(sizes) <= JOIN_LIMIT
    head = json.dumps(dict(header or {}, kind=kind, sizes=sizes, joined=joined),
                      separators=(",", ":")).encode()  # fmt: skip
    if joined:
        conn.send_bytes(b"".join([len(head).to_bytes(4, "big"), head, *blobs]))
        return
    conn.send_bytes(len(head).to_bytes(4, "big") + head)
    for blob in blobs:
        conn.send_bytes(blob)


def recv(conn: Connection) -> tuple[str, dict, list[bytes]]:
    """One frame; ChannelError when the peer is gone (EOF) or the frame is malformed."""
    try:
        first = conn.recv_bytes()
        n = int.from_bytes(first[:4], "big")
        head = json.loads(first[4 : 4 + n])
        sizes = [int(x) for x in head["sizes"]]
        if head["joined"]:
            view, blobs, at = memoryview(first), [], 4 + n
            for size in sizes:
                blobs.append(bytes(view[at : at + size]))
                at += size
        else:
            blobs = [conn.recv_bytes() for _ in sizes]
        return head["kind"], head, blobs
    except (EOFError, OSError) as exc:
        raise ChannelError(f"the control channel closed: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ChannelError(f"a malformed frame on the control channel: {exc!r}") from None
