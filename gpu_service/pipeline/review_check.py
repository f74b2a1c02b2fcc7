"""Does a ``dicom-review/1`` message name a real completed result? It is compared with the stored
``STEM.result.json``; any difference refuses it (a forged or stale message is never stored).
Pure: no I/O. docs/contracts.md, "What the component checks".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpu_service.dicom.review_seg import RegionError, check_region
from gpu_service.pipeline.review_message import ReviewMessage


class ReviewRefused(Exception):
    """The message does not match the stored result: a ``failed`` receipt, acknowledged."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _get(record: Mapping[str, Any], *path: str) -> Any:
    value: Any = record
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def check_review(message: ReviewMessage, record: Mapping[str, Any] | None) -> None:
    """Raise :class:`ReviewRefused` unless the record is the completed result the message names."""
    result = message.result
    if record is None:
        raise ReviewRefused("result_not_found", "no result record beside the named upload")
    if record.get("status") != "completed":
        raise ReviewRefused("result_not_completed", "the named result is not a completed one")
    expected = {
        "correlation_id": (record.get("correlation_id"), result.correlation_id),
        "source.bucket": (_get(record, "source", "bucket"), result.bucket),
        "source.name": (_get(record, "source", "name"), result.name),
        "source.generation": (str(_get(record, "source", "generation")), result.generation),
        "model.sha256": (_get(record, "model", "sha256"), result.model_sha256),
        "prediction.label": (_get(record, "prediction", "label"), result.label),
        "study_instance_uid": (record.get("study_instance_uid"), result.study_instance_uid),
        "sop_instance_uid": (record.get("sop_instance_uid"), result.sop_instance_uid),
    }
    differing = sorted(key for key, (stored, claimed) in expected.items() if stored != claimed)
    if differing:
        raise ReviewRefused(
            "result_mismatch", "the message does not match the stored result: " + ", ".join(differing)
        )
    uids = _get(record, "dicom", "sop_instance_uids") or {}
    if not _get(record, "dicom", "sr_uri") or not uids.get("sr"):
        raise ReviewRefused("no_ai_sr", "the result has no AI SR to assess")
    if uids.get("sr") != result.sr_sop_instance_uid or (
        result.seg_sop_instance_uid is not None and uids.get("seg") != result.seg_sop_instance_uid
    ):
        raise ReviewRefused(
            "result_mismatch", "the message does not match the stored result: dicom.sop_instance_uids"
        )
    assessment = message.assessment
    labels = _get(record, "prediction", "scores") or {}
    if assessment.corrected_label is not None and assessment.corrected_label not in labels:
        raise ReviewRefused("label_unknown", "the corrected label is not one of the model's labels")
    if assessment.region is not None:
        rows, columns = _get(record, "image", "rows"), _get(record, "image", "columns")
        if not isinstance(rows, int) or not isinstance(columns, int):
            raise ReviewRefused("region_outside_image", "the result does not say the image's size")
        try:
            check_region(assessment.region, rows, columns)
        except RegionError as exc:
            raise ReviewRefused("region_outside_image", str(exc)) from None
