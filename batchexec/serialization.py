"""Pickling of calls, results and exceptions, with errors that say what to do.

cloudpickle pickles lambdas, closures and functions defined in ``__main__`` by value; anything
importable is pickled by reference and must be importable on the worker too. Every failure
here becomes a :class:`SerializationError` on the one future concerned, never a dead worker
or a stuck dispatcher.

Remote exceptions travel with their formatted traceback and are re-raised on the client with
that traceback chained as ``__cause__``, as ProcessPoolExecutor does.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import sys
import traceback
import types

import cloudpickle

from .errors import RemoteTraceback, SerializationError

PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL


def describe(fn) -> str:
    """A short human name for a callable, for error messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None and hasattr(fn, "func"):  # functools.partial
        return f"partial({describe(fn.func)})"
    module = getattr(fn, "__module__", None)
    if name is None:
        return type(fn).__name__
    return f"{module}.{name}" if module and module != "builtins" else name


def main_script_path() -> str:
    """The client's main script as multiprocessing's spawn sees it ("" for interactive
    sessions, ``-c`` and ``-m``): workers import it as ``__mp_main__``."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return ""
    path = getattr(main, "__file__", None)
    return os.path.abspath(path) if path and os.path.isfile(path) else ""


class _MainByReference(cloudpickle.Pickler):
    """cloudpickle, except that functions and classes of the client's script go by reference
    ("__main__", qualname), as multiprocessing pickles them: the worker's runner imports the
    script, so they resolve to one shared module namespace there."""

    def reducer_override(self, obj):
        if (isinstance(obj, (types.FunctionType, type))
                and getattr(obj, "__module__", None) == "__main__"
                and _resolves_in_main(obj)):
            return NotImplemented  # pickle's own save_global: by reference
        return super().reducer_override(obj)


def _resolves_in_main(obj) -> bool:
    target = sys.modules.get("__main__")
    for part in getattr(obj, "__qualname__", "<").split("."):
        target = getattr(target, part, None)
    return target is obj


def _cloudpickle(obj) -> bytes:
    if not main_script_path():
        return cloudpickle.dumps(obj, protocol=PICKLE_PROTOCOL)
    buf = io.BytesIO()
    _MainByReference(buf, protocol=PICKLE_PROTOCOL).dump(obj)
    return buf.getvalue()


def dumps(obj, what: str) -> bytes:
    """cloudpickle ``obj``; ``what`` names it in the error ("argument of task 3", ...)."""
    try:
        return _cloudpickle(obj)
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle the {what}: {type(exc).__name__}: {exc}. Objects sent to workers "
            f"must be picklable (no open files, locks, sockets or live clients): pass a path "
            f"or plain data instead and open the resource inside the function"
        ) from exc


def loads(data: bytes, what: str):
    """Unpickle ``data``; a missing module becomes an error that says how to ship the code."""
    try:
        return pickle.loads(data)
    except ModuleNotFoundError as exc:
        raise SerializationError(
            f"cannot unpickle the {what}: module {exc.name!r} is not importable here. Install "
            f"your code in the worker image (or on the client, for results), or register it "
            f"with cloudpickle.register_pickle_by_value(module) to send it by value"
        ) from exc
    except Exception as exc:
        raise SerializationError(
            f"cannot unpickle the {what}: {type(exc).__name__}: {exc}"
        ) from exc


def digest(data: bytes) -> str:
    """Content address of a pickled callable: packs carry each distinct callable once."""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


class RemoteException:
    """An exception and its formatted traceback, as pickled by a worker.

    Rebuilt on the client by :meth:`rebuild`: the original exception (its original type)
    with a :class:`RemoteTraceback` as ``__cause__``.
    """

    def __init__(self, exc: BaseException, tb: str):
        self.exc = exc
        self.tb = tb

    @classmethod
    def capture(cls, exc: BaseException) -> RemoteException:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(exc, f'\n"""\n{tb}"""')

    def rebuild(self) -> BaseException:
        self.exc.__cause__ = RemoteTraceback(self.tb)
        return self.exc


def dumps_exception(exc: BaseException) -> bytes:
    """Pickle a task's exception with its traceback; an unpicklable one is replaced by a
    SerializationError that keeps its type name, message and traceback."""
    remote = RemoteException.capture(exc)
    try:
        return cloudpickle.dumps(remote, protocol=PICKLE_PROTOCOL)
    except Exception as pickling_error:
        substitute = SerializationError(
            f"the task raised {type(exc).__module__}.{type(exc).__qualname__}: {exc} -- but "
            f"that exception cannot be pickled ({type(pickling_error).__name__}: "
            f"{pickling_error}), so it is reported as this error instead"
        )
        return cloudpickle.dumps(RemoteException(substitute, remote.tb), protocol=PICKLE_PROTOCOL)
