"""The classifier: a Keras model loaded once per process, predicting through one compiled function.

Accepts `.keras`, legacy `.h5`/`.hdf5` and SavedModel directories (wrapped in
`keras.layers.TFSMLayer`, inference only), from a local path or a `gs://` URI (downloaded
once into a local cache). A sidecar JSON beside the model (same path, extension `.json`)
says what the numbers mean: labels, input scaling, input size, channels, name, version, and
optionally the model's `sha256`, which is then enforced. The reported SHA-256 is of the bytes
loaded, so a result names exactly the model that made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL_URI = str(Path(__file__).resolve().parents[1] / "models" / "demo" / "model.keras")
SCALINGS = ("unit", "symmetric", "imagenet")
OUTPUTS = ("probabilities", "logits")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_BATCH = 256


class ModelLoadError(Exception):
    """The model or its sidecar cannot be fetched or loaded; the service must not start serving."""


def label_names(labels: list[str], n_outputs: int) -> list[str]:
    """The model's labels when they match its outputs, else ``class_0``... (a sidecar-less model)."""
    return list(labels) if len(labels) == n_outputs else [f"class_{i}" for i in range(n_outputs)]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str
    labels: list[str]
    input_size: tuple[int, int]
    channels: int
    scaling: str
    uri: str = ""
    output: str = "probabilities"
    # Sidecar "codes": {label: {"value", "scheme", "meaning"}}, the model's own coding of its
    # labels, used in the DICOM SR/SEG where no SNOMED CT concept is known.
    label_codes: dict[str, dict[str, str]] = field(default_factory=dict)
    # Sidecar "gradcam_layer": the layer whose activations Grad-CAM weighs (None: the last 4-D one).
    gradcam_layer: str | None = None

    def as_record(self) -> dict[str, str]:
        """The `model` block of the result record."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


class LoadedModel:
    """A model plus its metadata; `predict` is thread-safe and never retraces."""

    def __init__(self, model: Any, info: ModelInfo, max_batch_size: int = DEFAULT_MAX_BATCH) -> None:
        import tensorflow as tf

        self.info = info
        self.max_batch_size = max(1, int(max_batch_size))
        self._model = model
        h, w = info.input_size
        scale = scaling_fn(info.scaling, info.channels)
        n_labels = len(info.labels)
        logits = info.output == "logits"

        def forward(x):
            y = model(scale(x), training=False)
            if isinstance(y, dict):
                if len(y) != 1:
                    raise ModelLoadError(f"model has {len(y)} outputs; one is required")
                y = next(iter(y.values()))
            if isinstance(y, (list, tuple)):
                y = y[0]
            y = tf.cast(y, tf.float32)
            if logits:
                y = tf.nn.sigmoid(y) if y.shape[-1] == 1 else tf.nn.softmax(y, axis=-1)
            if y.shape[-1] == 1 and n_labels == 2:  # one sigmoid unit: P(second label)
                y = tf.concat([1.0 - y, y], axis=-1)
            return y

        self._fn = tf.function(
            forward,
            input_signature=[tf.TensorSpec([None, h, w, info.channels], tf.float32)],
            reduce_retracing=True,
        )

    @property
    def keras_model(self) -> Any:
        return self._model

    def predict(self, batch: Any) -> np.ndarray:
        """Probabilities (N, K) for a float32 batch (N, h, w, c) in [0, 1].

        A `tf.Tensor` is accepted as is (no trip through host memory), so perturbations
        built on the accelerator stay there; callers check `predict.accepts_tensors`.
        """
        tf = sys.modules.get("tensorflow")
        if tf is not None and isinstance(batch, tf.Tensor):
            return self._predict_tensor(tf, batch)
        arr = np.asarray(batch, dtype=np.float32)
        if arr.ndim == 3:
            arr = arr[None]
        expected = (*self.info.input_size, self.info.channels)
        if arr.shape[1:] != expected:
            raise ValueError(f"batch shape {arr.shape} does not match model input (N, {expected})")
        if len(arr) == 0:
            return np.zeros((0, len(self.info.labels)), dtype=np.float32)
        outs = [
            self._fn(arr[i : i + self.max_batch_size]).numpy()
            for i in range(0, len(arr), self.max_batch_size)
        ]
        return np.concatenate(outs, axis=0)

    predict.accepts_tensors = True  # type: ignore[attr-defined]

    def _predict_tensor(self, tf: Any, batch: Any) -> np.ndarray:
        x = tf.cast(batch, tf.float32)
        if x.shape.rank == 3:
            x = x[None]
        expected = (*self.info.input_size, self.info.channels)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"batch shape {tuple(x.shape)} does not match model input (N, {expected})")
        n = int(x.shape[0])
        if n == 0:
            return np.zeros((0, len(self.info.labels)), dtype=np.float32)
        outs = [self._fn(x[i : i + self.max_batch_size]).numpy() for i in range(0, n, self.max_batch_size)]
        return np.concatenate(outs, axis=0)

    def warmup(self) -> None:
        """Trace the compiled function (and, on a GPU, autotune the full batch) before the first request."""
        import tensorflow as tf

        h, w = self.info.input_size
        probs = self.predict(np.zeros((1, h, w, self.info.channels), np.float32))
        if probs.shape != (1, len(self.info.labels)):
            raise ModelLoadError(
                f"model returns {probs.shape[1]} scores but the sidecar names {len(self.info.labels)} labels"
            )
        if tf.config.list_logical_devices("GPU"):
            self.predict(np.zeros((self.max_batch_size, h, w, self.info.channels), np.float32))


def scaling_fn(scaling: str, channels: int):
    """The sidecar's input scaling as a function of a [0, 1] batch (Grad-CAM applies it too)."""
    import tensorflow as tf

    if scaling == "unit":
        return lambda x: x
    if scaling == "symmetric":
        return lambda x: x * 2.0 - 1.0
    if scaling == "imagenet":
        if channels == 3:
            mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
        else:
            mean = np.full(channels, np.mean(IMAGENET_MEAN), np.float32)
            std = np.full(channels, np.mean(IMAGENET_STD), np.float32)
        return lambda x: (x - tf.constant(mean)) / tf.constant(std)
    raise ModelLoadError(f"unknown input_scaling {scaling!r}; expected one of {SCALINGS}")


_CACHE: dict[tuple[str, int], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def load_model(
    uri: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    fetch: Callable[[str, str | os.PathLike | None], Path] | None = None,
) -> LoadedModel:
    """Load (once per process and URI) a model from a local path or gs:// URI; None means the bundled demo.

    `max_batch_size` caps the rows per model call (GPU memory); the service passes BATCH_MAX_SIZE.
    A gs:// URI is fetched into `cache_dir` by `fetch` (the Cloud Storage adapter,
    :func:`gpu_service.transport.model_download.download_model`), so this core imports no adapter.
    """
    uri = uri or DEFAULT_MODEL_URI
    batch = max(1, int(max_batch_size or DEFAULT_MAX_BATCH))
    key = (uri, batch)
    with _CACHE_LOCK:
        if key not in _CACHE:
            if uri.startswith("gs://") and fetch is None:
                raise ModelLoadError(f"{uri} is in Cloud Storage, and no fetch was given to download it")
            local = fetch(uri, cache_dir) if uri.startswith("gs://") and fetch else Path(uri)
            _CACHE[key] = _load_local(local, uri, batch)
        return _CACHE[key]


def _load_local(path: Path, uri: str, max_batch_size: int) -> LoadedModel:
    import keras

    if not path.exists():
        raise ModelLoadError(f"model not found: {uri}")
    sidecar = _read_sidecar(path)
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            model = _savedmodel_layer(path, sidecar.get("call_endpoint"))
            shape = _savedmodel_input_shape(model)
            n_out = None
        elif suffix in (".keras", ".h5", ".hdf5"):
            model = keras.models.load_model(str(path), compile=False)
            shape = tuple(model.inputs[0].shape)
            n_out = model.outputs[0].shape[-1]
        else:
            raise ModelLoadError(
                f"unsupported model format {suffix!r}: use .keras, .h5 or a SavedModel directory"
            )
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - keras/h5py raise many kinds
        raise ModelLoadError(f"cannot load model {uri}: {type(exc).__name__}: {exc}") from exc

    size = sidecar.get("input_size") or (shape[1:3] if shape and len(shape) == 4 else None)
    channels = sidecar.get("channels") or (shape[3] if shape and len(shape) == 4 else None)
    if not size or None in tuple(size) or not channels:
        raise ModelLoadError("input size unknown: put input_size and channels in the sidecar JSON")
    labels = sidecar.get("labels") or label_names([], max(2, int(n_out or 2)))
    scaling = sidecar.get("input_scaling", "unit")
    if scaling not in SCALINGS:
        raise ModelLoadError(f"unknown input_scaling {scaling!r}; expected one of {SCALINGS}")
    output = sidecar.get("output", "probabilities")
    if output not in OUTPUTS:
        raise ModelLoadError(f"unknown output {output!r}; expected one of {OUTPUTS}")
    digest = file_sha256(path)
    expected = sidecar.get("sha256")
    if expected is not None and str(expected).strip().lower() != digest:
        raise ModelLoadError(
            f"model {uri} has SHA-256 {digest}, but its sidecar requires {str(expected)[:64]}: "
            "refusing to load"
        )
    info = ModelInfo(
        name=str(sidecar.get("name") or path.stem),
        version=str(sidecar.get("version") or "unversioned"),
        sha256=digest,
        labels=[str(x) for x in labels],
        input_size=(int(size[0]), int(size[1])),
        channels=int(channels),
        scaling=scaling,
        uri=uri,
        output=output,
        label_codes={str(k): dict(v) for k, v in (sidecar.get("codes") or {}).items() if isinstance(v, dict)},
        gradcam_layer=str(sidecar["gradcam_layer"]) if sidecar.get("gradcam_layer") else None,
    )
    return LoadedModel(model, info, max_batch_size=max_batch_size)


def sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json") if path.suffix else path.with_name(path.name + ".json")


def _read_sidecar(path: Path) -> dict[str, Any]:
    for candidate in (sidecar_path(path), path / "model.json" if path.is_dir() else None):
        if candidate is not None and candidate.is_file():
            try:
                return json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelLoadError(f"bad sidecar {candidate.name}: {exc}") from exc
    return {}


def _savedmodel_layer(path: Path, endpoint: str | None) -> Any:
    """TFSMLayer on the sidecar's endpoint, else the standard signature, else Keras' `serve`.

    Trying the layer directly loads the SavedModel once per attempt instead of loading it a
    second time just to look up which endpoints it has.
    """
    import keras

    if endpoint:
        return keras.layers.TFSMLayer(str(path), call_endpoint=endpoint)
    try:
        return keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    except ValueError:  # no such signature: a model exported with only the `serve` function
        return keras.layers.TFSMLayer(str(path), call_endpoint="serve")


def _savedmodel_input_shape(layer: Any) -> tuple | None:
    """Input shape of the exported endpoint: a restored tf.function or a signature."""
    fn = layer.call_endpoint_fn
    specs: list[Any] = list(getattr(fn, "input_signature", None) or [])
    if not specs:
        concrete = (
            fn if hasattr(fn, "structured_input_signature") else next(iter(fn.concrete_functions), None)
        )
        if concrete is not None:
            args, kwargs = concrete.structured_input_signature
            specs = list(args) + list(kwargs.values())
    if len(specs) != 1 or not hasattr(specs[0], "shape"):
        return None
    return tuple(specs[0].shape)


def file_sha256(path: Path) -> str:
    """SHA-256 of a model file, or of a SavedModel directory (relative paths and contents, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
