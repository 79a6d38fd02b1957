"""The control channel between the supervisor and its runner: JSON headers and raw bytes.

One frame is a JSON header (``{"kind": ..., ..., "blobs": n}``) followed by n byte strings,
each sent with ``Connection.send_bytes``. Nothing on this channel is pickled as a whole: the
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


class ChannelError(EOFError):
    """The other end closed the channel or sent something that is not a frame."""


def send(conn: Connection, kind: str, header: dict | None = None, *blobs: bytes) -> None:
    head = dict(header or {}, kind=kind, blobs=len(blobs))
    conn.send_bytes(json.dumps(head, separators=(",", ":")).encode())
    for blob in blobs:
        conn.send_bytes(blob)


def recv(conn: Connection) -> tuple[str, dict, list[bytes]]:
    """One frame; ChannelError when the peer is gone (EOF) or the frame is malformed."""
    try:
        head = json.loads(conn.recv_bytes())
        blobs = [conn.recv_bytes() for _ in range(int(head["blobs"]))]
        return head["kind"], head, blobs
    except (EOFError, OSError) as exc:
        raise ChannelError(f"the control channel closed: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ChannelError(f"a malformed frame on the control channel: {exc!r}") from None
