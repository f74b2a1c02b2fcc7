"""One radiologist's decision (``dicom-review/1``) made into standard DICOM: check it against the
stored result, build the assessment SR (and the corrected region's SEG), write them beside the
upload, store them by STOW-RS, write ``STEM.review.json``, then tell Django with a signed
``dicom-review-receipt/1`` webhook. docs/contracts.md, "Review of a result".

Every step is idempotent on the review id (same UIDs, create-only objects, 409 = stored, one
``webhook-id``), so a redelivery after a store or webhook outage ends with one SR and one receipt.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from gpu_service.dicom.common import encode, source_header
from gpu_service.dicom.dicomweb_store import DicomWebStore, StoreRejected
from gpu_service.dicom.review import build_review_objects
from gpu_service.dicom.review_codes import REVIEW_SEG, REVIEW_SR
from gpu_service.inference.pixels import read_dicom
from gpu_service.outcome import ProcessResult, RequestOutcome
from gpu_service.pipeline.review_check import ReviewRefused, check_review
from gpu_service.pipeline.review_message import ReviewMessage
from gpu_service.results.cloud_storage import OutputConflict, SourceUnavailable
from gpu_service.results.review_outputs import ReviewOutputs, ReviewTarget
from gpu_service.results.webhook import RETRYABLE_STATUS, WebhookClient
from pipeline_common import contract, naming
from pipeline_common.jsonlog import log
from pipeline_common.timefmt import rfc3339

logger = logging.getLogger(__name__)
SUFFIXES = {REVIEW_SR: naming.REVIEW_SR_SUFFIX, REVIEW_SEG: naming.REVIEW_SEG_SUFFIX}


def receipt_webhook_id(review_id: str, status: str) -> str:
    """One ``webhook-id`` per decision and outcome: every redelivery's receipt is the same delivery
    to Django, and a decision stored after a failed attempt (republished once the store accepts it)
    is a new one, which replaces the ``failed`` receipt."""
    return hashlib.sha256(f"{contract.REVIEW}|{review_id}|{status}".encode()).hexdigest()


def _decided_at(message: ReviewMessage) -> str:
    """The decision time in one fixed RFC 3339 form, so STEM.review.json's order is a string order."""
    return message.assessment.decided_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ReviewProcessor:
    def __init__(
        self,
        outputs: ReviewOutputs,
        webhook: WebhookClient,
        store: DicomWebStore | None = None,
        max_object_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self.outputs = outputs
        self.webhook = webhook
        self.store = store
        self.max_object_bytes = max_object_bytes

    def process(self, message: ReviewMessage) -> ProcessResult:
        """Storage and store outages raise ``OSError`` (the caller answers 503, Pub/Sub redelivers)."""
        result = message.result
        target = ReviewTarget(
            bucket=result.bucket,
            name=result.name,
            generation=result.generation,
            correlation_id=result.correlation_id,
            model_sha256=result.model_sha256,
            review_id=message.assessment.review_id,
            decided_at=_decided_at(message),
        )
        record = self.outputs.read_record(target)
        try:
            check_review(message, record)
            assert record is not None
            source, ai_sr, ai_seg = self._inputs(target, record)
        except ReviewRefused as exc:
            return self._send(message, self._failed(message, exc.code, exc.message))
        frame_index = int((record.get("image") or {}).get("frame_index") or 0)
        model_name = str((record.get("model") or {}).get("name") or "")
        objects, absent = build_review_objects(
            source, ai_sr, message.assessment, result.label, model_name, ai_seg, frame_index
        )
        try:
            uris = {
                role: self.outputs.write_object(target, SUFFIXES[role], role, encode(ds)).uri
                for role, ds in sorted(objects.items(), key=lambda item: item[0] != REVIEW_SEG)
            }
        except OutputConflict as exc:  # a name held by an object the review component did not write
            return self._send(message, self._failed(message, OutputConflict.code, str(exc)))
        already_present = False
        if self.store is not None:
            try:
                already_present = self.store.store(list(objects.values())).already_present
            except StoreRejected as exc:  # permanent: the objects stay in the bucket, no review.json
                return self._send(message, self._failed(message, exc.code, str(exc)))
        stored = self._stored(message, objects, uris, absent, already_present)
        try:
            location, outcome = self.outputs.write_latest(target, self._latest(message, stored))
        except OutputConflict as exc:
            return self._send(message, self._failed(message, OutputConflict.code, str(exc)))
        stored["review_json_uri"] = location.uri
        log(logger, logging.INFO, "review stored", review_id=target.review_id,
            correlation_id=target.correlation_id, roles=sorted(objects), already_present=already_present,
            review_json=outcome.value)  # fmt: skip
        return self._send(message, stored)

    def _inputs(
        self, target: ReviewTarget, record: dict[str, Any]
    ) -> tuple[Dataset, Dataset, Dataset | None]:
        """The source's header and the AI SR (and SEG) as stored beside the upload."""
        dicom = record.get("dicom") or {}
        ai_sr = self._object(dicom.get("sr_uri"), dicom["sop_instance_uids"]["sr"])
        if ai_sr is None:
            raise ReviewRefused("no_ai_sr", "the AI SR named by the result is not beside the upload")
        ai_seg = None
        if dicom.get("seg_uri") and dicom["sop_instance_uids"].get("seg"):
            ai_seg = self._object(dicom["seg_uri"], dicom["sop_instance_uids"]["seg"])
        try:
            data = self.outputs.fetch_source(target, self.max_object_bytes)
        except SourceUnavailable as exc:
            raise ReviewRefused("source_unavailable", exc.message) from None
        return source_header(read_dicom(data)), ai_sr, ai_seg

    def _object(self, uri: str | None, sop_instance_uid: str) -> Dataset | None:
        stored = self.outputs.read_object(uri) if uri else None
        if stored is None:
            return None
        ds = pydicom.dcmread(io.BytesIO(stored.data))
        return ds if str(ds.SOPInstanceUID) == sop_instance_uid else None

    def _base(self, message: ReviewMessage, status: str) -> dict[str, Any]:
        return {
            "schema": contract.REVIEW_RECEIPT,
            "review_id": message.assessment.review_id,
            "correlation_id": message.result.correlation_id,
            "status": status,
            "sr": None,
            "seg": None,
            "seg_absent": None,
            "study_instance_uid": message.result.study_instance_uid,
            "review_json_uri": None,
            "dicomweb": None,
            "error": None,
            "at": rfc3339(),
        }

    def _failed(self, message: ReviewMessage, code: str, text: str) -> dict[str, Any]:
        log(logger, logging.ERROR, "review refused", review_id=message.assessment.review_id,
            correlation_id=message.result.correlation_id, error_code=code)  # fmt: skip
        return {**self._base(message, "failed"), "error": {"code": code, "message": text[:500]}}

    def _stored(
        self,
        message: ReviewMessage,
        objects: dict[str, Dataset],
        uris: dict[str, str],
        absent: str | None,
        already_present: bool,
    ) -> dict[str, Any]:
        def entry(role: str) -> dict[str, str] | None:
            if role not in objects:
                return None
            ds = objects[role]
            return {"uri": uris[role], "sop_instance_uid": str(ds.SOPInstanceUID),
                    "series_instance_uid": str(ds.SeriesInstanceUID)}  # fmt: skip

        receipt = self._base(message, "stored")
        receipt.update(sr=entry(REVIEW_SR), seg=entry(REVIEW_SEG), seg_absent=absent)
        if self.store is not None:
            receipt["dicomweb"] = {"url": self.store.url, "already_present": already_present}
        return receipt

    def _latest(self, message: ReviewMessage, stored: dict[str, Any]) -> dict[str, Any]:
        """STEM.review.json: the decision as published, and where its objects are."""
        body = message.body
        keys = ("review_id", "supersedes", "decision", "reason_code", "reason_text",
                "corrected_label", "region", "reviewer", "result")  # fmt: skip
        return {
            "schema": contract.REVIEW_RECORD,
            **{key: body.get(key) for key in keys},
            "decided_at": _decided_at(message),
            "dicom": {
                key: stored[key] for key in ("study_instance_uid", "sr", "seg", "seg_absent", "dicomweb")
            },
            "stored_at": stored["at"],
        }

    def _send(self, message: ReviewMessage, receipt: dict[str, Any]) -> ProcessResult:
        """The receipt to Django; acknowledged unless another attempt could get it through."""
        body = json.dumps(receipt, ensure_ascii=False).encode()
        delivery = self.webhook.deliver(
            body,
            idempotency_key=receipt_webhook_id(message.assessment.review_id, receipt["status"]),
            correlation_id=message.result.correlation_id,
        )
        outcome = RequestOutcome.COMPLETED if receipt["status"] == "stored" else RequestOutcome.FAILED
        error = (receipt.get("error") or {}).get("code")
        if not delivery.accepted:
            if delivery.status is None or delivery.status in RETRYABLE_STATUS:
                log(logger, logging.WARNING, "review receipt not delivered; asking for redelivery",
                    review_id=message.assessment.review_id, status=delivery.status)  # fmt: skip
                return ProcessResult(RequestOutcome.RETRY, receipt, "webhook_failed")
            log(logger, logging.ERROR, "review receipt refused by Django; not retried",
                review_id=message.assessment.review_id, status=delivery.status)  # fmt: skip
        return ProcessResult(outcome, receipt, error)
