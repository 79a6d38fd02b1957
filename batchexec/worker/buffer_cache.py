"""Bytes a worker keeps by digest, least recently used dropped first, up to a byte budget.

The supervisor keeps two such caches: the content-addressed S3 objects it downloaded (a map's
large callable, large buffers: downloaded once per worker), and the out-of-band buffers of
the task messages it received, kept a while so the client need not resend them (below).

dask hands one chunk to every task that reads it, and those tasks become ready at different
times: a map_overlap over 1,024 chunks sent each chunk in five messages on average, four
fifths of the bytes it moved through SQS. Each worker keeps the buffers of the messages it
receives, most recently used last, up to a byte budget; the client names a buffer instead of
sending it when every worker it knows of received it recently (held.py). The budget is the
session's ``buffer_cache_bytes``: the client's estimate of "recently" is half of it, so a
buffer the client names is still here unless something the client cannot see happened (this
worker is new, or restarted); then the task is answered "missing" and sent again whole.
"""

from __future__ import annotations

from collections import OrderedDict


class BufferCache:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 0
        self._buffers: OrderedDict[str, bytes] = OrderedDict()

    def keep(self, buffers: dict[str, bytes]) -> None:
        """Remember these (digest -> bytes); the least recently used go when the budget is
        exceeded, but the newest stays even alone over it (a large callable is still
        downloaded once). A budget of 0 keeps nothing."""
        if self.capacity <= 0:
            return
        for digest, data in buffers.items():
            if digest in self._buffers:
                self._buffers.move_to_end(digest)
                continue
            self._buffers[digest] = data
            self.size += len(data)
        while self.size > self.capacity and len(self._buffers) > 1:
            _, data = self._buffers.popitem(last=False)
            self.size -= len(data)

    def get(self, digest: str) -> bytes | None:
        data = self._buffers.get(digest)
        if data is not None:
            self._buffers.move_to_end(digest)
        return data

    def __len__(self) -> int:
        return len(self._buffers)
