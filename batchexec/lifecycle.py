"""What the executor needs from the process it lives in: Ctrl-C at the top level, and fork.

Why a module of its own: both are process-wide hooks (sys.excepthook, os.register_at_fork)
installed once, whatever the number of executors, and they only keep track of which
executors exist; the executor decides what to do with the answers.

- An uncaught KeyboardInterrupt is noted by sys.excepthook, which Python runs before the
  atexit hooks: an executor's exit hook then aborts (stops the fleet) instead of waiting for
  running tasks. ``interrupted()`` tells.
- After os.fork(), the child's executors are unusable (their threads did not survive the
  fork): their exit hooks are unregistered in the child, so a child's exit never touches its
  parent's session.
"""

from __future__ import annotations

import atexit
import os
import sys
import weakref

_live_executors: weakref.WeakSet = weakref.WeakSet()
_interrupted = False


def interrupted() -> bool:
    """Whether the program is ending on an uncaught KeyboardInterrupt."""
    return _interrupted


def register(executor) -> None:
    """Track an executor (its ``_shutdown_at_exit`` is unregistered in forked children)."""
    _live_executors.add(executor)
    _install_interrupt_hook()


def _install_interrupt_hook() -> None:
    """Note an uncaught KeyboardInterrupt (sys.excepthook runs before atexit), so that the
    exit hooks abort the executors instead of waiting for their running tasks."""
    previous = sys.excepthook
    if getattr(previous, "_batchexec", False):
        return

    def hook(exc_type, exc, tb):
        global _interrupted
        if issubclass(exc_type, KeyboardInterrupt):
            _interrupted = True
        previous(exc_type, exc, tb)

    hook._batchexec = True
    sys.excepthook = hook


def _after_fork_in_child() -> None:
    """The executor's threads do not survive a fork: a child's executors are unusable (and
    _check_owner says so), and nothing at the child's exit may touch the parent's session."""
    for executor in list(_live_executors):
        atexit.unregister(executor._shutdown_at_exit)
    _live_executors.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
