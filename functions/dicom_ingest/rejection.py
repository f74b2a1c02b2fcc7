"""Why an upload is rejected: the reason codes of ``dicom-rejection/1`` and values safe to log."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Reason codes of docs/contracts.md (`dicom-rejection/1`).
EMPTY_OBJECT = "empty_object"
NOT_DICOM = "not_dicom"
TRUNCATED = "truncated"
HEADER_TOO_LARGE = "header_too_large"
NO_PIXEL_DATA = "no_pixel_data"
MODALITY_NOT_ALLOWED = "modality_not_allowed"
IMAGE_TOO_LARGE = "image_too_large"
UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
MISSING_REQUIRED_ATTRIBUTE = "missing_required_attribute"
REASON_CODES: frozenset[str] = frozenset(
    {
        EMPTY_OBJECT, NOT_DICOM, TRUNCATED, HEADER_TOO_LARGE, NO_PIXEL_DATA, MODALITY_NOT_ALLOWED,
        IMAGE_TOO_LARGE, UNSUPPORTED_TRANSFER_SYNTAX, MISSING_REQUIRED_ATTRIBUTE,
    }
)  # fmt: skip


@dataclass(frozen=True)
class Rejection:
    """The file's fault: recorded beside the upload, never retried."""

    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)  # no patient data


# Rejection messages and details are logged: only values that match their VR's character set
# go in, so a malformed file cannot smuggle free text (patient data) into the logs.
UI_VALUE = re.compile(r"[0-9.]{1,64}")
CS_VALUE = re.compile(r"[A-Z0-9 _]{1,16}")


def vr_safe(value: str | None, pattern: re.Pattern[str]) -> str | None:
    if value is None:
        return None
    return value if pattern.fullmatch(value) else "<invalid value>"
