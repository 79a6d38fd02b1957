"""Which argument buffers every worker holds, as far as the client can tell.

Workers keep the out-of-band buffers of the task messages they receive (worker/
buffer_cache.py, ``buffer_cache_bytes`` each). The client cannot choose which worker receives
a message (they share one queue), so it names a buffer instead of sending it only when every
worker it has heard from lately received it, recently enough that none has dropped it:

- it learns which workers there are from their "started" events (sent before a worker takes
  its first message), and who received a message from the results: the first result of a
  message names its worker, and that worker then holds the message's inline buffers;
- "recently" is a window of inline buffer bytes sent since: a worker's cache takes in only
  buffers of messages it receives, a subset of what the client sent, so while the client has
  sent less than the cache holds since the buffer's last inline send, a worker that received
  it still has it. The window is half the cache, for what is in flight meanwhile;
- a worker that has been silent for WORKER_SILENCE_SECONDS no longer counts (it exited, or is
  busy with one long task; a message it then receives may miss).

A guess that turns out wrong costs one round trip, never a wrong result: a worker that does
not hold a named buffer answers the task "missing", and the client sends it again with every
buffer inline (TaskTable.requeue).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

#: Messages whose first result has not come back, remembered at most (a message answered
#: only by the dead-letter watcher never reports its worker).
MAX_UNREPORTED = 10_000
#: A worker not heard from for this long is no longer counted among the workers that must
#: hold a buffer before the client names it.
WORKER_SILENCE_SECONDS = 60.0


class HeldBuffers:
    def __init__(self, worker_cache_bytes: int, clock=time.monotonic):
        self.window = worker_cache_bytes // 2
        self._clock = clock
        self._lock = threading.Lock()
        self._sent_bytes = 0  # inline buffer bytes sent in the session so far
        # digest -> _sent_bytes after its last inline send, oldest first
        self._position: OrderedDict[str, int] = OrderedDict()
        self._holders: dict[str, set[str]] = {}  # digest -> workers that received it inline
        self._unreported: dict[int, tuple[str, ...]] = {}  # message -> its inline digests
        self._workers: dict[str, float] = {}  # worker -> when it last reported

    def held_by_all(self, digest: str) -> bool:
        """May a message name this buffer instead of carrying it?"""
        if self.window <= 0:
            return False
        with self._lock:
            position = self._position.get(digest)
            if position is None or self._sent_bytes - position > self.window:
                return False
            holders = self._holders.get(digest, ())
            return bool(self._workers) and all(w in holders for w in self._workers)

    def sent(self, message: int, buffers: dict[str, bytes]) -> None:
        """A message went out carrying these buffers inline."""
        if self.window <= 0 or not buffers:
            return
        with self._lock:
            self._sent_bytes += sum(map(len, buffers.values()))
            for digest in buffers:
                self._position[digest] = self._sent_bytes
                self._position.move_to_end(digest)
                self._holders.setdefault(digest, set())
            self._unreported[message] = tuple(buffers)
            if len(self._unreported) > MAX_UNREPORTED:
                del self._unreported[next(iter(self._unreported))]
            while self._position:
                digest, position = next(iter(self._position.items()))
                if self._sent_bytes - position <= self.window:
                    break
                del self._position[digest]
                self._holders.pop(digest, None)

    def started(self, worker: str) -> None:
        """A worker announced itself: it holds nothing yet, and must before a buffer is named."""
        if self.window <= 0:
            return
        with self._lock:
            self._heard_from(worker)

    def delivered(self, message: int, worker: str) -> None:
        """A worker answered a task of this message: it received the message's buffers."""
        if self.window <= 0:
            return
        with self._lock:
            self._heard_from(worker)
            for digest in self._unreported.pop(message, ()):
                holders = self._holders.get(digest)
                if holders is not None:
                    holders.add(worker)

    def _heard_from(self, worker: str) -> None:
        now = self._clock()
        if worker not in self._workers or now - self._workers[worker] > 1.0:
            self._workers[worker] = now
            silent = [w for w, t in self._workers.items() if now - t > WORKER_SILENCE_SECONDS]
            for w in silent:
                del self._workers[w]

    def forget(self, message: int) -> None:
        """A message no worker will report on (its send failed)."""
        with self._lock:
            self._unreported.pop(message, None)
