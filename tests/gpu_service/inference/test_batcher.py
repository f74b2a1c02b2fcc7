"""The shared batcher in front of the real demo model: same answers as calling the model directly,
with rows from concurrent callers merged into shared batches."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gpu_service.inference.batcher import Batcher
from gpu_service.inference.model import LoadedModel, load_model


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    m = load_model()
    m.warmup()
    return m


def test_batched_predictions_equal_direct_predictions(model: LoadedModel) -> None:
    h, w = model.info.input_size
    rng = np.random.default_rng(0)
    inputs = [rng.random((n, h, w, model.info.channels), dtype=np.float32) for n in (7, 33, 64, 1)]
    expected = [model.predict(x) for x in inputs]
    batcher = Batcher(model.predict, max_batch_size=48, max_wait_ms=100)
    got: dict[int, np.ndarray] = {}
    try:
        threads = [
            threading.Thread(target=lambda i=i: got.__setitem__(i, batcher.predict(inputs[i])))
            for i in range(len(inputs))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        batcher.close()
    for i, want in enumerate(expected):
        assert got[i].shape == want.shape
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)
    assert batcher.stats.rows == sum(len(x) for x in inputs)
    assert batcher.stats.max_rows_in_batch <= 48
    assert batcher.stats.max_submissions_in_batch > 1
