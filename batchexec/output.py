"""Replays what tasks wrote to stdout/stderr on the client's own streams.

Workers send task output as data (protocol "output" messages, bounded per task); the
result collector hands each decoded message to an OutputPrinter, which writes every line to
the client's ``sys.stdout`` or ``sys.stderr`` (looked up at each write, so redirection and
pytest's capture work) prefixed with the worker it came from:

    (worker 3f2a9c:1) loading tile 17
"""

from __future__ import annotations

import sys
import threading

from .protocol import OutputMessage


class OutputPrinter:
    def __init__(self, stdout=None, stderr=None):
        self._stdout = stdout
        self._stderr = stderr
        self._lock = threading.Lock()

    def print(self, message: OutputMessage) -> None:
        prefix = f"(worker {message.worker}) "
        with self._lock:
            used = set()
            for line in message.lines:
                stream = self._stream(line.stream)
                if stream is None:
                    continue
                try:
                    stream.write(prefix + line.text + "\n")
                    used.add(stream)
                except (OSError, ValueError):  # a closed stream must not break the collector
                    pass
            for stream in used:
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass

    def _stream(self, name: str):
        if name == "stderr":
            return self._stderr if self._stderr is not None else sys.stderr
        return self._stdout if self._stdout is not None else sys.stdout
