"""The result's TID 1500 Measurement Report (highdicom ``sr``): the finding, each label's
probability and the algorithm, referencing the SEG or the source; UNVERIFIED. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from gpu_service.dicom.common import (
    MANUFACTURER,
    SERIES_NUMBERS,
    SR,
    Algorithm,
    Finding,
    algorithm_parameters,
    finding_code,
    n_frames_of,
    object_uid,
)

IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")


def _source_image(source: Dataset, frame_index: int) -> hd.sr.SourceImageForSegmentation:
    frames = [frame_index + 1] if n_frames_of(source) > 1 else None
    return hd.sr.SourceImageForSegmentation(
        referenced_sop_class_uid=source.SOPClassUID,
        referenced_sop_instance_uid=source.SOPInstanceUID,
        referenced_frame_numbers=frames,
    )


def finding_group(source: Dataset, segmentation: Dataset | None, frame_index: int, **common: Any) -> Any:
    """A finding's measurement group: located by segment 1 of ``segmentation`` when there is one
    (its frame reference is dropped by :func:`drop_frame_beside_segment`), else on the source
    image. Both the AI's report and the radiologist's assessment use it."""
    if segmentation is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)], **common
        )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        referenced_segment=hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=segmentation.SOPClassUID,
            sop_instance_uid=segmentation.SOPInstanceUID,
            frame_number=1,  # removed by drop_frame_beside_segment: the reference is by segment
            segment_number=1,
            source_image=_source_image(source, frame_index),
        ),
        **common,
    )


def build_report(
    source: Dataset,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    segmentation: Dataset | None = None,
    frame_index: int = 0,
) -> Dataset:
    """TID 1500: the finding (coded), each label's probability and the algorithm; UNVERIFIED.

    The predicted finding references segment 1 of the SEG (TID 1410 "Referenced Segmentation
    Frame") by its segment number and without a frame number: the Image SOP Instance Reference
    Macro allows one or the other (dciodvfy), and segment 1 is the SEG's only segment, its mask
    on one frame. Beside it, the source image it segments (the decoded frame of a multi-frame
    source)."""
    code = finding_code(finding.label, algorithm.label_codes, algorithm.name)
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name[:64],
        version=algorithm.version[:64],
        parameters=[f"{k}={v}" for k, v in algorithm_parameters(algorithm).items()],
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
        groups.insert(0, finding_group(source, segmentation, frame_index, **common))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=groups,
    )
    evidence = [source] + ([segmentation] if segmentation is not None else [])
    sr = hd.sr.Comprehensive3DSR(
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
    drop_frame_beside_segment(sr)
    return sr


def drop_frame_beside_segment(item: Dataset) -> None:
    """Referenced Frame Number out of every image reference that has a Referenced Segment Number."""
    for reference in item.get("ReferencedSOPSequence", []):
        if "ReferencedSegmentNumber" in reference and "ReferencedFrameNumber" in reference:
            del reference.ReferencedFrameNumber
    for child in item.get("ContentSequence", []):
        drop_frame_beside_segment(child)
