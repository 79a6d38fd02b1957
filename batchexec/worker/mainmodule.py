"""The client's main script as a module of the runner, exactly as multiprocessing's spawn does.

The client pickles functions of its ``__main__`` script by reference ("__main__", qualname).
For those to resolve, the runner imports the script once, before the initializer, as module
``__mp_main__`` (so its ``if __name__ == "__main__":`` block does not run) and makes
``sys.modules["__main__"]`` that same module. The initializer and every task then share one
namespace: globals the initializer sets are seen by tasks, module-level caches persist.

The script's source comes from the worker's own copy when that has the client's digest (the
emulator, a shared filesystem), else from the copy the client shipped (the supervisor
downloads it). Either way the source is registered in ``linecache`` under the client's path,
so tracebacks show the client's file name and source lines even when no such file exists here.
"""

from __future__ import annotations

import linecache
import os
import sys
import types

MAIN_NAME = "__mp_main__"

#: The path of the script being imported right now, while load_main runs ("" otherwise).
_importing = ""


def check_not_importing_main() -> None:
    """Refuse to start an executor from the top level of a script a worker is importing.

    Without the ``if __name__ == "__main__":`` guard, every worker importing the client's
    script would start an executor of its own, which would launch workers of its own...
    (multiprocessing refuses the same mistake with a RuntimeError).
    """
    if _importing:
        from ..errors import ConfigurationError

        raise ConfigurationError(
            f"a BatchExecutor was started while a worker was importing your script "
            f"{_importing}: workers import the script to find its functions, so start the "
            f"executor only under `if __name__ == \"__main__\":` (as with multiprocessing)"
        )


def load_main(path: str, source: bytes) -> types.ModuleType:
    """Execute ``source`` as the client's script at ``path``; returns the module.

    Exceptions of the script's own top-level code propagate (the caller reports them like a
    failing initializer).
    """
    text = source.decode("utf-8") if isinstance(source, bytes) else source
    # mtime None: linecache.checkcache never drops the entry (as for zipimported sources),
    # so a different or missing file at `path` on this machine does not hide the real lines.
    linecache.cache[path] = (len(text), None, text.splitlines(keepends=True), path)
    directory = os.path.dirname(path)
    if directory and directory not in sys.path:
        sys.path.insert(0, directory)
    module = types.ModuleType(MAIN_NAME)
    module.__file__ = path
    module.__spec__ = None  # as runpy.run_path leaves a script's module
    sys.modules[MAIN_NAME] = sys.modules["__main__"] = module
    code = compile(text, path, "exec", dont_inherit=True)
    global _importing
    _importing = path
    try:
        exec(code, module.__dict__)
    finally:
        _importing = ""
    return module
