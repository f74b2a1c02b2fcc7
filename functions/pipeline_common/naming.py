"""Where the pipeline writes its outputs, how it marks them, and how it names one upload.

Both components must agree on these rules, otherwise the ingest function would
re-ingest the service's own outputs (a trigger loop) or the service would
write next to the wrong object.
"""

from __future__ import annotations

import hashlib
import re

# Custom object metadata carried by every object the pipeline writes (docs/contracts.md).
MARKER_KEY = "dicom-pipeline-output"  # the object's role
SOURCE_KEY = "dicom-pipeline-source"  # gs://bucket/name#generation of the upload it was made from
CORRELATION_KEY = "dicom-pipeline-correlation-id"
MODEL_KEY = "dicom-pipeline-model-sha256"  # the service's outputs only
DELIVERED_KEY = "dicom-pipeline-webhook-delivered"  # result records Django accepted
REVIEW_ID_KEY = "dicom-pipeline-review-id"  # the review outputs: the decision they hold
REVIEW_DECIDED_KEY = "dicom-pipeline-review-decided-at"  # STEM.review.json: latest wins
# Suffixes of the pipeline's own outputs, next to ``STEM``.
PREVIEW_SUFFIX = ".png"
MASK_SUFFIX = ".lime.png"
OVERLAY_SUFFIX = ".overlay.png"
HEATMAP_SUFFIX = ".heatmap.png"
RESULT_SUFFIX = ".result.json"
PENDING_SUFFIX = ".pending.json"  # a completed record staged while the DICOMweb store is down
DEAD_LETTER_SUFFIX = ".dead-letter.json"  # the upload's inference message reached the dead-letter topic
REJECTION_SUFFIX = ".rejected.json"
SEG_SUFFIX = ".seg.dcm"
SR_SUFFIX = ".sr.dcm"
HEATMAP_SEG_SUFFIX = ".heatmap.seg.dcm"
# Grad-CAM's heat map and its SEG (EXPLANATION_METHODS with gradcam): they end in ``.png`` /
# ``.heatmap.png`` and ``.seg.dcm``, so the suffixes below (and Terraform's write condition) cover them.
GRADCAM_HEATMAP_SUFFIX = ".gradcam.heatmap.png"
GRADCAM_HEATMAP_SEG_SUFFIX = ".gradcam.heatmap.seg.dcm"
# The review component's outputs (docs/contracts.md, "Review of a result"): per decision
# STEM.<review_id>.review.sr.dcm / .review.seg.dcm, and the latest decision STEM.review.json.
REVIEW_SR_SUFFIX = ".review.sr.dcm"
REVIEW_SEG_SUFFIX = ".review.seg.dcm"
REVIEW_SUFFIX = ".review.json"
OUTPUT_SUFFIXES: tuple[str, ...] = (
    REVIEW_SR_SUFFIX,
    REVIEW_SEG_SUFFIX,
    REVIEW_SUFFIX,
    SEG_SUFFIX,
    SR_SUFFIX,
    GRADCAM_HEATMAP_SEG_SUFFIX,
    GRADCAM_HEATMAP_SUFFIX,
    MASK_SUFFIX,
    OVERLAY_SUFFIX,
    HEATMAP_SUFFIX,
    RESULT_SUFFIX,
    PENDING_SUFFIX,
    DEAD_LETTER_SUFFIX,
    REJECTION_SUFFIX,
    PREVIEW_SUFFIX,
)

_DCM = re.compile(r"\.dcm$", re.IGNORECASE)
# Cloud Storage object names are at most 1024 bytes of UTF-8.
MAX_NAME_BYTES = 1024
_HASH_CHARS = 16


def stem(object_name: str) -> str:
    """The object name without a trailing ``.dcm`` (any case): outputs are ``STEM + suffix``."""
    return _DCM.sub("", object_name)


def output_name(object_name: str, suffix: str, prefix: str = "") -> str:
    """Name of an output for ``object_name``; ``prefix`` relocates it (read-only upload buckets).

    A name so long that ``STEM + suffix`` would pass Cloud Storage's 1024-byte limit keeps as
    much of its stem as fits, then ``~`` and a hash of the whole name, so its outputs can
    still be written beside it and never collide with another upload's.
    """
    base = stem(object_name)
    if prefix:
        base = prefix.rstrip("/") + "/" + base.lstrip("/")
    if len((base + suffix).encode()) <= MAX_NAME_BYTES:
        return base + suffix
    digest = hashlib.sha256(object_name.encode()).hexdigest()[:_HASH_CHARS]
    room = MAX_NAME_BYTES - len(suffix.encode()) - 1 - _HASH_CHARS
    kept = base.encode()[:room].decode("utf-8", errors="ignore")  # never half a character
    return f"{kept}~{digest}{suffix}"


def review_suffix(review_id: str, suffix: str) -> str:
    """``.<review_id><suffix>``: one name per decision, so no decision overwrites another."""
    return f".{review_id}{suffix}"


def is_pipeline_output(
    object_name: str,
    metadata: dict[str, str] | None,
    suffixes: tuple[str, ...] = OUTPUT_SUFFIXES,
    marker_key: str = MARKER_KEY,
) -> bool:
    """True for objects the pipeline wrote itself; they must never trigger work again."""
    if metadata and marker_key in metadata:
        return True
    lowered = object_name.lower()
    return any(lowered.endswith(s.lower()) for s in suffixes)


def object_key(bucket: str, name: str, generation: str | int) -> str:
    """The deduplication key of one upload: ``bucket/name#generation``."""
    return f"{bucket}/{name}#{generation}"


def correlation_id(bucket: str, name: str, generation: str | int) -> str:
    """Deterministic id of one upload, so every redelivery and retry shares it."""
    return hashlib.sha256(object_key(bucket, name, generation).encode()).hexdigest()[:32]


def hash_uid(uid: str | None) -> str | None:
    """A UID made safe for logs: UIDs can embed dates and site identifiers."""
    if not uid:
        return None
    return hashlib.sha256(uid.encode()).hexdigest()[:16]


def gs_uri(bucket: str, name: str) -> str:
    return f"gs://{bucket}/{name}"


def source_marker(bucket: str, name: str, generation: str | int) -> str:
    """The ``SOURCE_KEY`` value: ``gs://bucket/name#generation``."""
    return f"{gs_uri(bucket, name)}#{generation}"


def parse_source_marker(value: str | None) -> tuple[str, int | None]:
    """``gs://b/n#gen`` -> (``gs://b/n``, gen); without a numeric generation, (value, None)."""
    if not value:
        return "", None
    uri, _, gen = value.rpartition("#")
    return (uri, int(gen)) if gen.isdigit() and uri else (value, None)
