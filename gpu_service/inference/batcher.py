"""One batcher per process: concurrent requests share the model through merged batches."""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)  # identity, not array comparison
class _Job:
    array: np.ndarray
    future: Future
    arrived: float
    taken: int = 0
    outputs: list[np.ndarray] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return len(self.array) - self.taken


@dataclass
class BatcherStats:
    submissions: int = 0
    rows: int = 0
    batches: int = 0
    max_rows_in_batch: int = 0
    max_submissions_in_batch: int = 0


class Batcher:
    """LIME asks the model for hundreds of perturbed copies of one image, in small batches, one
    after the other; with several requests in flight the GPU would idle between their calls.
    One thread owns the model calls: callers submit arrays and get futures; the thread packs
    rows of every waiting submission, oldest first, into batches of up to ``max_batch_size``
    rows, waiting at most ``max_wait_ms`` after the oldest row for more, and hands each caller
    back its own rows' outputs. Callers that announce themselves (``with batcher.caller():``)
    let it stop waiting once every active caller has rows queued: no more rows can come."""

    def __init__(
        self,
        predict_fn: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 256,
        max_wait_ms: float = 10.0,
        name: str = "predict-batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be positive")
        self._predict = predict_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self._pending: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._active = 0  # announced callers (0: unknown, always wait up to max_wait_ms)
        self.stats = BatcherStats()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, batch: np.ndarray) -> Future:
        future: Future = Future()
        array = np.asarray(batch)
        if array.ndim < 1 or len(array) == 0:
            future.set_exception(ValueError("empty batch"))
            return future
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher is closed")
            self._pending.append(_Job(array, future, time.monotonic()))
            self.stats.submissions += 1
            self._cond.notify()
        return future

    @contextlib.contextmanager
    def caller(self) -> Iterator[None]:
        """Mark one request as in flight for the duration of the block."""
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify()

    def _all_callers_waiting(self) -> bool:
        return self._active > 0 and len(self._pending) >= self._active

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Drop-in ``predict_fn`` for LIME: blocks until this batch's rows are computed."""
        return self.submit(batch).result()

    def close(self, timeout: float | None = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _available(self) -> int:
        return sum(job.remaining for job in self._pending)

    def _next_batch(self) -> list[tuple[_Job, int, int]] | None:
        """Wait for rows, then take up to ``max_batch_size`` of them (called with the lock held)."""
        while not self._pending:
            if self._closed:
                return None
            self._cond.wait()
        deadline = self._pending[0].arrived + self.max_wait_s
        while (
            not self._closed and self._available() < self.max_batch_size and not self._all_callers_waiting()
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        slices: list[tuple[_Job, int, int]] = []
        room = self.max_batch_size
        for job in self._pending:
            if room == 0:
                break
            take = min(room, job.remaining)
            if take:
                slices.append((job, job.taken, job.taken + take))
                job.taken += take
                room -= take
        return slices

    def _run(self) -> None:
        while True:
            with self._cond:
                slices = self._next_batch()
            if slices is None:
                return
            self._execute(slices)

    def _execute(self, slices: list[tuple[_Job, int, int]]) -> None:
        parts = [job.array[start:stop] for job, start, stop in slices]
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        try:
            outputs = np.asarray(self._predict(batch))
            if len(outputs) != len(batch):
                raise RuntimeError(f"predict returned {len(outputs)} rows for {len(batch)}")
        except BaseException as exc:  # noqa: BLE001 - every waiting caller must hear about it
            with self._cond:
                for job, _, _ in slices:
                    if job in self._pending:
                        self._pending.remove(job)
                    if not job.future.done():
                        job.future.set_exception(exc)
            return
        finished: list[_Job] = []
        offset = 0
        with self._cond:
            self.stats.batches += 1
            self.stats.rows += len(batch)
            self.stats.max_rows_in_batch = max(self.stats.max_rows_in_batch, len(batch))
            self.stats.max_submissions_in_batch = max(self.stats.max_submissions_in_batch, len(slices))
            for job, start, stop in slices:
                job.outputs.append(outputs[offset : offset + (stop - start)])
                offset += stop - start
                if stop == len(job.array):
                    self._pending.remove(job)
                    finished.append(job)
        for job in finished:
            result = job.outputs[0] if len(job.outputs) == 1 else np.concatenate(job.outputs, axis=0)
            job.future.set_result(result)
