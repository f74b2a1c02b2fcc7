"""The result as standard DICOM objects (IHE AI Results): a Segmentation of the LIME mask and a
TID 1500 Measurement Report, both in the source's study, built and validated by highdicom.

Pure: no I/O. UIDs are derived from the upload's dedup key, the model's SHA-256 and the object's
role, so a redelivery rebuilds the very same instances and storing them twice is idempotent.
A source that cannot carry an object gets none, with the reason in :attr:`DicomObjects.absent`;
nothing here raises for a bad source (the record says why instead).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, generate_uid

SEG = "seg"
SR = "sr"
HEATMAP = "heatmap"
ROLES = (SEG, SR, HEATMAP)
SERIES_NUMBERS = {SEG: 9901, SR: 9902, HEATMAP: 9903}
SERIES_DESCRIPTIONS = {
    SEG: "AI LIME explanation mask (unverified)",
    SR: "AI finding report (unverified)",
    HEATMAP: "AI LIME weight map (unverified)",
}
MANUFACTURER = "dicom-pipeline"
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
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


@dataclass(frozen=True)
class Finding:
    labels: Sequence[str]
    probabilities: Sequence[float]
    label_index: int  # the predicted (and explained) label

    @property
    def label(self) -> str:
        return self.labels[self.label_index]


@dataclass
class DicomObjects:
    objects: dict[str, Dataset]  # role -> dataset, only those built
    absent: dict[str, str]  # role -> why it was not built
    study_instance_uid: str | None

    def encoded(self, role: str) -> bytes:
        return encode(self.objects[role])


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
    if not header.get("SliceThickness"):
        # highdicom would copy the pixel spacing into a Pixel Measures item that its own reader
        # refuses without a slice thickness (secondary captures, RGB photos, some NM).
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            if keyword in header:
                delattr(header, keyword)
    return header


def _algorithm_parameters(algorithm: Algorithm) -> dict[str, str]:
    params = {"model_sha256": algorithm.sha256, "explanation": "LIME"}
    for key in sorted(algorithm.lime_parameters):
        params[f"lime_{key}"] = str(algorithm.lime_parameters[key])[:64]
    return params


def _segment_algorithm(algorithm: Algorithm) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version[:64],
        source=MANUFACTURER,
        parameters=_algorithm_parameters(algorithm),
    )


def n_frames_of(source: Dataset) -> int:
    try:
        return max(1, int(source.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def seg_frame_number(source: Dataset, frame_index: int) -> int:
    """The SEG frame that holds the mask of source frame ``frame_index``: every source frame has
    one (empty ones too: highdicom cannot omit them for legacy multi-frame sources)."""
    return frame_index + 1 if n_frames_of(source) > 1 else 1


def _frames(mask: np.ndarray, n_frames: int, frame_index: int) -> np.ndarray:
    """The mask on the decoded frame of a multi-frame source, the other frames empty."""
    if n_frames <= 1:
        return mask
    out = np.zeros((n_frames, *mask.shape), dtype=mask.dtype)
    out[frame_index] = mask
    return out


def why_no_segmentation(source: Dataset) -> str | None:
    """A reason when the source cannot carry a SEG that highdicom validates, else None."""
    if not source.get("StudyInstanceUID"):
        return "the source has no Study Instance UID: a derived object could not join its study"
    frames = n_frames_of(source)
    if frames > 1 and not source.get("FrameOfReferenceUID"):
        return "multi-frame source without a Frame of Reference UID: a SEG cannot locate its frames"
    if frames > 1 and not source.get("PerFrameFunctionalGroupsSequence"):
        # highdicom places a multi-frame source's frames by their per-frame plane positions;
        # without them (legacy multi-frame) it would merge the frames into one.
        return "multi-frame source without per-frame functional groups: a SEG cannot tell its frames apart"
    return None


def build_segmentation(
    source: Dataset,
    mask: np.ndarray,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    frame_index: int = 0,
) -> Dataset:
    """Segment 1 = the LIME mask (BINARY), at the source's resolution, referencing the source."""
    code = finding_code(finding.label, algorithm.label_codes, algorithm.name)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=f"LIME evidence for {finding.label}"[:64],
        segmented_property_category=codes.SCT.Finding,
        segmented_property_type=code,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_segment_algorithm(algorithm),
    )
    n_frames = n_frames_of(source)
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=_frames(np.asarray(mask, dtype=bool), n_frames, frame_index),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=object_uid(dedup_key, algorithm.sha256, "seg-series"),
        series_number=SERIES_NUMBERS[SEG],
        sop_instance_uid=object_uid(dedup_key, algorithm.sha256, SEG),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        device_serial_number=algorithm.sha256[:16],
        content_label="LIME",
        content_description=f"LIME explanation of {finding.label}"[:64],
        omit_empty_frames=False,
    )


def build_heatmap(
    source: Dataset,
    weights: np.ndarray,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    frame_index: int = 0,
) -> Dataset:
    """The continuous LIME weight map as a FRACTIONAL (probability) segment.

    Its positive part only: a fraction is in [0, 1], and the positive weights are the evidence
    *for* the finding, the same side the binary mask shows. A FRACTIONAL SEG rather than a
    Parametric Map because highdicom builds it for any single-frame projection image it can
    segment (no frame of reference or plane positions needed) and SEG-aware viewers draw it
    as an overlay of the source; a SEG holds one segmentation type, hence its own instance.
    """
    positive = np.clip(np.nan_to_num(np.asarray(weights, dtype=np.float32)), 0.0, 1.0)
    n_frames = n_frames_of(source)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=f"LIME weights for {finding.label}"[:64],
        segmented_property_category=codes.SCT.Finding,
        segmented_property_type=finding_code(finding.label, algorithm.label_codes, algorithm.name),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_segment_algorithm(algorithm),
    )
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=_frames(positive, n_frames, frame_index),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        segment_descriptions=[description],
        series_instance_uid=object_uid(dedup_key, algorithm.sha256, "heatmap-series"),
        series_number=SERIES_NUMBERS[HEATMAP],
        sop_instance_uid=object_uid(dedup_key, algorithm.sha256, HEATMAP),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        device_serial_number=algorithm.sha256[:16],
        content_label="LIMEWEIGHTS",
        content_description=f"LIME weights for {finding.label}, positive part"[:64],
        omit_empty_frames=False,
    )


def build_report(
    source: Dataset,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    segmentation: Dataset | None = None,
    seg_frame: int = 1,
) -> Dataset:
    """TID 1500: the finding (coded), each label's probability and the algorithm; UNVERIFIED."""
    code = finding_code(finding.label, algorithm.label_codes, algorithm.name)
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name[:64],
        version=algorithm.version[:64],
        parameters=[f"{k}={v}" for k, v in _algorithm_parameters(algorithm).items()],
        family=codes.cid7162.ArtificialIntelligence,
        manufacturer=MANUFACTURER,
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=object_uid("device", algorithm.sha256, "observer"),
            name=algorithm.name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=algorithm.version[:64],
            serial_number=algorithm.sha256[:16],
        ),
    )
    groups: list[Any] = []
    for index, (label, p) in enumerate(zip(finding.labels, finding.probabilities, strict=True)):
        label_code = finding_code(label, algorithm.label_codes, algorithm.name)
        probability = hd.sr.Measurement(
            name=codes.DCM.Probability,
            value=round(float(p), 6),
            unit=codes.UCUM.NoUnits,
            algorithm_id=algorithm_id,
        )
        common: dict[str, Any] = {
            "tracking_identifier": hd.sr.TrackingIdentifier(
                uid=object_uid(dedup_key, algorithm.sha256, f"tracking-{index}"),
                identifier=f"AI {'finding' if index == finding.label_index else 'label'}: {label}"[:64],
            ),
            "finding_type": label_code,
            "algorithm_id": algorithm_id,
            "measurements": [probability],
        }
        if index != finding.label_index:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(**common))
            continue
        # The predicted finding: coded, and located by the SEG when there is one.
        common["qualitative_evaluations"] = [hd.sr.QualitativeEvaluation(name=code, value=codes.DCM.Present)]
        if segmentation is not None:
            group: Any = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=hd.sr.ReferencedSegmentationFrame(
                    sop_class_uid=segmentation.SOPClassUID,
                    sop_instance_uid=segmentation.SOPInstanceUID,
                    frame_number=seg_frame,
                    segment_number=1,
                    source_image=hd.sr.SourceImageForSegmentation.from_source_image(source),
                ),
                **common,
            )
        else:
            group = hd.sr.MeasurementsAndQualitativeEvaluations(
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)], **common
            )
        groups.insert(0, group)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=groups,
    )
    evidence = [source] + ([segmentation] if segmentation is not None else [])
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=object_uid(dedup_key, algorithm.sha256, "sr-series"),
        series_number=SERIES_NUMBERS[SR],
        sop_instance_uid=object_uid(dedup_key, algorithm.sha256, SR),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )


def build_objects(
    source: Dataset,
    mask: np.ndarray,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    frame_index: int = 0,
    pixel_weights: np.ndarray | None = None,
) -> DicomObjects:
    """The SEG (and the heat-map SEG when weights exist) and the SR; never raises for a bad source."""
    objects: dict[str, Dataset] = {}
    absent: dict[str, str] = {}
    try:
        header = source_header(source)
    except Exception as exc:  # noqa: BLE001 - an unreadable header gets no objects, and says why
        reason = f"unreadable source header: {type(exc).__name__}: {exc}"
        return DicomObjects({}, {SEG: reason, SR: reason}, None)
    study = str(header.get("StudyInstanceUID") or "") or None
    try:
        reason = why_no_segmentation(header)
    except Exception as exc:  # noqa: BLE001 - an unconvertible value in the header
        reason = f"unreadable source header: {type(exc).__name__}: {exc}"
    if reason is None:
        try:
            objects[SEG] = build_segmentation(header, mask, finding, algorithm, dedup_key, frame_index)
        except Exception as exc:  # noqa: BLE001 - highdicom refuses sources it cannot segment
            reason = f"highdicom cannot build a SEG of this source: {type(exc).__name__}: {exc}"
    if reason is not None:
        absent[SEG] = reason
    if pixel_weights is not None:
        if SEG in objects:
            try:
                objects[HEATMAP] = build_heatmap(
                    header, pixel_weights, finding, algorithm, dedup_key, frame_index
                )
            except Exception as exc:  # noqa: BLE001
                absent[HEATMAP] = f"highdicom cannot build the heat-map SEG: {type(exc).__name__}: {exc}"
        else:
            absent[HEATMAP] = absent[SEG]
    if study is None:
        absent[SR] = "the source has no Study Instance UID: a derived object could not join its study"
    else:
        try:
            seg_frame = seg_frame_number(header, frame_index)
            objects[SR] = build_report(header, finding, algorithm, dedup_key, objects.get(SEG), seg_frame)
        except Exception as exc:  # noqa: BLE001
            absent[SR] = f"highdicom cannot build the SR: {type(exc).__name__}: {exc}"
    for role, ds in objects.items():
        ds.SeriesDescription = SERIES_DESCRIPTIONS[role]
    return DicomObjects(objects, absent, study)


def warmup() -> None:
    """Build and encode once at start-up: highdicom's first build loads its code tables (about
    0.3 s), which the first request would pay otherwise."""
    from pydicom.uid import ExplicitVRLittleEndian

    source = Dataset()
    source.file_meta = Dataset()
    source.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword, value in {
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "SOPInstanceUID": object_uid("warmup", "0", "source"),
        "StudyInstanceUID": object_uid("warmup", "0", "study"),
        "SeriesInstanceUID": object_uid("warmup", "0", "series"),
        "Modality": "DX",
        "Rows": 8,
        "Columns": 8,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 8,
        "BitsStored": 8,
        "HighBit": 7,
        "PixelRepresentation": 0,
    }.items():
        setattr(source, keyword, value)
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4] = True
    built = build_objects(
        source, mask, Finding(["a", "b"], [0.5, 0.5], 0), Algorithm("warmup", "0", "0"), "warmup"
    )
    for role in built.objects:
        built.encoded(role)
