"""Independent steps of one request run side by side: the four PNGs are rendered, then written,
on a small thread pool, since they do not depend on each other and spend most of their time
outside the GIL (zlib, Pillow, numpy, sockets). One pool for the process, shared by concurrent
requests (no step submits another, so none waits on a full pool). ``THREADS`` 1: one after the
other, in the caller's thread (benchmarks/bench_pipeline.py measures both).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

THREADS = 4
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def side_by_side(calls: list[Callable[[], Any]], keep_errors: tuple[type[Exception], ...] = ()) -> list[Any]:
    """The calls' results in order, once every call has finished (none is left running behind
    an error); a call that raised one of ``keep_errors`` gives that exception as its result, any
    other error is raised (the first in order)."""
    if THREADS <= 1:
        futures = [_run_now(call) for call in calls]
    else:
        futures = [_executor().submit(call) for call in calls]
        concurrent.futures.wait(futures)
    results = []
    for future in futures:
        error = future.exception()
        if error is not None and not isinstance(error, keep_errors):
            raise error
        results.append(error if error is not None else future.result())
    return results


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(THREADS, thread_name_prefix="side-by-side")
        return _pool


def _run_now(call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    try:
        future.set_result(call())
    except Exception as exc:  # noqa: BLE001 - handed to the caller, as the pool would
        future.set_exception(exc)
    return future
