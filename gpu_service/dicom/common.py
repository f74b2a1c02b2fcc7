"""What the DICOM result objects share: roles, deterministic UIDs, label codes, the source's
header as highdicom gets it, and the algorithm that made the result. Pure: no I/O.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, generate_uid

SEG = "seg"
SR = "sr"
HEATMAP = "heatmap"
GRADCAM_HEATMAP = "gradcam_heatmap"
ROLES = (SEG, SR, HEATMAP, GRADCAM_HEATMAP)
SERIES_NUMBERS = {SEG: 9901, SR: 9902, HEATMAP: 9903, GRADCAM_HEATMAP: 9904}
SERIES_DESCRIPTIONS = {
    SEG: "AI LIME explanation mask (unverified)",
    SR: "AI finding report (unverified)",
    HEATMAP: "AI LIME weight map (unverified)",
    GRADCAM_HEATMAP: "AI Grad-CAM map (unverified)",
}
# How the SEG and SR name each explanation method among their algorithm parameters.
METHOD_NAMES = {"lime": "LIME", "gradcam": "Grad-CAM"}
MANUFACTURER = "dicom-pipeline"
# Findings with a SNOMED CT concept; other labels use the model's own codes (sidecar "codes")
# or, without them, a private scheme named for the model.
SNOMED_FINDINGS = {
    "nodule": codes.SCT.Nodule,
    "normal": codes.SCT.Normal,
    "mass": codes.SCT.Mass,
}
# Type 2 attributes of the patient and study modules copied from the source: added empty when
# the source lacks them, as the standard allows (highdicom copies what is there).
TYPE2_EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
# De-identification Method of an object whose source says its identity was removed but not how.
UNSTATED_DEIDENTIFICATION = "as the source image: identity removed, method not stated"
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# highdicom's log lines name the source's UIDs (patient data, never logged): silenced; what
# goes wrong reaches the record as the reason an object is absent.
logging.getLogger("highdicom").setLevel(logging.CRITICAL + 1)


@dataclass(frozen=True)
class Algorithm:
    """What made the result: the model and the explanation method with its parameters."""

    name: str
    version: str
    sha256: str
    lime_parameters: Mapping[str, Any] = field(default_factory=dict)
    label_codes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # The upload's correlation id: the run that made this object, so one upload's journey can be
    # followed from the bucket through the logs and the webhook into the PACS.
    correlation_id: str = ""
    # The explanation methods that ran (docs/contracts.md, "Explanation methods"), and the layer
    # Grad-CAM weighed when it ran.
    methods: Sequence[str] = ("lime",)
    gradcam_layer: str | None = None


@dataclass(frozen=True)
class Finding:
    labels: Sequence[str]
    probabilities: Sequence[float]
    label_index: int  # the predicted (and explained) label

    @property
    def label(self) -> str:
        return self.labels[self.label_index]


def object_uid(dedup_key: str, model_sha256: str, role: str) -> UID:
    """The same upload, model and role always give the same UID (redeliveries are idempotent)."""
    return generate_uid(entropy_srcs=[dedup_key, model_sha256, role])


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def finding_code(
    label: str, label_codes: Mapping[str, Mapping[str, str]], model_name: str
) -> hd.sr.CodedConcept:
    own = label_codes.get(label)
    if own:
        return hd.sr.CodedConcept(
            value=str(own["value"]),
            scheme_designator=str(own["scheme"]),
            meaning=str(own.get("meaning", label)),
        )
    known = SNOMED_FINDINGS.get(label.strip().lower())
    if known is not None:
        return hd.sr.CodedConcept(known.value, known.scheme_designator, known.meaning)
    scheme = "99" + re.sub(r"[^A-Z0-9]", "", model_name.upper())[:14]  # "99…": a local coding scheme
    return hd.sr.CodedConcept(
        value=label[:64] or "unnamed", scheme_designator=scheme or "99MODEL", meaning=label[:64]
    )


def source_header(ds: Dataset) -> Dataset:
    """The source without its pixels (highdicom reads the header only), Type 2 gaps filled empty."""
    header = Dataset()
    header.update({elem.tag: elem for elem in ds if elem.keyword not in _PIXEL_KEYWORDS})
    header.file_meta = getattr(ds, "file_meta", Dataset())
    for keyword in TYPE2_EMPTY:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def copy_deidentification(obj: Dataset, source: Dataset) -> None:
    """Patient Identity Removed YES requires a De-identification Method or its code sequence
    (Type 1C): the source's, else a text that says the source did not state one."""
    if str(obj.get("PatientIdentityRemoved", "")).upper() != "YES":
        return
    methods = ("DeidentificationMethod", "DeidentificationMethodCodeSequence")
    for keyword in methods:
        if keyword in source and keyword not in obj:
            obj[keyword] = deepcopy(source[keyword])
    if not any(keyword in obj for keyword in methods):
        obj.DeidentificationMethod = UNSTATED_DEIDENTIFICATION


def algorithm_parameters(algorithm: Algorithm) -> dict[str, str]:
    methods = ",".join(METHOD_NAMES.get(m, m) for m in algorithm.methods) or "LIME"
    params = {"model_sha256": algorithm.sha256, "explanation": methods}
    if algorithm.gradcam_layer:
        params["gradcam_layer"] = algorithm.gradcam_layer[:64]
    if algorithm.correlation_id:
        params["correlation_id"] = algorithm.correlation_id
    for key in sorted(algorithm.lime_parameters):
        params[f"lime_{key}"] = str(algorithm.lime_parameters[key])[:64]
    return params


def n_frames_of(source: Dataset) -> int:
    try:
        return max(1, int(source.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1
