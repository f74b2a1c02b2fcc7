"""A completed result whose DICOM objects still have to reach the DICOMweb store.

The objects are stored, then the record is committed (:mod:`gpu_service.results.delivery`). When the store
is down the record already built is staged as ``STEM.pending.json``; the redelivery finds it and
re-sends the objects from the bucket, so it makes no model call and no LIME. The protocol is in
docs/contracts.md ("DICOMweb store").
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from gpu_service.dicom import result_objects
from gpu_service.dicom.dicomweb_store import DicomWebStore, StoreUnavailable
from gpu_service.outcome import ProcessResult, RequestOutcome
from gpu_service.request import InferenceRequest
from gpu_service.results import record as result
from gpu_service.results.delivery import ResultDelivery
from gpu_service.results.outputs import RequestOutputs
from gpu_service.timing import StageTimer
from pipeline_common import naming
from pipeline_common.jsonlog import log

logger = logging.getLogger(__name__)

ROLE = "pending"


class StagedResults:
    def __init__(
        self, outputs: RequestOutputs, delivery: ResultDelivery, dicomweb: DicomWebStore | None
    ) -> None:
        self.outputs = outputs
        self.delivery = delivery
        self.dicomweb = dicomweb

    def store_and_commit(
        self,
        request: InferenceRequest,
        record: dict[str, Any],
        datasets: list[Dataset],
        timer: StageTimer,
        *,
        stage: bool = True,
    ) -> ProcessResult:
        """Raises ``StoreRejected`` (permanent) and ``StoreUnavailable`` (transient: the record
        is staged first, unless it already is)."""
        if self.dicomweb is not None and datasets:
            try:
                with timer.stage("dicomweb"):
                    stored = self.dicomweb.store(datasets)
            except StoreUnavailable:
                if stage:
                    self._stage(request, record)
                raise
            result_objects.mark_stored(record["dicom"], stored.already_present)
            record.setdefault("timings_ms", {})["dicomweb"] = timer.ms["dicomweb"]
        return self.delivery.commit(request, record, RequestOutcome.COMPLETED, timer)

    def resume(self, request: InferenceRequest, timer: StageTimer) -> ProcessResult | None:
        """The staged record of this very work, stored and committed; None when there is none
        (or its objects are no longer those it names): the caller computes the result."""
        if self.dicomweb is None:
            return None
        found = self.outputs.stored_record(request, naming.PENDING_SUFFIX)
        if found is None:
            return None
        record = found.record
        model_sha = self.outputs.model_sha
        if record.get("status") != result.COMPLETED or not result.same_work(
            record, request.uri, request.generation, model_sha
        ):
            return None
        with timer.stage("read_staged"):
            datasets = self._read_objects(request, record.get("dicom") or {})
        if datasets is None:
            log(logger, logging.WARNING, "a staged result's DICOM objects changed; recomputing")
            return None
        if (record.get("dicom") or {}).get("dicomweb"):
            record["dicom"]["dicomweb"]["url"] = self.dicomweb.url  # the store they go to now
        log(logger, logging.INFO, "staged result found; storing its DICOM objects again, no recompute")
        return self.store_and_commit(request, record, datasets, timer, stage=False)

    def _stage(self, request: InferenceRequest, record: dict[str, Any]) -> None:
        """Not fatal: without it the redelivery recomputes the same objects."""
        try:
            self.outputs.write(
                request, naming.PENDING_SUFFIX, ROLE, result.encode(record), "application/json"
            )
        except Exception as exc:  # noqa: BLE001 - storage error, a foreign object under the name
            log(logger, logging.WARNING, "cannot stage the result for the redelivery",
                reason=f"{type(exc).__name__}: {exc}")  # fmt: skip
        else:
            log(logger, logging.INFO, "DICOMweb store unavailable; result staged for the redelivery")

    def _read_objects(self, request: InferenceRequest, dicom: dict[str, Any]) -> list[Dataset] | None:
        """The objects as this work wrote them (same source, model and SOP Instance UID), or None."""
        uids = dicom.get("sop_instance_uids") or {}
        if not uids:
            return None
        source = naming.source_marker(request.bucket, request.name, request.generation)
        datasets = []
        for role, uid in sorted(uids.items()):
            suffix = result_objects.SUFFIXES.get(role)
            found = (
                self.outputs.cloud_storage.read_output(self.outputs.location(request, suffix))
                if suffix
                else None
            )
            if (
                found is None
                or found.metadata.get(naming.SOURCE_KEY) != source
                or found.metadata.get(naming.MODEL_KEY) != self.outputs.model_sha
            ):
                return None
            try:
                ds = pydicom.dcmread(io.BytesIO(found.data))
            except Exception:  # noqa: BLE001 - unreadable bytes: recompute them
                return None
            if str(ds.get("SOPInstanceUID", "")) != uid:
                return None
            datasets.append(ds)
        return datasets
