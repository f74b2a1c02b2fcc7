"""The radiologist's assessment of an AI result as a VERIFIED TID 1500 Comprehensive 3D SR
(highdicom) in the source's study: the decision and reason as codes, the comment as text, the
corrected finding, the reviewer as verifying observer, and references to the AI SR and SEG it
assesses (and to the corrected region's SEG). Pure: no I/O. docs/contracts.md, "Assessment objects".
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from datetime import UTC
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DT

from gpu_service.dicom.common import MANUFACTURER, copy_deidentification, finding_code
from gpu_service.dicom.review_codes import (
    ASSESSED_REPORT,
    ASSESSED_SEGMENTATION,
    ASSESSMENT,
    CODING_SCHEME,
    COMMENT,
    DECISION_CODES,
    REASON,
    REASON_CODES,
    REVIEW_SEG,
    REVIEW_SR,
    SERIES_DESCRIPTIONS,
    SERIES_NUMBERS,
    Assessment,
    person_name,
    review_uid,
)
from gpu_service.dicom.review_seg import RegionError, build_region_segmentation, check_region
from gpu_service.dicom.seg import why_no_segmentation
from gpu_service.dicom.sr import IMAGING_PROCEDURE, drop_frame_beside_segment, finding_group

AI_PREFIXES = ("AI finding: ", "AI label: ")  # the AI SR's tracking identifiers (sr.py)
UNKNOWN_ORGANISATION = "unknown"  # Verifying Organization is Type 1


def ai_label_codes(ai_sr: Dataset) -> dict[str, hd.sr.CodedConcept]:
    """label -> the finding code the AI SR used for it (the model's own codes, which the review
    component does not load), read from each measurement group's tracking identifier."""
    found: dict[str, hd.sr.CodedConcept] = {}
    for item in _walk(ai_sr):
        if item.get("ValueType") != "CONTAINER":
            continue
        label, code = None, None
        for child in item.get("ContentSequence", []):
            name = _concept(child)
            if name == codes.DCM.TrackingIdentifier and child.get("ValueType") == "TEXT":
                text = str(child.TextValue)
                label = next((text[len(p) :] for p in AI_PREFIXES if text.startswith(p)), None)
            elif name == codes.DCM.Finding and child.get("ConceptCodeSequence"):
                code = hd.sr.CodedConcept.from_dataset(child.ConceptCodeSequence[0])
        if label is not None and code is not None:
            found[label] = code
    return found


def _walk(item: Dataset):
    for child in item.get("ContentSequence", []):
        yield child
        yield from _walk(child)


def _concept(item: Dataset) -> hd.sr.CodedConcept | None:
    names = item.get("ConceptNameCodeSequence")
    return hd.sr.CodedConcept.from_dataset(names[0]) if names else None


def label_code(label: str, codes_by_label: Mapping[str, hd.sr.CodedConcept], model_name: str) -> Any:
    """The AI SR's code for ``label``, else the pipeline's usual rule (common.finding_code)."""
    return codes_by_label.get(label) or finding_code(label, {}, model_name)


def build_assessment(
    source: Dataset,
    ai_sr: Dataset,
    assessment: Assessment,
    ai_label: str,
    model_name: str,
    ai_seg: Dataset | None = None,
    region_seg: Dataset | None = None,
    frame_index: int = 0,
) -> Dataset:
    """The VERIFIED assessment SR; the same review always gives the same object."""
    label_codes = ai_label_codes(ai_sr)
    assessed_label = assessment.corrected_label if assessment.decision == "correct" else ai_label
    finding = label_code(assessed_label or ai_label, label_codes, model_name)
    evaluations = [hd.sr.QualitativeEvaluation(ASSESSMENT, DECISION_CODES[assessment.decision])]
    if assessment.reason_code:
        evaluations.append(hd.sr.QualitativeEvaluation(REASON, REASON_CODES[assessment.reason_code]))
    if assessment.decision == "correct":
        evaluations.append(hd.sr.QualitativeEvaluation(finding, codes.DCM.Present))
    common: dict[str, Any] = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=review_uid(assessment.review_id, "review-tracking"), identifier="AI result assessment"
        ),
        "finding_type": finding,
        "qualitative_evaluations": evaluations,
    }
    group = finding_group(source, region_seg, frame_index, **common)
    container = group[0]
    if assessment.reason_text:
        container.ContentSequence.append(
            hd.sr.TextContentItem(COMMENT, assessment.reason_text[:2000], relationship_type="CONTAINS")
        )
    assessed = [(ASSESSED_REPORT, ai_sr)] + ([(ASSESSED_SEGMENTATION, ai_seg)] if ai_seg is not None else [])
    for name, ds in assessed:
        container.ContentSequence.append(
            hd.sr.CompositeContentItem(name, ds.SOPClassUID, ds.SOPInstanceUID, relationship_type="CONTAINS")
        )
    reviewer = person_name(assessment.reviewer_name)
    organisation = (assessment.reviewer_organisation or UNKNOWN_ORGANISATION)[:64]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a one-component person name is valid, highdicom warns
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=reviewer, organization_name=organisation
            ),
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[group],
    )
    evidence = [source, ai_sr] + [ds for ds in (ai_seg, region_seg) if ds is not None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=review_uid(assessment.review_id, "review-sr-series"),
            series_number=SERIES_NUMBERS[REVIEW_SR],
            sop_instance_uid=review_uid(assessment.review_id, "review-sr"),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=True,
            is_verified=True,
            verifying_observer_name=reviewer,
            verifying_organization=organisation,
            coding_schemes=[CODING_SCHEME],
        )
    _stamp(sr, assessment)
    drop_frame_beside_segment(sr)
    sr.SeriesDescription = SERIES_DESCRIPTIONS[REVIEW_SR]
    copy_deidentification(sr, source)
    return sr


def _stamp(ds: Dataset, assessment: Assessment) -> None:
    """Every date-time the builder would take from the clock is the decision's instead, so a
    rebuild after a redelivery gives the same object; on the SR also the verification and the
    observation date-time."""
    when = assessment.decided_at.astimezone(UTC)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    stamp = DT(f"{date}{time}+0000")
    ds.ContentDate, ds.ContentTime = date, time
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for item in ds.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = stamp
    if "VerifyingObserverSequence" in ds:
        ds.VerifyingObserverSequence[0].VerificationDateTime = stamp
        ds.ObservationDateTime = stamp


def build_review_objects(
    source: Dataset,
    ai_sr: Dataset,
    assessment: Assessment,
    ai_label: str,
    model_name: str,
    ai_seg: Dataset | None = None,
    frame_index: int = 0,
) -> tuple[dict[str, Dataset], str | None]:
    """(role -> object, why there is no region SEG): the SR, and for a correction with a region
    the SEG of that region (the SR references it). A source that cannot carry a SEG (seg.py's
    rule) gets the SR alone and the reason. Raises RegionError for a region outside the image."""
    objects: dict[str, Dataset] = {}
    absent = None
    if assessment.decision == "correct" and assessment.region:
        check_region(assessment.region, int(source.Rows), int(source.Columns))
        absent = why_no_segmentation(source)
        if absent is None:
            code = label_code(assessment.corrected_label or ai_label, ai_label_codes(ai_sr), model_name)
            try:
                seg = build_region_segmentation(
                    source, assessment.region, code, assessment.review_id, frame_index
                )
            except RegionError:
                raise
            except Exception as exc:  # noqa: BLE001 - highdicom refuses sources it cannot segment
                absent = f"highdicom cannot build a SEG of this source: {type(exc).__name__}: {exc}"
            else:
                _stamp(seg, assessment)
                copy_deidentification(seg, source)
                objects[REVIEW_SEG] = seg
    objects[REVIEW_SR] = build_assessment(
        source, ai_sr, assessment, ai_label, model_name, ai_seg, objects.get(REVIEW_SEG), frame_index
    )
    return objects, absent
