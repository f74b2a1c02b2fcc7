"""What a radiologist's decision on an AI result is made of, and its codes: the decision and
reason as concepts of a private coding scheme (DCM and SNOMED CT have none for a reader's
verdict on an AI result), declared in every object that uses it. Pure: no I/O.
docs/contracts.md, "Assessment objects".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.uid import UID, generate_uid

SCHEME = "99DPREVIEW"
CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=SCHEME,
    name="dicom-pipeline review codes",
    version="1",
    responsible_organization="dicom-pipeline",
)
REVIEW_SR = "review_sr"
REVIEW_SEG = "review_seg"
SERIES_NUMBERS = {REVIEW_SR: 9904, REVIEW_SEG: 9905}
SERIES_DESCRIPTIONS = {
    REVIEW_SR: "Radiologist assessment of AI result",
    REVIEW_SEG: "Radiologist corrected region",
}
DECISIONS = ("accept", "reject", "correct")
REASONS = ("false_positive", "false_negative", "wrong_region", "image_not_suitable", "other")


def _code(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


ASSESSMENT = _code("RV001", "Assessment of AI result")
REASON = _code("RV002", "Reason for assessment")
COMMENT = codes.DCM.Comment  # standard
ASSESSED_REPORT = _code("RV004", "Assessed AI report")
ASSESSED_SEGMENTATION = _code("RV005", "Assessed AI segmentation")
DECISION_CODES = {
    "accept": _code("RV010", "Accepted"),
    "reject": _code("RV011", "Rejected"),
    "correct": _code("RV012", "Corrected"),
}
REASON_CODES = {
    "false_positive": _code("RV020", "False positive finding"),
    "false_negative": _code("RV021", "False negative finding"),
    "wrong_region": _code("RV022", "Wrong region"),
    "image_not_suitable": _code("RV023", "Image not suitable"),
    "other": _code("RV029", "Other reason"),
}


@dataclass(frozen=True)
class Assessment:
    """One decision as the objects carry it (the ``dicom-review/1`` message's fields)."""

    review_id: str
    decision: str
    decided_at: datetime
    reviewer_name: str
    reviewer_organisation: str = ""
    reason_code: str | None = None
    reason_text: str = ""
    corrected_label: str | None = None
    region: Mapping[str, Any] | None = None


def review_uid(review_id: str, role: str) -> UID:
    """The same review always gives the same instances (a replayed message is idempotent)."""
    return generate_uid(entropy_srcs=["dicom-review/1", str(review_id), role])


def person_name(name: str) -> str:
    """A PN value: ``Family^Given`` as given, else the whole name as one component (a free-text
    name cannot be split reliably), each component within the VR's 64 characters."""
    cleaned = " ".join(name.replace("\\", " ").split()) or "unknown"
    return "^".join(part[:64] for part in cleaned.split("^")[:5])
