"""Executor.map's machinery: chunks, and the lazy in-order result iterator.

As the standard library's (concurrent.futures._base.Executor.map with Python 3.14's
buffersize), written so that nothing already yielded stays referenced: the iterator yields
``_result_or_cancel(futures.popleft(), ...)`` directly, and a chunk's list is consumed by
popping (CPython's test_free_reference checks this).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError


def run_chunk(fn, chunk):
    """Worker side of map(chunksize=n): one task runs fn over a list of argument tuples."""
    return [fn(*args) for args in chunk]


def chunks(iterable: Iterable, n: int) -> Iterator[tuple]:
    it = iter(iterable)
    while chunk := tuple(itertools.islice(it, n)):
        yield chunk


def _result_or_cancel(future: Future, end_time: float | None):
    try:
        try:
            if end_time is None:
                return future.result()
            return future.result(end_time - time.monotonic())
        except FuturesTimeoutError:
            future.cancel()
            raise
    finally:
        del future  # no reference cycle through the traceback keeps the result alive


def map_results(futures: deque, more: Iterator | None, submit: Callable[[tuple], Future],
                end_time: float | None, chunked: bool, on_interrupt: Callable[[], None]):
    """Yield results in order, topping up the buffer as each is consumed (``more``: the
    argument tuples not yet submitted, with buffersize); cancel the rest on an early exit or
    error, as the standard library does. A KeyboardInterrupt while waiting calls
    ``on_interrupt`` (the executor aborts) before it propagates."""
    try:
        while futures:
            if more is not None:
                args = next(more, None)
                if args is not None:
                    futures.append(submit(args))
                del args
            if chunked:
                chunk = _result_or_cancel(futures.popleft(), end_time)
                chunk.reverse()
                while chunk:
                    yield chunk.pop()
            else:
                yield _result_or_cancel(futures.popleft(), end_time)
    except KeyboardInterrupt:
        on_interrupt()
        raise
    finally:
        for future in futures:
            future.cancel()
