"""The batcher's packing of concurrent callers' rows into shared model calls."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gpu_service.inference.batcher import Batcher

# -- settings ------------------------------------------------------------------------------


def _fake_model(calls: list[int]):
    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        time.sleep(0.005)
        s = batch.reshape(len(batch), -1).sum(axis=1)
        return np.stack([s, -s], axis=1)

    return predict


def test_batcher_merges_concurrent_submissions_and_splits_results() -> None:
    calls: list[int] = []
    batcher = Batcher(_fake_model(calls), max_batch_size=64, max_wait_ms=50)
    try:
        rng = np.random.default_rng(0)
        inputs = [rng.random((n, 3, 2)) for n in (10, 20, 30, 5, 100)]
        results: dict[int, np.ndarray] = {}

        def run(i: int) -> None:
            results[i] = batcher.predict(inputs[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, x in enumerate(inputs):
            s = x.reshape(len(x), -1).sum(axis=1)
            np.testing.assert_allclose(results[i], np.stack([s, -s], axis=1))
        assert max(calls) <= 64 and sum(calls) == 165
        assert batcher.stats.max_submissions_in_batch > 1  # rows of different callers shared a batch
        assert len(calls) < len(inputs) + 2
    finally:
        batcher.close()


def test_batcher_propagates_errors_to_callers() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost")

    batcher = Batcher(broken, max_batch_size=8, max_wait_ms=1)
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            batcher.predict(np.zeros((3, 2)))
        with pytest.raises(ValueError):
            batcher.predict(np.zeros((0, 2)))
    finally:
        batcher.close()
    with pytest.raises(RuntimeError):
        batcher.submit(np.zeros((1, 2)))


def test_batcher_stops_waiting_once_every_announced_caller_has_rows_queued() -> None:
    calls: list[int] = []
    batcher = Batcher(_fake_model(calls), max_batch_size=1000, max_wait_ms=2000)
    try:
        start = time.monotonic()
        with batcher.caller():
            batcher.predict(np.ones((4, 2)))
        assert time.monotonic() - start < 1.0  # the only caller: no point waiting 2 s for more rows

        barrier = threading.Barrier(2)

        def request(n: int) -> None:
            with batcher.caller():
                barrier.wait()
                batcher.predict(np.ones((n, 2)))

        calls.clear()
        start = time.monotonic()
        threads = [threading.Thread(target=request, args=(n,)) for n in (3, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.monotonic() - start < 1.5
        assert calls == [8]  # both callers' rows in one model call
    finally:
        batcher.close()
