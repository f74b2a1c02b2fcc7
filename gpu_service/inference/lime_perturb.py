"""Perturbed images for LIME, built in bulk: one gather + select per batch, not a loop per sample.

Split from explain.py: lime builds each perturbed image in a Python loop over samples and
segments; here a batch is one gather of the 0/1 sample rows by the label map (numpy on the
CPU, TensorFlow on an accelerator), built in a background thread while the previous batch
is in `predict_fn`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

CHUNK_ROWS = 32  # perturbations built per step: the keep-mask of a chunk stays in cache


class Perturber:
    """Builds perturbed batches: pixel p of sample n is image[p] if rows[n, segments[p]] else fudged[p].

    numpy (CPU): per chunk of rows, one gather of the 0/1 rows by the flat label map and
    one masked copy into the batch. TensorFlow (accelerator): the same as one gather +
    where on the device; the tensor goes to predict_fn as is when it `accepts_tensors`.
    """

    def __init__(
        self,
        image: np.ndarray,
        fudged: np.ndarray,
        segments: np.ndarray,
        device: str,
        tensors_ok: bool = False,
    ) -> None:
        self.shape = image.shape
        h, w, c = image.shape
        self.labels = segments.ravel().astype(np.intp)
        self.image = image.reshape(h * w, c) if c > 1 else image.reshape(h * w)
        self.fudged = fudged.reshape(h * w, c) if c > 1 else fudged.reshape(h * w)
        self.backend = "numpy"
        self.tensors_ok = tensors_ok
        self._tf_fn = None
        tf = sys.modules.get("tensorflow")  # only when the service already loaded TF for the model
        if device == "tensorflow":
            import tensorflow as tf
        use_tf = device == "tensorflow" or (
            device == "auto" and tf is not None and bool(tf.config.list_logical_devices("GPU"))
        )
        if use_tf:
            self.backend = "tensorflow-gpu" if tf.config.list_logical_devices("GPU") else "tensorflow"
            image_t = tf.constant(image)
            fudged_t = tf.constant(fudged)
            segments_t = tf.constant(segments)

            @tf.function(input_signature=[tf.TensorSpec([None, None], tf.bool)], reduce_retracing=True)
            def build(z):
                keep = tf.gather(z, segments_t, axis=1)[..., None]
                return tf.where(keep, image_t, fudged_t)

            self._tf_fn = build

    def __call__(self, rows: np.ndarray, pool: ThreadPoolExecutor | None = None) -> Any:
        """One batch; with `pool`, numpy fills its halves on two threads (for when nothing else runs)."""
        keep_rows = rows.astype(bool)
        if self._tf_fn is not None:
            batch = self._tf_fn(keep_rows)
            return batch if self.tensors_ok else batch.numpy()
        n = len(keep_rows)
        out = np.empty((n, *self.image.shape), dtype=self.image.dtype)
        if pool is None or n < 2 * CHUNK_ROWS:
            self._fill(keep_rows, out)
        else:
            half = n // 2
            parts = [pool.submit(self._fill, keep_rows[a:b], out[a:b]) for a, b in ((0, half), (half, n))]
            for part in parts:
                part.result()
        return out.reshape(n, *self.shape)

    def _fill(self, keep_rows: np.ndarray, out: np.ndarray) -> None:
        for i in range(0, len(keep_rows), CHUNK_ROWS):
            keep = np.take(keep_rows[i : i + CHUNK_ROWS], self.labels, axis=1)
            if self.image.ndim == 2:
                keep = keep[..., None]
            chunk = out[i : i + CHUNK_ROWS]
            np.copyto(chunk, self.fudged)
            np.copyto(chunk, self.image, where=keep)


def predict_all(
    data: np.ndarray, perturb: Perturber, predict_fn: Callable[[Any], np.ndarray], batch_size: int
) -> np.ndarray:
    """Run every perturbation through predict_fn, building batch i+1 while batch i predicts.

    The first batch has nothing to overlap with, so it is built on two threads; the others
    on one, beside the model.
    """
    starts = list(range(0, len(data), batch_size))
    outputs = []
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="lime-perturb") as pool:
        batch = perturb(data[:batch_size], pool)
        pending = None
        for i, _ in enumerate(starts):
            if pending is not None:
                batch = pending.result()
            if i + 1 < len(starts):
                nxt = starts[i + 1]
                pending = pool.submit(perturb, data[nxt : nxt + batch_size])
            preds = np.asarray(predict_fn(batch))
            if preds.ndim != 2 or preds.shape[0] != len(batch):
                raise ValueError(f"predict_fn returned shape {preds.shape} for a batch of {len(batch)}")
            outputs.append(preds)
            del batch
    return np.concatenate(outputs, axis=0)
