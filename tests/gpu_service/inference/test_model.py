"""Model loading (.keras, legacy .h5, SavedModel, gs:// via fake-gcs-server) and prediction."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

from gpu_service.transport.model_download import download_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from devkit.synthetic import make_radiograph, to_dicom_dataset
from gpu_service.inference.model import DEFAULT_MODEL_URI, LoadedModel, ModelLoadError, load_model
from gpu_service.inference.pixels import decode, read_dicom, to_model_input


def _batch(model: LoadedModel, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    x = np.stack(
        [
            to_model_input(
                make_radiograph(rng, size=int(rng.choice([160, 300])), nodule=bool(y)).image,
                model.info.input_size,
                model.info.channels,
            )
            for y in labels
        ]
    )
    return x, labels


def test_demo_model_loads_once_and_classifies_held_out_images() -> None:
    model = load_model()
    assert load_model(None) is model
    info = model.info
    assert info.labels == ["normal", "nodule"]
    assert info.input_size == (128, 128) and info.channels == 1 and info.scaling == "unit"
    assert info.sha256 == hashlib.sha256(Path(DEFAULT_MODEL_URI).read_bytes()).hexdigest()
    assert Path(DEFAULT_MODEL_URI).stat().st_size < 4 * 1024 * 1024
    model.warmup()
    x, y = _batch(model, 40, seed=12345)
    probs = model.predict(x)
    assert probs.shape == (40, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == y).mean() >= 0.95


def test_dicom_to_prediction() -> None:
    """The whole domain path: Part-10 bytes -> pixels -> model input -> nodule."""
    model = load_model()
    sample = make_radiograph(np.random.default_rng(31), size=900, nodule=True)
    buf = io.BytesIO()
    to_dicom_dataset(sample.image, bits=12).save_as(buf, enforce_file_format=True)
    image = decode(read_dicom(buf.getvalue()))
    x = to_model_input(image, model.info.input_size, model.info.channels)
    probs = model.predict(x[None])
    assert model.info.labels[int(probs.argmax())] == "nodule"
    with pytest.raises(ValueError):
        model.predict(np.zeros((1, 64, 64, 1), np.float32))


def _small_keras_model(channels: int = 3, units: int = 1):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, channels))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(units, activation="sigmoid" if units == 1 else "softmax")(x)
    return keras.Model(inputs, outputs)


def test_legacy_h5_with_sigmoid_output_and_symmetric_scaling(tmp_path: Path) -> None:
    keras_model = _small_keras_model()
    path = tmp_path / "model-best.h5"
    keras_model.save(path)  # legacy HDF5, like the prototype's checkpoint
    (tmp_path / "model-best.json").write_text(
        json.dumps(
            {"name": "proto", "version": "7", "labels": ["normal", "abnormal"], "input_scaling": "symmetric"}
        )
    )
    model = load_model(str(path))
    assert model.info.name == "proto" and model.info.version == "7"
    assert model.info.input_size == (32, 32) and model.info.channels == 3
    x = np.random.default_rng(0).random((5, 32, 32, 3), dtype=np.float32)
    probs = model.predict(x)
    p = keras_model.predict(x * 2 - 1, verbose=0)[:, 0]
    np.testing.assert_allclose(probs[:, 1], p, atol=1e-5)
    np.testing.assert_allclose(probs[:, 0], 1 - p, atol=1e-5)


def test_savedmodel_directory_via_tfsmlayer(tmp_path: Path) -> None:
    keras_model = _small_keras_model(channels=1, units=3)
    path = tmp_path / "exported"
    keras_model.export(str(path), verbose=False)
    (tmp_path / "exported.json").write_text(
        json.dumps({"labels": ["a", "b", "c"], "input_scaling": "imagenet", "version": "2024.1"})
    )
    model = load_model(str(path))
    model.warmup()
    assert model.info.input_size == (32, 32) and model.info.channels == 1
    assert len(model.info.sha256) == 64
    x = np.random.default_rng(1).random((4, 32, 32, 1), dtype=np.float32)
    mean, std = np.mean([0.485, 0.456, 0.406]), np.mean([0.229, 0.224, 0.225])
    np.testing.assert_allclose(model.predict(x), keras_model.predict((x - mean) / std, verbose=0), atol=1e-5)


def test_sidecar_label_count_must_match(tmp_path: Path) -> None:
    keras_model = _small_keras_model(units=3)
    path = tmp_path / "m.keras"
    keras_model.save(path)
    (tmp_path / "m.json").write_text(json.dumps({"labels": ["x", "y"]}))
    with pytest.raises(ModelLoadError):
        load_model(str(path)).warmup()
    with pytest.raises(ModelLoadError):
        load_model(str(tmp_path / "missing.keras"))


def test_gs_uri_downloads_model_and_sidecar(bucket_name: str, tmp_path: Path) -> None:
    from google.cloud import storage

    client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test-project"))
    bucket = client.bucket(bucket_name)
    local = Path(DEFAULT_MODEL_URI)
    bucket.blob("models/v1/nodule.keras").upload_from_filename(str(local))
    sidecar = json.loads(local.with_suffix(".json").read_text())
    sidecar["version"] = "from-gcs"
    bucket.blob("models/v1/nodule.json").upload_from_string(json.dumps(sidecar))

    model = load_model(
        f"gs://{bucket_name}/models/v1/nodule.keras", cache_dir=tmp_path / "cache", fetch=download_model
    )
    assert model.info.sha256 == load_model().info.sha256
    assert model.info.version == "from-gcs" and model.info.uri.startswith("gs://")
    x, _ = _batch(model, 4, seed=5)
    np.testing.assert_allclose(model.predict(x), load_model().predict(x), atol=1e-6)
    with pytest.raises(ModelLoadError):
        load_model(
            f"gs://{bucket_name}/models/v1/absent.keras", cache_dir=tmp_path / "cache", fetch=download_model
        )


def _upload_demo(bucket_name: str, name: str, **sidecar_fields) -> tuple[object, dict]:
    from google.cloud import storage

    client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test-project"))
    bucket = client.bucket(bucket_name)
    local = Path(DEFAULT_MODEL_URI)
    bucket.blob(f"{name}.keras").upload_from_filename(str(local))
    sidecar = json.loads(local.with_suffix(".json").read_text()) | sidecar_fields
    bucket.blob(f"{name}.json").upload_from_string(json.dumps(sidecar))
    return bucket, sidecar


def test_sidecar_sha256_is_enforced(bucket_name: str, tmp_path: Path) -> None:
    digest = hashlib.sha256(Path(DEFAULT_MODEL_URI).read_bytes()).hexdigest()
    _upload_demo(bucket_name, "pinned/good", sha256=digest.upper(), version="pinned")
    good = load_model(f"gs://{bucket_name}/pinned/good.keras", cache_dir=tmp_path, fetch=download_model)
    assert good.info.sha256 == digest and good.info.version == "pinned"

    _upload_demo(bucket_name, "pinned/bad", sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_model(f"gs://{bucket_name}/pinned/bad.keras", cache_dir=tmp_path, fetch=download_model)

    local = tmp_path / "local" / "m.keras"  # the same rule for a local path
    local.parent.mkdir()
    local.write_bytes(Path(DEFAULT_MODEL_URI).read_bytes())
    local.with_suffix(".json").write_text(json.dumps({"sha256": "f" * 64}))
    with pytest.raises(ModelLoadError, match="refusing"):
        load_model(str(local))


def test_gs_cache_is_keyed_by_generation_and_safe_under_concurrency(bucket_name: str, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bucket, sidecar = _upload_demo(bucket_name, "cache/m", version="1")
    uri = f"gs://{bucket_name}/cache/m.keras"
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(8) as pool:  # eight loaders racing for one empty cache entry
        paths = list(pool.map(lambda _: download_model(uri, cache), range(8)))
    assert len(set(paths)) == 1
    first = paths[0]
    assert first.read_bytes() == Path(DEFAULT_MODEL_URI).read_bytes()
    assert json.loads(first.with_suffix(".json").read_text())["version"] == "1"
    leftovers = [p.name for p in cache.rglob("*") if p.is_file() and p.name.endswith(".part")]
    assert leftovers == []

    # A stale partial file from a killed process is never mistaken for the model.
    (first.parent / ".m.keras.dead.part").write_bytes(b"half a model")
    assert download_model(uri, cache) == first

    # A new sidecar generation (same model bytes) is a new cache entry with the new metadata.
    bucket.blob("cache/m.json").upload_from_string(json.dumps(sidecar | {"version": "2"}))
    second = download_model(uri, cache)
    assert second != first
    assert json.loads(second.with_suffix(".json").read_text())["version"] == "2"
    assert json.loads(first.with_suffix(".json").read_text())["version"] == "1"

    # A new model generation is fetched again, not served from the old entry.
    bucket.blob("cache/m.keras").upload_from_string(b"not a keras file")
    third = download_model(uri, cache)
    assert third not in (first, second) and third.read_bytes() == b"not a keras file"
    with pytest.raises(ModelLoadError):
        load_model(uri, cache_dir=cache, fetch=download_model)


def test_max_batch_size_is_a_parameter_and_tensors_skip_the_host() -> None:
    import tensorflow as tf

    small = load_model(max_batch_size=3)
    assert small.max_batch_size == 3 and load_model().max_batch_size == 256
    assert small is not load_model() and load_model(max_batch_size=3) is small
    x, _ = _batch(small, 7, seed=21)
    expected = load_model().predict(x)
    np.testing.assert_allclose(small.predict(x), expected, atol=1e-6)  # 3 + 3 + 1 rows
    assert getattr(small.predict, "accepts_tensors", False) is True
    np.testing.assert_allclose(small.predict(tf.constant(x)), expected, atol=1e-6)
    with pytest.raises(ValueError):
        small.predict(tf.zeros((2, 64, 64, 1)))


def test_savedmodel_with_only_a_serve_function(tmp_path: Path) -> None:
    """No serving_default signature: the loader falls back to the `serve` endpoint."""
    import tensorflow as tf

    class Exported(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable([[1.0, -1.0]])

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
        def serve(self, x):
            return tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2]) @ self.w)

    path = tmp_path / "serve-only"
    tf.saved_model.save(Exported(), str(path), signatures={})
    model = load_model(str(path))
    assert model.info.input_size == (8, 8) and model.info.channels == 1
    x = np.full((2, 8, 8, 1), 0.5, np.float32)
    np.testing.assert_allclose(model.predict(x)[0], tf.nn.softmax([[0.5, -0.5]]).numpy()[0], atol=1e-6)
