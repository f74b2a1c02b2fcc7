"""The retraining export: one JSON line per reviewed result, as its latest decision stands.

Shaped for a Vertex AI image-classification import (single label):
``{"imageGcsUri": <STEM.png>, "classificationAnnotation": {"displayName": <reviewed label>},
"dataItemResourceLabels": {...}}``. Vertex resource labels take at most 63 characters of
lowercase letters, digits, ``_`` and ``-``, so they carry the decision, the labels and the
model in that form (the SHA-256 shortened to its first 16 characters); everything at full
fidelity (the exact labels, the full SHA-256, the corrected SEG's URI, the source) is under
``"review"``, a key Vertex does not know: ``--vertex`` leaves it out.

The reviewed label: accepted, the AI's label; corrected, the corrected label; rejected as a
false positive or false negative by a model with exactly two labels, the other label (what the
reviewer says the image shows); any other rejection has no label, so the line has no
``classificationAnnotation`` (Vertex imports it unlabelled).
"""

from __future__ import annotations

import re
from typing import Any

from dicom_results.models import ReviewDecision

Decision = ReviewDecision.Decision
Reason = ReviewDecision.Reason
LABEL_VALUE = re.compile(r"[^a-z0-9_-]+")


def reviewed_label(decision: ReviewDecision) -> str | None:
    result = decision.result
    if decision.decision == Decision.ACCEPT:
        return result.label
    if decision.decision == Decision.CORRECT:
        return decision.corrected_label
    labels = sorted(result.scores)
    if decision.reason_code in (Reason.FALSE_POSITIVE, Reason.FALSE_NEGATIVE) and len(labels) == 2:
        others = [label for label in labels if label != result.label]
        return others[0] if len(others) == 1 else None
    return None


def label_value(value: str) -> str:
    """A Vertex resource-label value: lowercase, [a-z0-9_-], at most 63 characters."""
    return LABEL_VALUE.sub("_", value.lower())[:63]


def corrected_seg_uri(decision: ReviewDecision) -> str:
    receipt = getattr(decision, "receipt", None)
    return receipt.seg_uri if receipt is not None and receipt.status == receipt.Status.STORED else ""


def export_line(decision: ReviewDecision, *, vertex_only: bool = False) -> dict[str, Any] | None:
    """The line of one decision in force, or None when its result has no rendered image."""
    result = decision.result
    if not result.image_uri:
        return None
    label = reviewed_label(decision)
    line: dict[str, Any] = {"imageGcsUri": result.image_uri}
    if label:
        line["classificationAnnotation"] = {"displayName": label}
    line["dataItemResourceLabels"] = {
        "decision": label_value(decision.decision),
        "reason": label_value(decision.reason_code),
        "ai_label": label_value(result.label),
        "reviewed_label": label_value(label or ""),
        "model_name": label_value(result.model_name),
        "model_version": label_value(result.model_version),
        "model_sha256": label_value(result.model_sha256[:16]),
        "source_generation": label_value(result.source_generation),
    }
    if not vertex_only:
        line["review"] = {
            "review_id": str(decision.review_id),
            "decision": decision.decision,
            "reason_code": decision.reason_code,
            "ai_label": result.label,
            "reviewed_label": label,
            "decided_at": decision.decided_at.isoformat(),
            "source_uri": result.source_uri,
            "source_generation": result.source_generation,
            "model": {
                "name": result.model_name,
                "version": result.model_version,
                "sha256": result.model_sha256,
            },
            "corrected_seg_uri": corrected_seg_uri(decision),
        }
    return line
