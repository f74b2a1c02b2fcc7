"""Fetches a model kept in Cloud Storage (``MODEL_URI=gs://...``: a file plus its sidecar, or a
SavedModel prefix) into a local cache that concurrent processes can share; the inference core
(:mod:`gpu_service.inference.model`) then loads the local copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from google.cloud import storage

from gpu_service.inference.model import ModelLoadError, sidecar_path


def download_model(uri: str, cache_dir: str | os.PathLike | None) -> Path:
    """Fetch a gs:// model (file plus sidecar, or a SavedModel prefix) into the local cache.

    Cache entries are keyed by the generations of the model and its sidecar, so a replaced
    object is fetched again; each file is written under a unique temporary name and renamed
    into place, so concurrent processes sharing the cache never see (or load) a partial file.
    """
    bucket_name, _, name = uri[len("gs://") :].partition("/")
    name = name.rstrip("/")
    if not bucket_name or not name:
        raise ModelLoadError(f"bad model URI {uri!r}")
    root = Path(
        cache_dir or os.environ.get("MODEL_CACHE_DIR") or Path(tempfile.gettempdir()) / "gpu-service-models"
    )
    client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT"))
    bucket = client.bucket(bucket_name)
    try:
        blob = bucket.get_blob(name)
        if blob is not None:
            side = bucket.get_blob(sidecar_path(Path(name)).as_posix())
            stamp = f"{uri}#{blob.generation}|sidecar#{side.generation if side is not None else '-'}"
            target = root / _digest(stamp) / Path(name).name
            _fetch_file(blob, target)
            if side is not None:
                _fetch_file(side, sidecar_path(target))
            return target
        blobs = [b for b in client.list_blobs(bucket_name, prefix=name + "/") if not b.name.endswith("/")]
        if not blobs:
            raise ModelLoadError(f"model not found: {uri}")
        side = bucket.get_blob(name + ".json")
        stamp = ",".join(f"{b.name}#{b.generation}" for b in sorted(blobs, key=lambda b: b.name))
        stamp += f"|sidecar#{side.generation if side is not None else '-'}"
        target = root / _digest(stamp) / Path(name).name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
            try:
                for b in blobs:
                    dest = staging / b.name[len(name) + 1 :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    b.download_to_filename(str(dest), if_generation_match=b.generation)
                try:
                    staging.rename(target)
                except OSError:  # another process renamed its complete copy first
                    if not target.is_dir():
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        if side is not None:
            _fetch_file(side, sidecar_path(target))
        return target
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - network / permission errors
        raise ModelLoadError(f"cannot download {uri}: {type(exc).__name__}: {exc}") from exc


def _digest(stamp: str) -> str:
    return hashlib.sha256(stamp.encode()).hexdigest()[:24]


def _fetch_file(blob: Any, target: Path) -> None:
    """Download exactly `blob.generation` to `target` unless a complete copy is already there."""
    if target.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    try:
        blob.download_to_filename(tmp, if_generation_match=blob.generation)
        os.replace(tmp, target)  # atomic; a concurrent writer of the same generation wrote the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
