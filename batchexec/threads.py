"""The base of the executor's background threads: none of them may die silently.

If a dispatcher, collector, watcher or monitor thread ended on an unexpected exception, the
futures it serves would wait forever. A ServiceThread instead reports the exception through
``on_broken``, which fails every outstanding future with a WorkersUnavailableError naming the
thread and the error, so the program sees a clear failure rather than a hang.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .errors import WorkersUnavailableError

log = logging.getLogger(__name__)


class ServiceThread(threading.Thread):
    def __init__(self, name: str, on_broken: Callable[[BaseException], None]):
        super().__init__(name=name, daemon=True)
        self.on_broken = on_broken

    def run(self) -> None:
        try:
            self.serve()
        except Exception as exc:
            log.exception("%s stopped on an unexpected error", self.name)
            error = WorkersUnavailableError(
                f"internal error in the executor's {self.name} thread: "
                f"{type(exc).__name__}: {exc} (please report it)"
            )
            error.__cause__ = exc
            self.on_broken(error)

    def serve(self) -> None:
        raise NotImplementedError
