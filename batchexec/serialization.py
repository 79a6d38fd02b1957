"""Pickling of calls, results and exceptions, with errors that say what to do.

What goes by reference and what by value follows multiprocessing's spawn, so scripts written
for ProcessPoolExecutor behave the same:

- Functions and classes of the client's main *script* go by reference to ``__main__``. Workers
  import the script under the name ``__mp_main__`` (its ``if __name__ == "__main__":`` block
  does not run) and alias it as ``__main__``, so one module namespace per worker process is
  shared by the initializer and every task, and module globals travel once (as the script)
  instead of with every callable.
- Lambdas, closures and functions of interactive sessions (a REPL, Jupyter) go by value
  (cloudpickle), but every by-value function of one module is bound to one shared namespace in
  the worker. Unpickling a function adds the globals it brings only where the namespace lacks
  them (data set by the initializer or an earlier task is kept) and replaces functions and
  classes (the newest definition of code wins).
- Anything importable goes by reference and must be importable on the worker.
- Large buffers inside arguments (bytes, bytearray, numpy arrays of BLOB_THRESHOLD bytes or
  more) are pickled apart as content-addressed blobs: the executor uploads each distinct blob
  once per session, however many tasks carry it, and a worker unpickles it once (each task
  still gets its own copy, as from in-band pickling).
- Smaller array data inside arguments (pickle protocol 5's out-of-band buffers from
  SHARE_THRESHOLD up to BLOB_THRESHOLD bytes: numpy arrays, and anything else that pickles a
  PickleBuffer) travels apart from the pickle as raw bytes, so that a message carries each
  distinct buffer once however many of its tasks pass it (dask hands one chunk to every task
  that slices it). Each task still gets its own writable copy, as with in-band pickling.
- Open file objects are refused in every mode: pass the path and open it in the task.

Every failure here becomes a :class:`SerializationError` on the one future concerned (a
``pickle.PicklingError``, and a ``TypeError`` where pickle itself raised one, so existing
``except`` clauses keep working), never a dead worker or a stuck dispatcher.

Remote exceptions travel with their formatted traceback and are re-raised on the client with
that traceback chained as ``__cause__``, as ProcessPoolExecutor does.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import sys
import traceback
import types
from collections import OrderedDict

import cloudpickle
from cloudpickle import cloudpickle as _cp

from .errors import RemoteTraceback, SerializationError, SerializationTypeError

PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
#: Buffers at least this large inside arguments are pickled apart and uploaded once per
#: session: below it, a second S3 request costs more than resending the bytes.
BLOB_THRESHOLD = 256 * 1024
#: Out-of-band buffers (protocol 5) at least this large inside arguments travel apart from the
#: pickle, once per message: below it the digest that names one costs more than resending it.
SHARE_THRESHOLD = 4 * 1024
#: Distinct large buffers a worker keeps unpickled (least recently used go first).
BLOB_CACHE_SIZE = 8
#: The module name workers give the client's main script (as multiprocessing's spawn does).
MAIN_MODULE_ALIAS = "__mp_main__"


def describe(fn) -> str:
    """A short human name for a callable, for error messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None and hasattr(fn, "func"):  # functools.partial
        return f"partial({describe(fn.func)})"
    module = getattr(fn, "__module__", None)
    if name is None:
        return type(fn).__name__
    return f"{module}.{name}" if module and module != "builtins" else name


def digest(data: bytes) -> str:
    """Content address of pickled bytes and buffers (96 bits of SHA-256).

    SHA-256 rather than BLAKE2b: the client hashes every buffer of every task (240 MB over a
    1,024-chunk map_overlap graph), and with SHA instructions it runs at 1.75 GB/s against
    0.9 on the 2-core VM (2026-11-25)."""
    return hashlib.sha256(data).hexdigest()[:24]


# -- the client's main script ------------------------------------------------------------------


def main_script_path() -> str | None:
    """The client's main script, when it runs one (``python script.py``), else None.

    None for interactive sessions and ``python -c``; also for ``python -m pkg.mod``, whose
    module is importable by name on any worker that has the package.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or getattr(main, "__spec__", None) is not None:
        return None
    return _existing_file(os.path.abspath(path))


@functools.lru_cache(maxsize=8)
def _existing_file(path: str) -> str | None:
    """Asked for every pickled task: the script's stat is done once, not per submit (it was
    6% of the client's busy time under dask's map_overlap)."""
    return path if os.path.isfile(path) else None


def _lookup(module, qualname: str):
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# -- shared namespaces of by-value functions ---------------------------------------------------

_namespaces: dict[str, dict] = {}


def shared_namespace(module: str) -> dict:
    """The one global namespace of by-value functions of ``module`` in this process."""
    script = sys.modules.get(MAIN_MODULE_ALIAS)
    if module == "__main__" and getattr(script, "__name__", None) == MAIN_MODULE_ALIAS:
        return vars(script)  # the client's script, imported by the runner
    ns = _namespaces.get(module)
    if ns is None:
        ns = _namespaces[module] = {"__name__": module, "__builtins__": __builtins__}
    return ns


def _shared_function_setstate(obj, state):
    """cloudpickle's function setstate, but merging into a shared namespace: data already
    there is kept (state the initializer or a task set), code is replaced."""
    state, slotstate = state
    obj.__dict__.update(state)
    new_globals = slotstate.pop("__globals__")
    closure = slotstate.pop("__closure__")
    slotstate.pop("_cloudpickle_submodules")
    namespace = obj.__globals__
    for k, v in new_globals.items():
        if k not in namespace or isinstance(v, (types.FunctionType, type)):
            namespace[k] = v
    namespace.setdefault("__builtins__", __builtins__)
    if closure is not None:
        for i, cell in enumerate(closure):
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            obj.__closure__[i].cell_contents = value
    for k, v in slotstate.items():
        setattr(obj, k, v)


class _Blob:
    """Placeholder: a persistent id's payload, resolved by the unpickler's blob table."""


class Pickler(cloudpickle.Pickler):
    """cloudpickle with batchexec's rules (see the module docstring)."""

    def __init__(self, file, *, main_by_reference: bool, extract_blobs: bool,
                 buffer_callback=None):  # fmt: skip
        super().__init__(file, protocol=PICKLE_PROTOCOL, buffer_callback=buffer_callback)
        self.main_by_reference = main_by_reference
        self.blobs: dict[str, bytes] = {}
        if extract_blobs:  # a Python call per object: only when asked for
            self.persistent_id = self._blob_id

    def reducer_override(self, obj):
        if isinstance(obj, types.CodeType):
            return _code_reduce_keeping_filename(obj)
        if isinstance(obj, types.MethodType):
            # A bound method of something picklable goes as getattr(owner, name), as pickle
            # does: cloudpickle would send a classmethod of an importable class by value.
            name = getattr(obj.__func__, "__name__", None)
            try:
                same = name is not None and getattr(obj.__self__, name) == obj
            except Exception:
                same = False
            if same:
                return getattr, (obj.__self__, name)
        if isinstance(obj, io.IOBase):
            raise SerializationTypeError(
                f"an open file object ({obj!r}) cannot be sent to a worker, whatever its "
                f"mode: pass its path (or an s3:// URI) and open it inside the task"
            )
        if self.main_by_reference and getattr(obj, "__module__", None) == "__main__" and (
            isinstance(obj, (types.FunctionType, type))
        ) and _main_level(obj):
            return NotImplemented  # pickle's own save_global: "__main__", qualname
        return super().reducer_override(obj)

    def _function_getnewargs(self, func):
        code, base_globals, name, defaults, closure = super()._function_getnewargs(func)
        module = func.__globals__.get("__name__")
        if isinstance(module, str):
            base_globals = _NamespaceRef(module)
        return code, base_globals, name, defaults, closure

    def _dynamic_function_reduce(self, func):
        newargs = self._function_getnewargs(func)
        state = _cp._function_getstate(func)
        setstate = (_shared_function_setstate if isinstance(newargs[1], _NamespaceRef)
                    else _cp._function_setstate)
        return (_cp._make_function, newargs, state, None, None, setstate)

    def _blob_id(self, obj):
        t = type(obj)
        if t is bytes or t is bytearray:
            size = len(obj)
        elif t.__module__ == "numpy" and t.__name__ == "ndarray":
            size = obj.nbytes
        else:
            return None
        if size < BLOB_THRESHOLD:
            return None
        data = cloudpickle.dumps(obj, protocol=PICKLE_PROTOCOL)
        key = digest(data)
        self.blobs[key] = data
        return ("blob", key)


class _NeedsCloudpickle(Exception):
    """Raised by _FastPickler for an object that only Pickler's rules pickle right."""


#: Types whose pickling cloudpickle (or Pickler) defines itself: code, methods, modules,
#: descriptors, dict views, files, ...; the fast pickler leaves payloads holding them to Pickler.
_CLOUDPICKLE_TYPES = frozenset(_cp.Pickler._dispatch_table)
#: Functions and classes seen to pickle by reference (id -> object, which keeps the id valid).
_BY_REFERENCE: dict[int, object] = {}
_BY_REFERENCE_LIMIT = 4096
#: Types seen to pickle the same in both picklers (not files, not in _CLOUDPICKLE_TYPES).
_PLAIN_TYPES: set[type] = set()


class _FastPickler(pickle.Pickler):
    """The C pickler, for payloads that Pickler would pickle exactly as pickle does.

    Why: cloudpickle's hooks run in Python for every object that is not a builtin container
    or scalar (reducer_override, and a ChainMap dispatch table), and they were half the
    client's pickling time on dask's graph nodes (a dask task is about 16 such objects: its
    functions, classes and Task nodes). Most payloads hold only functions and classes that
    go by reference, and for those the two picklers write the same thing.

    Anything else (a function or class that goes by value, one of the client script's
    when it goes by value, a type from cloudpickle's own table, a file) raises
    _NeedsCloudpickle and the caller pickles the whole payload with Pickler. The answer for
    a function or class is cached, and the cache is used only while no module is registered
    for pickling by value.
    """

    def __init__(self, file, *, main_by_reference: bool, buffer_callback=None):
        super().__init__(file, protocol=PICKLE_PROTOCOL, buffer_callback=buffer_callback)
        self.main_by_reference = main_by_reference

    def reducer_override(self, obj):
        t = type(obj)
        if t in _PLAIN_TYPES:
            return NotImplemented
        if t is types.FunctionType or issubclass(t, type):
            if (_BY_REFERENCE.get(id(obj)) is obj and not _cp._PICKLE_BY_VALUE_MODULES
                    or self._by_reference(obj)):  # fmt: skip
                return NotImplemented
            raise _NeedsCloudpickle
        if t in _CLOUDPICKLE_TYPES or issubclass(t, io.IOBase):
            raise _NeedsCloudpickle
        if len(_PLAIN_TYPES) < _BY_REFERENCE_LIMIT:
            _PLAIN_TYPES.add(t)
        return NotImplemented

    def _by_reference(self, obj) -> bool:
        """Pickler's answer: main-script objects by the main rule, the rest by cloudpickle's
        (importable, and its module not registered for pickling by value)."""
        if getattr(obj, "__module__", None) == "__main__":
            return self.main_by_reference and _main_level(obj)  # not cached: a script
            # may define a name again
        if obj in _cp._BUILTIN_TYPE_NAMES or obj in (type(None), type(Ellipsis),
                                                     type(NotImplemented)):
            return False  # cloudpickle names these its own way
        if not _cp._should_pickle_by_reference(obj):
            return False
        if not _cp._PICKLE_BY_VALUE_MODULES:
            if len(_BY_REFERENCE) >= _BY_REFERENCE_LIMIT:
                _BY_REFERENCE.clear()
            _BY_REFERENCE[id(obj)] = obj
        return True


def _main_level(obj) -> bool:
    """A function or class of the main script found at module level under its qualname."""
    qualname = getattr(obj, "__qualname__", "")
    try:
        return "<locals>" not in qualname and _lookup(sys.modules["__main__"], qualname) is obj
    except AttributeError:
        return False


def _code_reduce_keeping_filename(code: types.CodeType):
    """cloudpickle's code reduction, but keeping the real file name (cloudpickle writes
    "<dynamic-code>"), so that tracebacks of lambdas and closures name their file and line,
    and the worker's linecache can show the line (the client's script is registered there)."""
    reduced = _cp._code_reduce(code)
    args = tuple(code.co_filename if a == "<dynamic-code>" else a for a in reduced[1])
    return (reduced[0], args, *reduced[2:])


class _NamespaceRef:
    """Pickles as a call that returns the worker's shared namespace of one module."""

    def __init__(self, module: str):
        self.module = module

    def __reduce__(self):
        return shared_namespace, (self.module,)


def dumps(obj, what: str, *, blobs: dict[str, bytes] | None = None,
          buffers: list[bytes] | None = None) -> bytes:
    """Pickle ``obj`` by batchexec's rules; ``what`` names it in errors ("arguments of task
    3"). With ``blobs`` given, large buffers are pickled apart into it (digest -> bytes). With
    ``buffers`` given, out-of-band buffers from SHARE_THRESHOLD up to BLOB_THRESHOLD bytes are
    appended to it as bytes (copies: the caller may change its arrays once submit returns), in
    the order ``loads(..., buffers=)`` takes them back.

    Blobs are looked for only when the whole pickle is large enough to hold one: the
    per-object hook costs a Python call per object, which small payloads (most tasks, and
    dask's many tiny ones) should not pay. Out-of-band buffers cost nothing to look for
    (pickle calls back only for objects that offer one).
    """
    found = [] if buffers is not None else None
    data = _dump(obj, what, None, found)
    if blobs is not None and len(data) >= BLOB_THRESHOLD:
        found = [] if buffers is not None else None
        data = _dump(obj, what, blobs, found)
    if found:
        buffers.extend(found)
    return data


#: Pickles of functions that went by reference (id -> (function, pickle, digest)).
_CALLABLE_PICKLES: dict[int, tuple[object, bytes, str]] = {}


def dumps_callable(fn, what: str) -> tuple[bytes, str, dict[str, bytes]]:
    """A task's callable pickled, with its digest and blobs, as ``dumps`` does it.

    Why a cache: dask submits the same module function for every task (15,000 times in a
    map_overlap graph), and it goes by reference: the same pickle every time. A function
    whose pickle the fast pickler wrote by reference is kept with its pickle, and the
    cache is used only while no module is registered for pickling by value (the rule of
    _FastPickler's own cache); script functions are never kept (a script may define a name
    again)."""
    by_value = _cp._PICKLE_BY_VALUE_MODULES
    hit = _CALLABLE_PICKLES.get(id(fn))
    if hit is not None and hit[0] is fn and not by_value:
        return hit[1], hit[2], {}
    blobs: dict[str, bytes] = {}
    data = dumps(fn, what, blobs=blobs)
    data_digest = digest(data)
    if (type(fn) is types.FunctionType and _BY_REFERENCE.get(id(fn)) is fn and not blobs
            and not by_value):  # fmt: skip
        if len(_CALLABLE_PICKLES) >= _BY_REFERENCE_LIMIT:
            _CALLABLE_PICKLES.clear()
        _CALLABLE_PICKLES[id(fn)] = (fn, data, data_digest)
    return data, data_digest, blobs


def dumps_apart(obj, what: str, *, blobs: dict[str, bytes] | None = None
                ) -> tuple[bytes, dict[str, bytes], tuple[str, ...]]:  # fmt: skip
    """``dumps`` with the out-of-band buffers set apart and named by digest, as a task's
    arguments travel: (pickle, buffers by digest, their digests in the order ``loads`` takes
    them; one buffer may come more than once)."""
    raw: list[bytes] = []
    data = dumps(obj, what, blobs=blobs, buffers=raw)
    order = tuple(map(digest, raw))
    return data, dict(zip(order, raw, strict=True)), order


def _dump(obj, what: str, blobs: dict[str, bytes] | None,
          buffers: list[bytes] | None = None) -> bytes:  # fmt: skip
    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        """pickle's buffer_callback: False sends the buffer out of band (into ``buffers``)."""
        raw = buffer.raw()  # contiguous: pickle offers no other kind out of band
        if not SHARE_THRESHOLD <= raw.nbytes < BLOB_THRESHOLD:
            return True  # small ones stay in the pickle, large ones become blobs
        buffers.append(raw.tobytes())
        return False

    callback = out_of_band if buffers is not None else None
    main_by_reference = main_script_path() is not None
    if blobs is None:  # blobs need Pickler's persistent_id
        first = len(buffers) if buffers is not None else 0
        data = _fast_dump(obj, main_by_reference, callback)
        if data is not None:
            return data
        if buffers is not None:
            del buffers[first:]
    buf = io.BytesIO()
    pickler = Pickler(buf, main_by_reference=main_by_reference,
                      extract_blobs=blobs is not None, buffer_callback=callback)
    try:
        pickler.dump(obj)
    except SerializationError:
        raise
    except Exception as exc:
        kind = SerializationTypeError if isinstance(exc, TypeError) else SerializationError
        raise kind(
            f"cannot pickle the {what}: {type(exc).__name__}: {exc}. Objects sent to workers "
            f"must be picklable (no open files, locks, sockets or live clients): pass a path "
            f"or plain data instead and open the resource inside the function"
        ) from exc
    if blobs is not None:
        blobs.update(pickler.blobs)
    return buf.getvalue()


def _fast_dump(obj, main_by_reference: bool, buffer_callback=None) -> bytes | None:
    """``obj`` pickled by _FastPickler; None when it needs cloudpickle's rules, or cannot be
    pickled at all (the caller's cloudpickle path then says why)."""
    buf = io.BytesIO()
    try:
        _FastPickler(buf, main_by_reference=main_by_reference,
                     buffer_callback=buffer_callback).dump(obj)
    except Exception:  # _NeedsCloudpickle, or an error for cloudpickle to meet and word
        return None
    return buf.getvalue()


def dumps_result(value) -> bytes:
    """``cloudpickle.dumps(value)``, a task's result, through the C pickler where that writes
    the same (see _FastPickler): results of dask's tasks are arrays and graph nodes. Errors
    are cloudpickle's, for the caller to word."""
    data = _fast_dump(value, main_by_reference=False)
    return data if data is not None else cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, blobs, buffers=None):
        super().__init__(file, buffers=buffers)
        self.blobs = blobs

    def persistent_load(self, pid):
        kind, key = pid
        if kind != "blob":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self.blobs[key]


class BlobTable:
    """A runner's large buffers by digest: each unpickled once while recently used.

    The supervisor hands over the pickled bytes with every task that needs them (``add``);
    a buffer still cached from an earlier task is not unpickled again, so a large object
    shared by a whole map costs one unpickle per worker, not one per task.

    Indexing gives the cached object itself: callables, which the runner keeps across tasks
    like a module's globals, load through it. Arguments load through :meth:`private`, so that
    each task gets its own copy, as with ProcessPoolExecutor (which unpickles every task's
    arguments afresh): a task that changes a large array in place must not change it for the
    next task on that worker. A copy is a memcpy, far cheaper than the unpickle and transfer
    it stands in for.
    """

    def __init__(self, capacity: int = BLOB_CACHE_SIZE):
        self.capacity = capacity
        self._objects: OrderedDict[str, object] = OrderedDict()
        self._pending: dict[str, bytes] = {}

    def add(self, key: str, data: bytes) -> None:
        if key not in self._objects:
            self._pending[key] = data

    def clear_pending(self) -> None:
        self._pending.clear()

    def private(self) -> _PrivateBlobs:
        """A view for one unpickling of a task's arguments: each blob a fresh copy of the
        cached one (the same copy wherever the arguments name it twice)."""
        return _PrivateBlobs(self)

    def __getitem__(self, key: str):
        obj = self._objects.get(key, _MISSING)
        if obj is not _MISSING:
            self._objects.move_to_end(key)
            return obj
        try:
            data = self._pending.pop(key)
        except KeyError:
            raise pickle.UnpicklingError(f"large buffer {key} was not delivered") from None
        obj = self._objects[key] = pickle.loads(data)
        while len(self._objects) > self.capacity:
            self._objects.popitem(last=False)
        return obj


class _PrivateBlobs:
    def __init__(self, table: BlobTable):
        self._table = table
        self._copies: dict[str, object] = {}

    def __getitem__(self, key: str):
        try:
            return self._copies[key]
        except KeyError:
            copy = self._copies[key] = _private_copy(self._table[key])
            return copy


def _private_copy(obj):
    """A copy a task may change without changing ``obj``. Blobs are bytes (immutable: shared),
    bytearrays and plain numpy arrays (see ``Pickler._blob_id``); an array of Python objects
    is copied deeply, as unpickling it again would."""
    if type(obj) is bytes:
        return obj
    if type(obj) is bytearray:
        return bytearray(obj)
    if obj.dtype.hasobject:
        return pickle.loads(pickle.dumps(obj, protocol=PICKLE_PROTOCOL))
    return obj.copy(order="K")


_MISSING = object()


def loads(data: bytes, what: str, blobs=None, buffers=None):
    """Unpickle ``data``; a missing module becomes an error that says how to ship the code.

    ``buffers`` are the out-of-band buffers ``dumps`` set apart, in its order; pass writable
    ones (bytearray) for arrays the task may change in place, as in-band ones can be."""
    try:
        if blobs is None:
            return pickle.loads(data, buffers=buffers)
        return _Unpickler(io.BytesIO(data), blobs, buffers).load()
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
