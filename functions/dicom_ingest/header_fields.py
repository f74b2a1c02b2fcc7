"""The header's attributes as the ``dicom`` section of ``dicom-inference-request/1``."""

from __future__ import annotations

import warnings
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue


def text_value(ds: Dataset | None, keyword: str) -> str | None:
    """A string value decoded with the data set's Specific Character Set, or None."""
    if ds is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except Exception:
        return None
    if value is None:
        return None
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
    text = text.strip().rstrip("\x00").strip()
    return text or None


class _BadInteger(ValueError):
    pass


def integer_value(ds: Dataset, keyword: str) -> int | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = ds.get(keyword)
    except Exception as exc:
        raise _BadInteger(keyword) from exc
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
        if value is None:
            return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise _BadInteger(keyword) from exc


def dicom_fields(ds: Dataset, transfer_syntax: str) -> dict[str, Any]:
    """The ``dicom`` section of `dicom-inference-request/1` (integers may be invalid: see check)."""
    out: dict[str, Any] = {
        "patient_id": text_value(ds, "PatientID"),
        "study_instance_uid": text_value(ds, "StudyInstanceUID"),
        "series_instance_uid": text_value(ds, "SeriesInstanceUID"),
        "sop_instance_uid": text_value(ds, "SOPInstanceUID"),
        "sop_class_uid": text_value(ds, "SOPClassUID"),
        "modality": text_value(ds, "Modality"),
        "body_part_examined": text_value(ds, "BodyPartExamined"),
        "view_position": text_value(ds, "ViewPosition"),
    }
    bad: list[str] = []
    for key, keyword in (
        ("rows", "Rows"),
        ("columns", "Columns"),
        ("number_of_frames", "NumberOfFrames"),
        ("bits_stored", "BitsStored"),
        ("bits_allocated", "BitsAllocated"),
    ):
        try:
            out[key] = integer_value(ds, keyword)
        except _BadInteger:
            out[key] = None
            bad.append(keyword)
    out["photometric_interpretation"] = text_value(ds, "PhotometricInterpretation")
    out["transfer_syntax_uid"] = transfer_syntax
    out["study_date"] = text_value(ds, "StudyDate")
    out["specific_character_set"] = text_value(ds, "SpecificCharacterSet")
    out["_invalid"] = bad  # removed by check(); names of attributes whose values are not integers
    return out


DICOM_FIELDS = (
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "modality",
    "body_part_examined",
    "view_position",
    "rows",
    "columns",
    "number_of_frames",
    "photometric_interpretation",
    "bits_stored",
    "transfer_syntax_uid",
    "study_date",
    "specific_character_set",
)
