"""One completed result's DICOM objects: built (:mod:`gpu_service.dicom.objects`), written beside
the upload as ``STEM.seg.dcm`` / ``STEM.sr.dcm`` (``STEM.heatmap.seg.dcm`` with a weight map),
then sent by STOW-RS when ``DICOMWEB_URL`` is set (:mod:`gpu_service.dicom.dicomweb_store`; a redelivery
after the store was down re-sends them from the bucket: :mod:`gpu_service.pipeline.staged_result`).

The result record is written only after this returns, so a stored record never claims objects
that were not written or stored. What the record says about them is :func:`dicom_section`
(the ``dicom`` block of docs/contracts.md).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from gpu_service.dicom import objects as dicom_objects
from gpu_service.dicom.objects import GRADCAM_HEATMAP, HEATMAP, SEG, SR, Algorithm, DicomObjects, Finding
from gpu_service.inference.model import label_names
from gpu_service.inference.upsampled import WeightMap
from pipeline_common import naming
from pipeline_common.write_outcome import WriteOutcome, WriteResult

SUFFIXES = {
    SEG: naming.SEG_SUFFIX,
    SR: naming.SR_SUFFIX,
    HEATMAP: naming.HEATMAP_SEG_SUFFIX,
    GRADCAM_HEATMAP: naming.GRADCAM_HEATMAP_SEG_SUFFIX,
}
CONTENT_TYPE = "application/dicom"

# write(suffix, role, data, content type) -> WriteResult; uri(suffix) -> gs:// URI of that output
WriteFn = Callable[[str, str, bytes, str], WriteResult]
UriFn = Callable[[str], str]


class Superseded(Exception):
    """A newer generation's output holds the name: this result is stale, nothing to store."""


def dicom_section(
    objects: DicomObjects, uris: Mapping[str, str], dicomweb_url: str | None, stored: bool | None
) -> dict[str, Any]:
    """The record's ``dicom`` block: where each object is, its UIDs, and why any is absent."""
    section: dict[str, Any] = {
        "seg_uri": uris.get(SEG),
        "sr_uri": uris.get(SR),
        "study_instance_uid": objects.study_instance_uid,
        "series_instance_uids": {r: str(ds.SeriesInstanceUID) for r, ds in objects.objects.items()},
        "sop_instance_uids": {r: str(ds.SOPInstanceUID) for r, ds in objects.objects.items()},
        "absent": dict(objects.absent),
        "dicomweb": None,
    }
    if HEATMAP in uris:
        section["heatmap_uri"] = uris[HEATMAP]
    if GRADCAM_HEATMAP in uris:
        section["gradcam_heatmap_uri"] = uris[GRADCAM_HEATMAP]
    if dicomweb_url:
        section["dicomweb"] = {
            "url": dicomweb_url,
            "stored": sorted(objects.objects) if stored is not None else [],
            "already_present": bool(stored),
        }
    return section


@dataclass(frozen=True)
class WrittenObjects:
    """The objects written beside the upload, not yet stored: ``section`` says ``stored: []``."""

    section: dict[str, Any]
    datasets: list[Dataset]


def mark_stored(section: dict[str, Any], already_present: bool) -> None:
    """The store accepted every object of ``section``: say so in its ``dicomweb`` block."""
    if section.get("dicomweb"):
        section["dicomweb"]["stored"] = sorted(section["sop_instance_uids"])
        section["dicomweb"]["already_present"] = already_present


def write_objects(
    *,
    source: Dataset,
    mask: np.ndarray,
    finding: Finding,
    algorithm: Algorithm,
    dedup_key: str,
    frame_index: int,
    pixel_weights: WeightMap | None,
    write: WriteFn,
    uri: UriFn,
    dicomweb_url: str | None,
    gradcam_weights: WeightMap | None = None,
    pool: Executor | None = None,
) -> WrittenObjects:
    """Build and write; raises :class:`Superseded` when a newer upload's output holds a name.
    Each object is encoded as soon as it is built. ``pool``: its write runs there (I/O: it waits
    on a socket, not on the GIL) while the next object is built and encoded; None: one after the
    other on this thread, and nothing more is written after a failed write."""
    pending: list[tuple[str, Future[WriteResult]]] = []

    def write_built(role: str, ds: Dataset) -> None:
        if pending and pool is None and pending[-1][1].exception() is not None:
            return  # one after the other: nothing more is written after a failed write
        data = dicom_objects.encode(ds)
        if pool is None:
            pending.append((role, _done(write, SUFFIXES[role], role, data)))
        else:
            run = contextvars.copy_context().run  # the request's logs and trace, on the pool's thread
            pending.append((role, pool.submit(run, write, SUFFIXES[role], role, data, CONTENT_TYPE)))

    try:
        objects = dicom_objects.build_objects(
            source,
            mask,
            finding,
            algorithm,
            dedup_key,
            frame_index,
            pixel_weights=pixel_weights,
            gradcam_weights=gradcam_weights,
            on_built=write_built,
        )
    finally:
        wait([future for _, future in pending])  # every write settled before anything is raised
    for role, future in pending:
        if future.result().outcome is WriteOutcome.SUPERSEDED:
            raise Superseded(role)
    uris = {role: uri(SUFFIXES[role]) for role, _ in pending}
    return WrittenObjects(dicom_section(objects, uris, dicomweb_url, None), list(objects.objects.values()))


def _done(write: WriteFn, suffix: str, role: str, data: bytes) -> Future[WriteResult]:
    """The write, done on the caller's thread, as a settled future."""
    future: Future[WriteResult] = Future()
    try:
        future.set_result(write(suffix, role, data, CONTENT_TYPE))
    except Exception as exc:  # noqa: BLE001 - raised by future.result(), after the other writes
        future.set_exception(exc)
    return future


def write_result_objects(
    *,
    source: Dataset,
    explanation: Any,
    probs: np.ndarray,
    model: Any,
    dedup_key: str,
    frame_index: int,
    write: WriteFn,
    uri: UriFn,
    dicomweb_url: str | None,
    correlation_id: str = "",
    gradcam: Any = None,
    lime: Any = None,
    methods: Sequence[str] = (),
    pool: Executor | None = None,
) -> WrittenObjects:
    """:func:`write_objects` for one inference: the explained label is the finding.

    ``explanation``: the first method's result (its mask is the SEG). ``lime`` / ``gradcam``: each
    method's result when it ran (LIME's weights: the heat-map SEG; Grad-CAM's map: its own SEG);
    without ``gradcam``, ``explanation`` is LIME's, as before Grad-CAM. ``methods``: their order
    (``EXPLANATION_METHODS``), named in the SEGs' and the SR's algorithm parameters."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    labels = label_names(model.labels, probs.size)
    if gradcam is None:
        lime = explanation
    methods = tuple(methods) or tuple(m for m, r in (("lime", lime), ("gradcam", gradcam)) if r is not None)
    return write_objects(
        source=source,
        mask=explanation.mask,
        finding=Finding(labels, [float(p) for p in probs], int(explanation.label_index)),
        algorithm=Algorithm(
            name=model.name,
            version=model.version,
            sha256=model.sha256,
            lime_parameters=_lime_parameters(lime.params) if lime is not None else {},
            label_codes=getattr(model, "label_codes", None) or {},
            correlation_id=correlation_id,
            methods=methods,
            gradcam_layer=gradcam.layer if gradcam is not None else None,
        ),
        dedup_key=dedup_key,
        frame_index=frame_index,
        pixel_weights=getattr(lime, "pixel_weights", None) if lime is not None else None,
        write=write,
        uri=uri,
        dicomweb_url=dicomweb_url,
        gradcam_weights=gradcam.pixel_weights if gradcam is not None else None,
        pool=pool,
    )


def _lime_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that decide the explanation (those a person would set)."""
    keys = (
        "num_samples",
        "num_features",
        "segmentation",
        "seed",
        "kernel_width",
        "n_superpixels",
        "label_index",
    )
    return {k: params[k] for k in keys if k in params}
