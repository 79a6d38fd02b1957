"""The control channel between the supervisor and its runner: JSON headers and raw bytes.

One frame is a 4-byte header length, a JSON header (``{"kind": ..., ..., "sizes": [n, ...]}``)
and byte strings of those sizes, over a Unix socket. Nothing on this channel is pickled as a
whole: the supervisor must never unpickle what the runner sends (the runner executes user
code, and a pickle runs code when loaded), so user pickles travel as opaque blobs that only
the runner opens.

    supervisor ──▶ runner   "init"    {main_path}            blobs: [script source, initializer]
                            "task"    {id, seq, digest, blobs, not_after}
                                                             blobs: [pickled fn, pickled args,
                                                                     large buffers...,
                                                                     out-of-band buffers...]
    runner ──▶ supervisor   "ready"   {ok}                   blobs: [pickled RemoteException]?
                            "result"  {id, seq, ok, seconds} blobs: [pickled value | exception]
                            "skipped" {id, seq}

Why not multiprocessing's Connection: tasks are pipelined (several frames wait in the socket),
and a task crossing costs system calls and wake-ups more than anything else. Here reads are
buffered, so frames that arrived together cost one read, and ``complete`` says without a
system call whether a whole frame is waiting (the runner marks task boundaries accordingly,
the supervisor takes every waiting reply at once and never blocks on half a frame); writes
are gathered, so several tasks go out in one write (``send_frames``). Small frames are joined
into one write; large blobs are written (and read) as they are, not copied into a frame.
Headers are written and read by orjson: json's encoder and decoder were 4-5% of a runner's
busy time under dask's 15,000-task graphs (two headers a task each way).
"""

from __future__ import annotations

import socket

import orjson

#: Frames up to this many bytes are joined into one write (one system call, one copy).
JOIN_LIMIT = 1 << 20
#: Bytes asked of the socket per read when no large blob is due.
READ_SIZE = 256 * 1024


class ChannelError(EOFError):
    """The other end closed the channel or sent something that is not a frame."""


def frame(kind: str, header: dict | None = None, *blobs: bytes) -> list[bytes]:
    """The pieces of one frame, in order (join them or write them one after another)."""
    head = orjson.dumps(dict(header or {}, kind=kind, sizes=[len(b) for b in blobs]))
    return [len(head).to_bytes(4, "big"), head, *blobs]


class Channel:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._buf = bytearray()
        self._at = 0  # start of the first unread frame in _buf
        self._head: dict | None = None  # that frame's header, once parsed

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # -- writing --------------------------------------------------------------------------

    def send(self, kind: str, header: dict | None = None, *blobs: bytes) -> None:
        self.send_frames(frame(kind, header, *blobs))

    def send_frames(self, pieces: list[bytes]) -> None:
        """Write the pieces of one or more frames: one write when small (OSError when the
        peer is gone)."""
        if sum(map(len, pieces)) <= JOIN_LIMIT:
            self.sock.sendall(b"".join(pieces))
            return
        small: list[bytes] = []
        for piece in pieces:
            if len(piece) > 65536:
                if small:
                    self.sock.sendall(b"".join(small))
                    small = []
                self.sock.sendall(piece)
            else:
                small.append(piece)
        if small:
            self.sock.sendall(b"".join(small))

    # -- reading --------------------------------------------------------------------------

    def complete(self) -> bool:
        """Is a whole frame buffered? (No system call; ChannelError if it is garbage.)"""
        avail = len(self._buf) - self._at
        if avail < 4:
            return False
        n = int.from_bytes(self._buf[self._at : self._at + 4], "big")
        if avail < 4 + n:
            return False
        head = self._parsed_head(n)
        return avail >= 4 + n + sum(head["sizes"])

    def read_available(self) -> int:
        """Buffer what the socket holds now, without blocking: the bytes read (0: none
        yet), -1 at EOF."""
        try:
            chunk = self.sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return -1
        if not chunk:
            return -1
        self._append(chunk)
        return len(chunk)

    def recv(self) -> tuple[str, dict, list[bytes]]:
        """The next frame (blocking until it is whole); ChannelError when the peer is gone
        (EOF) or the frame is malformed."""
        try:
            self._fill(4)
            n = int.from_bytes(self._buf[self._at : self._at + 4], "big")
            self._fill(4 + n)
            head = self._parsed_head(n)
            at = self._at + 4 + n
            blobs = []
            for size in head["sizes"]:
                if len(self._buf) - at >= size:
                    with memoryview(self._buf) as view:
                        blobs.append(bytes(view[at : at + size]))
                    at += size
                else:  # a large blob: read it whole, past the buffer
                    have = self._buf[at:]
                    blob = bytearray(size)
                    blob[: len(have)] = have
                    view, got = memoryview(blob), len(have)
                    while got < size:
                        k = self.sock.recv_into(view[got:])
                        if not k:
                            raise ChannelError("the control channel closed mid-frame")
                        got += k
                    blobs.append(bytes(blob))
                    at = len(self._buf)
            self._consume(at)
            return head["kind"], head, blobs
        except OSError as exc:
            raise ChannelError(f"the control channel closed: {exc}") from None

    def _parsed_head(self, n: int) -> dict:
        if self._head is None:
            try:
                head = orjson.loads(self._buf[self._at + 4 : self._at + 4 + n])
                head["sizes"] = [int(x) for x in head["sizes"]]
                str(head["kind"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ChannelError(f"a malformed frame on the control channel: {exc!r}") from None
            self._head = head
        return self._head

    def _fill(self, n: int) -> None:
        """Block until n bytes from the current frame's start are buffered."""
        while len(self._buf) - self._at < n:
            chunk = self.sock.recv(max(READ_SIZE, n - (len(self._buf) - self._at)))
            if not chunk:
                raise ChannelError("the control channel closed")
            self._append(chunk)

    def _append(self, chunk: bytes) -> None:
        if self._at and self._at == len(self._buf):
            self._buf.clear()
            self._at = 0
        elif self._at > READ_SIZE:
            del self._buf[: self._at]
            self._at = 0
        self._buf += chunk

    def _consume(self, end: int) -> None:
        self._at = end
        self._head = None
        if self._at >= len(self._buf):
            self._buf.clear()
            self._at = 0
