"""Checks a webhook body against ``dicom-inference-result/1`` and maps it onto the row's fields.

Pure: no Django, no I/O. Only what the app stores is checked, field by field, so that a
record missing something the viewer needs is refused with a message that names it,
while fields it does not know (added by a later minor version) pass untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

SCHEMA = "dicom-inference-result/1"
STATUSES = ("completed", "failed")


class SchemaError(ValueError):
    """The body is JSON but not a ``dicom-inference-result/1`` record; the message says why."""


def _section(record: Mapping[str, Any], key: str, *, required: bool = False) -> Mapping[str, Any]:
    value = record.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        raise SchemaError(f"'{key}' must be an object")
    return value


def _text(section: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = section.get(key)
    if value is None or value == "":
        if required:
            raise SchemaError(f"'{where}{key}' is required")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SchemaError(f"'{where}{key}' must be a string")
    return str(value)


def _number(section: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> float | None:
    value = section.get(key)
    if value is None:
        if required:
            raise SchemaError(f"'{where}{key}' is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"'{where}{key}' must be a number")
    return float(value)


def _number_map(section: Mapping[str, Any], key: str, where: str) -> dict[str, float]:
    value = section.get(key) or {}
    if not isinstance(value, Mapping) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
    ):
        raise SchemaError(f"'{where}{key}' must map names to numbers")
    return {str(k): float(v) for k, v in value.items()}


def _text_list(section: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = section.get(key) or []
    if isinstance(value, Mapping):  # {role: uid} is as good as a list
        value = list(value.values())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SchemaError(f"'{where}{key}' must be a list of strings")
    return list(value)


def _timestamp(record: Mapping[str, Any], key: str) -> datetime | None:
    value = record.get(key)
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise SchemaError(f"'{key}' must be an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise SchemaError(f"'{key}' must carry a time zone")
    return parsed


def parse_result(record: Any) -> dict[str, Any]:
    """The model fields of one result record; raises :class:`SchemaError` naming the first problem."""
    if not isinstance(record, Mapping):
        raise SchemaError("the body must be a JSON object")
    if record.get("schema") != SCHEMA:
        raise SchemaError(f"'schema' must be '{SCHEMA}', got {record.get('schema')!r}")
    status = record.get("status")
    if status not in STATUSES:
        raise SchemaError(f"'status' must be one of {', '.join(STATUSES)}, got {status!r}")
    source = _section(record, "source", required=True)
    model = _section(record, "model")
    prediction = _section(record, "prediction", required=status == "completed")
    explanation = _section(record, "explanation")
    error = _section(record, "error", required=status == "failed")
    dicom = _section(record, "dicom")
    timings = _number_map(record, "timings_ms", "")
    return {
        "status": status,
        "correlation_id": _text(record, "correlation_id", ""),
        "patient_id": _text(record, "patient_id", ""),
        "modality": _text(record, "study_modality", ""),
        "study_instance_uid": _text(record, "study_instance_uid", "")
        or _text(dicom, "study_instance_uid", "dicom."),
        "series_instance_uid": _text(record, "series_instance_uid", ""),
        "sop_instance_uid": _text(record, "sop_instance_uid", ""),
        "label": _text(prediction, "label", "prediction.", required=status == "completed"),
        "score": _number(prediction, "score", "prediction.", required=status == "completed"),
        "scores": _number_map(prediction, "scores", "prediction."),
        "source_bucket": _text(source, "bucket", "source.", required=True),
        "source_name": _text(source, "name", "source.", required=True),
        "source_uri": _text(source, "uri", "source.", required=True),
        "source_generation": _text(source, "generation", "source.", required=True),
        "model_name": _text(model, "name", "model."),
        "model_version": _text(model, "version", "model."),
        "model_sha256": _text(model, "sha256", "model."),
        "image_uri": _text(record, "image_uri", ""),
        "mask_uri": _text(explanation, "mask_uri", "explanation."),
        "overlay_uri": _text(explanation, "overlay_uri", "explanation."),
        "heatmap_uri": _text(explanation, "heatmap_uri", "explanation."),
        "seg_uri": _text(dicom, "seg_uri", "dicom."),
        "sr_uri": _text(dicom, "sr_uri", "dicom."),
        "dicom_series_instance_uids": _text_list(dicom, "series_instance_uids", "dicom."),
        "dicom_sop_instance_uids": _text_list(dicom, "sop_instance_uids", "dicom."),
        "timings_ms": timings,
        "error_code": _text(error, "code", "error.", required=status == "failed"),
        "error_message": _text(error, "message", "error."),
        "completed_at": _timestamp(record, "completed_at"),
    }
