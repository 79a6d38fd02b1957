"""The executor's background threads and futures: neither may die or stop silently.

If a dispatcher, collector, watcher or monitor thread ended on an unexpected exception, the
futures it serves would wait forever. A ServiceThread instead reports the exception through
``on_broken``, which fails every outstanding future with a WorkersUnavailableError naming the
thread and the error, so the program sees a clear failure rather than a hang. That includes
BaseExceptions (SystemExit, KeyboardInterrupt) raised in a user's done-callback.

``TaskFuture`` is a real ``concurrent.futures.Future`` whose callbacks cannot take the thread
that resolves it down: the standard Future logs an Exception from a callback but lets a
SystemExit escape, which would kill the result collector and skip the other callbacks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

from .errors import WorkersUnavailableError

log = logging.getLogger(__name__)
_futures_log = logging.getLogger("concurrent.futures")


class TaskFuture(Future):
    """A Future whose done-callbacks are isolated from the thread that resolves it."""

    def _invoke_callbacks(self):
        for callback in self._done_callbacks:
            try:
                callback(self)
            except BaseException:  # noqa: BLE001 - a user callback must not kill our thread
                _futures_log.exception("exception calling callback for %r", self)


def settle(future: Future, *, result=None, error: BaseException | None = None) -> bool:
    """Resolve a future unless it was resolved or cancelled meanwhile; True if it was set."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
        return True
    except Exception:  # InvalidStateError
        return False


class ServiceThread(threading.Thread):
    def __init__(self, name: str, on_broken: Callable[[BaseException], None]):
        super().__init__(name=name, daemon=True)
        self.on_broken = on_broken

    def run(self) -> None:
        try:
            self.serve()
        except BaseException as exc:  # noqa: BLE001 - see the module docstring
            log.exception("%s stopped on an unexpected error", self.name)
            error = WorkersUnavailableError(
                f"internal error in the executor's {self.name} thread: "
                f"{type(exc).__name__}: {exc} (please report it)"
            )
            error.__cause__ = exc
            self.on_broken(error)

    def serve(self) -> None:
        raise NotImplementedError
