"""The ``dicom-inference-result/1`` record (docs/contracts.md): stored as ``STEM.result.json``
and sent, byte for byte, as the webhook body.

Pure: no I/O. The stored bytes are the webhook body, so a redelivery can re-send the
record without recomputing it and the receiver sees exactly what was stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np

from gpu_service.inference.model import label_names
from pipeline_common import contract, naming
from pipeline_common.timefmt import rfc3339

COMPLETED = "completed"
FAILED = "failed"

# Header fields the webhook needs, by DICOM keyword, when the message did not carry them
# (the backfill job reads objects directly).
HEADER_KEYWORDS = {
    "patient_id": "PatientID",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "sop_instance_uid": "SOPInstanceUID",
    "modality": "Modality",
}


def header_from_dataset(ds: Any) -> dict[str, str | None]:
    """The identifying fields of a pydicom dataset (patient data: for the record, never logs).

    Never raises: a value pydicom cannot convert becomes None, so a failed record can
    still be built for the dataset that made the request fail.
    """
    out: dict[str, str | None] = {}
    for key, keyword in HEADER_KEYWORDS.items():
        try:
            value = getattr(ds, keyword, None) if ds is not None else None
            out[key] = str(value) if value not in (None, "") else None
        except Exception:  # noqa: BLE001 - an unconvertible element value is as good as absent
            out[key] = None
    return out


def merge_header(message: Mapping[str, Any], dataset_header: Mapping[str, Any] | None) -> dict[str, Any]:
    """Message values win (they were read from the same object); the dataset fills the gaps."""
    merged = dict(dataset_header or {})
    for key, value in message.items():
        if value not in (None, ""):
            merged[key] = value
    return merged


def prediction_fields(probs: np.ndarray, labels: list[str]) -> dict[str, Any]:
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    names = label_names(labels, probs.size)
    index = int(np.argmax(probs))
    return {
        "label": names[index],
        "label_index": index,
        "score": round(float(probs[index]), 6),
        "scores": {name: round(float(p), 6) for name, p in zip(names, probs, strict=True)},
    }


def explanation_quality(explanation: Any, heatmap_uri: str) -> dict[str, Any]:
    """How far to trust the explanation (docs/contracts.md): heat map, stability, samples, reason."""
    reason = explanation.reason
    stability = float(explanation.stability)
    return {
        "heatmap_uri": heatmap_uri,
        "stability": round(stability, 4) if np.isfinite(stability) else 0.0,
        "samples_used": int(explanation.samples_used),
        "reason": {"code": reason.code, "message": reason.message} if reason is not None else None,
    }


def build_record(
    *,
    status: str,
    correlation_id: str,
    bucket: str,
    name: str,
    generation: str,
    header: Mapping[str, Any],
    model: Mapping[str, Any],
    prediction: Mapping[str, Any] | None = None,
    image_uri: str | None = None,
    explanation: Mapping[str, Any] | None = None,
    image: Mapping[str, Any] | None = None,
    timings_ms: Mapping[str, float] | None = None,
    error: Mapping[str, str] | None = None,
    completed_at: datetime | None = None,
    dicom: Mapping[str, Any] | None = None,
    explanations: list[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    if status not in (COMPLETED, FAILED):
        raise ValueError(f"unknown status {status!r}")
    if (status == FAILED) != (error is not None):
        raise ValueError("a failed record needs an error, a completed one must not have one")
    record: dict[str, Any] = {
        "schema": contract.INFERENCE_RESULT,
        "status": status,
        "correlation_id": correlation_id,
        "patient_id": header.get("patient_id"),
        "study_modality": header.get("modality"),
        "study_instance_uid": header.get("study_instance_uid"),
        "series_instance_uid": header.get("series_instance_uid"),
        "sop_instance_uid": header.get("sop_instance_uid"),
        "prediction": dict(prediction) if prediction else None,
        "image_uri": image_uri,
        "explanation": dict(explanation) if explanation else None,
        "image": dict(image) if image else None,
        "source": {
            "bucket": bucket,
            "name": name,
            "uri": naming.gs_uri(bucket, name),
            "generation": str(generation),
        },
        "model": {
            "name": model.get("name"),
            "version": model.get("version"),
            "sha256": model.get("sha256"),
        },
        "timings_ms": {k: round(float(v), 1) for k, v in (timings_ms or {}).items()},
        "completed_at": rfc3339(completed_at),
    }
    if error is not None:
        record["error"] = {"code": str(error["code"]), "message": str(error["message"])}
    if dicom is not None:
        record["dicom"] = dict(dicom)
    if explanations is not None:  # one entry per EXPLANATION_METHODS method (docs/contracts.md)
        record["explanations"] = [dict(e) for e in explanations]
    return record


def encode(record: Mapping[str, Any]) -> bytes:
    """The exact bytes stored and signed (stable key order, UTF-8)."""
    return json.dumps(
        record, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=_json_default
    ).encode("utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def is_record_of(record: Mapping[str, Any], metadata: Mapping[str, str] | None, uri: str) -> bool:
    """True when a stored record was written by the pipeline (its object carries the marker)
    for the object at ``uri``. ``a.dcm`` and ``a.DCM`` share a stem, and with an output
    bucket so can equal names from two upload buckets: anything else is a foreign object."""
    source = record.get("source") or {}
    return naming.MARKER_KEY in (metadata or {}) and source.get("uri") == uri


def same_work(record: Mapping[str, Any], uri: str, generation: str, model_sha256: str) -> bool:
    """True when ``record`` is the result of this very object and generation with this model."""
    source = record.get("source") or {}
    model = record.get("model") or {}
    return (
        source.get("uri") == uri
        and str(source.get("generation")) == str(generation)
        and model.get("sha256") == model_sha256
    )


def record_generation(record: Mapping[str, Any]) -> int | None:
    try:
        return int((record.get("source") or {}).get("generation"))
    except (TypeError, ValueError):
        return None
