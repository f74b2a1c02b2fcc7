"""One inference request from download to webhook, and the acknowledgement it earns.

Pub/Sub delivers at least once and redelivers on any non-2xx answer, and a GPU bills
every second, so the answer is a pure function of the outcome (:func:`ack_status`):

- 2xx only when the work is safe: the result record is stored and the webhook accepted
  it (``completed``), or the failure is permanent and its ``failed`` record is stored and
  accepted (``failed``), or a redelivery found the same result already stored and either
  already delivered or now accepted by the webhook (``duplicate``), or a newer upload's result is already there
  (``superseded``). Never without a stored record: if the record's name is held by an
  object the pipeline did not write for this upload, the answer is 5xx (logged as ERROR)
  and the message ends in the dead-letter topic.
- 5xx for anything another attempt can fix (``retry``): storage errors, model/GPU errors,
  ``MemoryError`` and ``OSError`` anywhere, the webhook still failing after its own retries
  or rejecting the body. The stored record makes the redelivery cheap: it skips inference
  and only re-sends the webhook.
- Delivered once: when the webhook accepts a record, the record object gets the custom
  metadata ``dicom-pipeline-webhook-delivered: <RFC 3339 time>`` (a patch under a
  precondition on the record's generation). A redelivery (Eventarc and Pub/Sub duplicate
  at least once) that finds it answers 2xx without calling the webhook; one that does not
  (the earlier webhook failed, or the instance died in between) re-sends the stored record.
  Failing to set the marker is logged, not fatal: the worst case is one extra webhook,
  which Django deduplicates by its ``Idempotency-Key``. The backfill job skips only
  delivered results, so it also repairs undelivered ones.
- Permanent failures (:func:`is_transient` is false) are failures of pure stages, which
  would fail again on the same bytes: not DICOM, undecodable, preprocessing shape/value
  errors, object gone or replaced, too many bytes or pixels (``MAX_PIXELS``, checked from
  the header before any pixel is decoded), rendering, record building.
- A transient failure at delivery ``Settings.give_up_attempt`` or later (Pub/Sub's
  ``deliveryAttempt``, sent when the subscription has a dead-letter policy) becomes a
  ``failed`` record ``retries_exhausted`` (:func:`gives_up`), so Django hears of it before
  the message is dead-lettered. Without ``deliveryAttempt`` (the emulator) it stays 5xx.
- 400 for a message that can never be processed (``invalid``: not a push envelope, not a
  ``dicom-inference-request/1``). It is not acknowledged on purpose: Pub/Sub retries it
  with backoff and, after the subscription's maximum delivery attempts, moves it to the
  dead-letter topic, where it is kept for people to inspect. Acknowledging it would drop
  the only copy; the cost of a few redeliveries is a JSON parse each, no GPU work. The
  subscription must therefore have a dead-letter policy (infra/terraform sets one).

The result record is written last, after the PNGs: it is the commit marker that
redeliveries look for. A stored record counts only if its object carries the pipeline's
marker and the record's ``source.uri`` is this request's object. Per-stage timings are in the record (up to the artifact writes;
the record cannot hold the time of its own write or of the webhook) and in the logs.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gpu_service import dicom_outputs, render, result
from gpu_service.batcher import Batcher
from gpu_service.dicomweb import StoreRejected
from gpu_service.explain import Explanation, LimeParams, explain
from gpu_service.model import LoadedModel
from gpu_service.pixels import DecodedImage, PixelDecodeError, decode, read_dicom, to_model_input, to_uint8
from gpu_service.push import InferenceRequest
from gpu_service.settings import Settings
from gpu_service.storage import (
    DELIVERED_KEY,
    GcsStore,
    Location,
    OutputConflict,
    SourceUnavailable,
    WriteOutcome,
    Written,
)
from gpu_service.webhook import WebhookClient
from gpu_service.webhook_signature import idempotency_key
from pipeline_common import naming
from pipeline_common.jsonlog import log

logger = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"  # permanent failure, recorded and delivered
    DUPLICATE = "duplicate"  # result already stored for this generation and model; delivered or re-sent
    SUPERSEDED = "superseded"  # a newer generation's result is stored; nothing to do
    RETRY = "retry"  # transient: let Pub/Sub redeliver
    INVALID = "invalid"  # can never be processed: dead-letter it
    NOT_READY = "not_ready"  # model still loading


_STATUS = {
    Outcome.COMPLETED: 200,
    Outcome.FAILED: 200,
    Outcome.DUPLICATE: 200,
    Outcome.SUPERSEDED: 200,
    Outcome.RETRY: 503,
    Outcome.INVALID: 400,
    Outcome.NOT_READY: 503,
}


def ack_status(outcome: Outcome) -> int:
    """The HTTP status Pub/Sub gets for an outcome (2xx acknowledges; anything else redelivers)."""
    return _STATUS[outcome]


def is_acked(outcome: Outcome) -> bool:
    return 200 <= ack_status(outcome) < 300


def is_transient(exc: BaseException) -> bool:
    """Errors another attempt (maybe on another instance) can fix, wherever they are raised:
    out of memory and I/O. Anything else raised by a pure stage is a property of the input."""
    return isinstance(exc, MemoryError | OSError)


def gives_up(delivery_attempt: int | None, give_up_attempt: int) -> bool:
    """True when a transient failure must be recorded as ``retries_exhausted`` and acked."""
    return delivery_attempt is not None and delivery_attempt >= give_up_attempt


def pixel_count(ds: Any) -> int | None:
    """rows x columns x frames from the header alone (None when it cannot be told)."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    return rows * columns * max(frames, 1)


@dataclass
class ProcessResult:
    outcome: Outcome
    record: dict[str, Any] | None = None
    error_code: str | None = None
    detail: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def http_status(self) -> int:
        return ack_status(self.outcome)


@dataclass(frozen=True)
class StoredRecord:
    """A result record as stored: its bytes are what the webhook gets, byte for byte."""

    body: bytes
    record: dict[str, Any]
    generation: int  # of the record object, for the delivered marker's precondition
    delivered_at: str | None  # the delivered marker, None until Django accepted it


def rfc3339_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ProcessorStats:
    inferences: int = 0
    webhooks_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bump(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round(self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000, 1)


def lime_params(settings: Settings) -> LimeParams:
    params = LimeParams(
        num_samples=settings.lime_num_samples,
        num_features=settings.lime_num_features,
        seed=settings.lime_seed,
    )
    if settings.lime_segmentation:
        params = replace(params, segmentation=settings.lime_segmentation)
    if settings.lime_batch_size:
        params = replace(params, batch_size=settings.lime_batch_size)
    if settings.lime_segmentation_max_side:
        params = replace(params, segmentation_max_side=settings.lime_segmentation_max_side)
    return params


@dataclass(frozen=True)
class Inference:
    """Everything computed from the pixels, before anything is written."""

    preview: np.ndarray
    probs: np.ndarray
    explanation: Explanation


def infer(
    model: LoadedModel,
    predict_fn: Callable[[np.ndarray], np.ndarray],
    decoded_u8: np.ndarray,
    model_input: np.ndarray,
    params: LimeParams,
    timer: _Timer,
) -> Inference:
    with timer.stage("predict"):
        probs = np.asarray(predict_fn(model_input[None]))[0]
    with timer.stage("explain"):
        explanation = explain(
            model_input, predict_fn, int(np.argmax(probs)), params, output_shape=decoded_u8.shape[:2]
        )
    return Inference(decoded_u8, probs, explanation)


class Processor:
    def __init__(
        self,
        settings: Settings,
        model: LoadedModel,
        store: GcsStore,
        webhook: WebhookClient,
        batcher: Batcher | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.store = store
        self.webhook = webhook
        self.batcher = batcher
        self.predict_fn = batcher.predict if batcher is not None else model.predict
        self.params = lime_params(settings)
        self.stats = ProcessorStats()
        self.dicom_store = dicom_outputs.make_store(settings) if settings.dicom_objects else None

    @property
    def model_sha(self) -> str:
        return self.model.info.sha256

    def _loc(self, request: InferenceRequest, suffix: str) -> Location:
        return self.store.location(request.bucket, request.name, suffix)

    # -- entry points --------------------------------------------------------------------
    def existing_result(self, request: InferenceRequest) -> StoredRecord | None:
        """The stored result record for this object, if any (whatever generation/model).

        An object under the record's name that the pipeline did not write for this very
        upload is not a record: processing goes on and ``write_output`` refuses to touch it.
        """
        found = self.store.read_output(self._loc(request, naming.RESULT_SUFFIX))
        if found is None:
            return None
        try:
            record = json.loads(found.data)
        except ValueError:
            return None  # unreadable record: recompute and replace it
        if not isinstance(record, dict) or not result.is_record_of(record, found.metadata, request.uri):
            return None
        return StoredRecord(found.data, record, found.generation, found.metadata.get(DELIVERED_KEY))

    def already_processed(self, request: InferenceRequest) -> bool:
        """Nothing left to do: this generation's result with this model is stored and Django
        accepted it. A stored but undelivered result is not done: processing re-sends it."""
        found = self.existing_result(request)
        return bool(
            found
            and found.delivered_at
            and result.same_work(found.record, request.uri, request.generation, self.model_sha)
        )

    def process(self, request: InferenceRequest, delivery_attempt: int | None = None) -> ProcessResult:
        try:
            return self._process(request)
        except Exception as exc:  # noqa: BLE001 - storage, model/GPU, memory, I/O: transient
            detail = f"{type(exc).__name__}: {exc}"
            if not gives_up(delivery_attempt, self.settings.give_up_attempt):
                logger.exception("processing failed; the message will be redelivered")
                return ProcessResult(Outcome.RETRY, error_code="transient", detail=detail)
            logger.exception(
                "processing failed at the last useful delivery; recording retries_exhausted",
                extra={"fields": {"delivery_attempt": delivery_attempt}},
            )
        try:
            return self._fail(
                request,
                "retries_exhausted",
                f"still failing at delivery attempt {delivery_attempt}: {detail}",
                _Timer(),
            )
        except Exception as exc:  # noqa: BLE001 - even the record cannot be stored: redeliver
            logger.exception("cannot record retries_exhausted; the message will be redelivered")
            return ProcessResult(Outcome.RETRY, error_code="transient", detail=f"{type(exc).__name__}: {exc}")

    # -- the pipeline --------------------------------------------------------------------
    def _process(self, request: InferenceRequest) -> ProcessResult:
        timer = _Timer()
        existing = self.existing_result(request)
        if existing is not None:
            if result.same_work(existing.record, request.uri, request.generation, self.model_sha):
                return self._redeliver(request, existing, Outcome.DUPLICATE, timer)
            stored_gen = result.record_generation(existing.record)
            if stored_gen is not None and stored_gen > int(request.generation):
                log(logger, logging.INFO, "a newer generation's result is stored; skipping",
                    stored_generation=str(stored_gen))  # fmt: skip
                return ProcessResult(Outcome.SUPERSEDED, timings_ms=timer.ms)

        permanent: tuple[str, str] | None = None
        with timer.stage("download"):
            try:
                data = self.store.fetch_source(
                    request.bucket, request.name, request.generation, self.settings.max_object_bytes
                )
            except SourceUnavailable as exc:
                permanent = (exc.code, exc.message)
        if permanent:
            return self._fail(request, *permanent, timer)

        ds = None
        with timer.stage("decode"):
            try:
                ds = read_dicom(data)
                pixels = pixel_count(ds)
                if pixels is not None and pixels > self.settings.max_pixels:
                    permanent = (
                        "image_too_large",
                        f"rows x columns x frames = {pixels}, above the limit of {self.settings.max_pixels}",
                    )
                else:
                    decoded = decode(ds)
                    preview = to_uint8(decoded)
                    info = self.model.info
                    model_input = to_model_input(decoded, info.input_size, info.channels)
            except PixelDecodeError as exc:
                permanent = (exc.code, exc.message)
            except Exception as exc:
                if is_transient(exc):
                    raise
                permanent = ("decode_failed", f"{type(exc).__name__}: {exc}")  # pure: permanent
        del data
        if permanent:
            return self._fail(request, *permanent, timer, ds)
        header = result.merge_header(request.dicom, result.header_from_dataset(ds))

        # Model/GPU errors propagate: transient (see the module docstring).
        with self.batcher.caller() if self.batcher is not None else contextlib.nullcontext():
            inference = infer(self.model, self.predict_fn, preview, model_input, self.params, timer)
        self.stats.bump("inferences")

        with timer.stage("render"):
            try:
                artifacts = [
                    (naming.PREVIEW_SUFFIX, "preview", render.preview_png(preview)),
                    (naming.MASK_SUFFIX, "mask", render.mask_png(inference.explanation.mask)),
                    (
                        naming.OVERLAY_SUFFIX,
                        "overlay",
                        render.overlay_png(preview, inference.explanation.mask),
                    ),
                ]
            except Exception as exc:
                if is_transient(exc):
                    raise
                permanent = ("render_failed", f"{type(exc).__name__}: {exc}")
        if permanent:
            return self._fail(request, *permanent, timer, ds)
        with timer.stage("write"):
            try:
                for suffix, role, png in artifacts:
                    written = self._write(request, suffix, role, png, "image/png")
                    if written.outcome is WriteOutcome.SUPERSEDED:
                        log(
                            logger, logging.INFO, "a newer generation's output is stored; skipping", role=role
                        )
                        return ProcessResult(Outcome.SUPERSEDED, timings_ms=timer.ms)
            except OutputConflict as exc:
                return self._fail(request, OutputConflict.code, str(exc), timer, ds)
        dicom = None
        if self.settings.dicom_objects:  # SEG + SR, stored before any record claims them
            with timer.stage("dicom"):
                try:
                    dicom = self._publish_dicom(request, ds, inference, decoded)
                except dicom_outputs.Superseded:
                    return ProcessResult(Outcome.SUPERSEDED, timings_ms=timer.ms)
                except (StoreRejected, OutputConflict) as exc:
                    return self._fail(request, exc.code, str(exc), timer, ds)

        try:
            record = self._completed_record(request, header, inference, decoded, timer, dicom)
        except Exception as exc:
            if is_transient(exc):
                raise
            return self._fail(request, "record_failed", f"{type(exc).__name__}: {exc}", timer, ds)
        return self._commit(request, record, Outcome.COMPLETED, timer)

    def _completed_record(
        self,
        request: InferenceRequest,
        header: dict[str, Any],
        inference: Inference,
        decoded: DecodedImage,
        timer: _Timer,
        dicom: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        expl, preview = inference.explanation, inference.preview
        return self._record(
            request,
            result.COMPLETED,
            header,
            timer,
            prediction=result.prediction_fields(inference.probs, self.model.info.labels),
            image_uri=self._loc(request, naming.PREVIEW_SUFFIX).uri,
            explanation={
                "method": "lime",
                "mask_uri": self._loc(request, naming.MASK_SUFFIX).uri,
                "overlay_uri": self._loc(request, naming.OVERLAY_SUFFIX).uri,
                "parameters": expl.params,
                "top_segments": expl.top_segments,
                "weights": {str(s): round(expl.weights[s], 6) for s in expl.top_segments},
                "intercept": round(expl.intercept, 6),
                "local_score": round(expl.local_score, 6),
                "label_index": expl.label_index,
            },
            image={
                "rows": int(preview.shape[0]),
                "columns": int(preview.shape[1]),
                "frame_index": int(decoded.frame_index),
                "n_frames": int(decoded.n_frames),
                "photometric": decoded.photometric,
            },
            dicom=dicom,
        )

    def _publish_dicom(
        self, request: InferenceRequest, ds: Any, inference: Inference, decoded: DecodedImage
    ) -> dict[str, Any]:
        return dicom_outputs.publish_result(
            source=ds,
            explanation=inference.explanation,
            probs=inference.probs,
            model=self.model.info,
            dedup_key=naming.object_key(request.bucket, request.name, request.generation),
            frame_index=int(decoded.frame_index),
            write=lambda suffix, role, data, ctype: self._write(request, suffix, role, data, ctype),
            uri=lambda suffix: self._loc(request, suffix).uri,
            store=self.dicom_store,
            correlation_id=request.correlation_id,
        )

    def _record(
        self, request: InferenceRequest, status: str, header: dict[str, Any], timer: _Timer, **fields: Any
    ) -> dict[str, Any]:
        """A result record of this request: what every record, completed or failed, carries."""
        return result.build_record(
            status=status,
            correlation_id=request.correlation_id,
            bucket=request.bucket,
            name=request.name,
            generation=request.generation,
            header=header,
            model=self.model.info.as_record(),
            timings_ms=timer.ms,
            **fields,
        )

    def _write(self, request: InferenceRequest, suffix: str, role: str, data: bytes, ctype: str) -> Written:
        return self.store.write_output(
            self._loc(request, suffix),
            data,
            content_type=ctype,
            role=role,
            source_bucket=request.bucket,
            source_name=request.name,
            source_generation=request.generation,
            correlation_id=request.correlation_id,
            model_sha256=self.model_sha,
        )

    def _fail(
        self, request: InferenceRequest, code: str, message: str, timer: _Timer, ds: Any = None
    ) -> ProcessResult:
        """A permanent failure: record it and tell Django, so nothing is silently dropped."""
        log(logger, logging.WARNING, "permanent failure", error_code=code)
        header = result.merge_header(
            request.dicom, result.header_from_dataset(ds) if ds is not None else None
        )
        record = self._record(request, result.FAILED, header, timer, error={"code": code, "message": message})
        return self._commit(request, record, Outcome.FAILED, timer)

    def _commit(
        self, request: InferenceRequest, record: dict[str, Any], outcome: Outcome, timer: _Timer
    ) -> ProcessResult:
        """Store the record (the commit marker), then deliver it."""
        body = result.encode(record)
        start = time.perf_counter()
        try:
            written = self._write(request, naming.RESULT_SUFFIX, "result", body, "application/json")
        except OutputConflict as exc:
            # A foreign object holds the record's name: never overwrite it, never ack without a
            # stored record. Redeliveries fail the same way until the dead-letter topic keeps it.
            log(logger, logging.ERROR, "cannot store the result record; not acknowledging",
                error_code=OutputConflict.code, reason=str(exc), record_status=record.get("status"))  # fmt: skip
            return ProcessResult(
                Outcome.RETRY,
                record=record,
                error_code=OutputConflict.code,
                detail=str(exc),
                timings_ms=timer.ms,
            )
        timer.ms["write_record"] = round((time.perf_counter() - start) * 1000, 1)
        if written.outcome is WriteOutcome.SUPERSEDED:
            return ProcessResult(Outcome.SUPERSEDED, record=record, timings_ms=timer.ms)
        if written.outcome is WriteOutcome.PRESENT:  # a concurrent twin stored it first
            existing = self.existing_result(request)
            if existing is not None:
                return self._redeliver(request, existing, outcome, timer)
        return self._deliver(request, body, record, outcome, timer, written.generation)

    def _redeliver(
        self, request: InferenceRequest, stored: StoredRecord, outcome: Outcome, timer: _Timer
    ) -> ProcessResult:
        """A stored record: acknowledge it if Django already has it, else send it as stored."""
        record = stored.record
        if stored.delivered_at:
            log(logger, logging.INFO, "duplicate: webhook already delivered", outcome=outcome.value,
                result_status=record.get("status"), delivered_at=stored.delivered_at)  # fmt: skip
            error = (record.get("error") or {}).get("code")
            return ProcessResult(outcome, record=record, error_code=error, timings_ms=timer.ms)
        log(logger, logging.INFO, "result already stored; re-sending the webhook only",
            status=record.get("status"))  # fmt: skip
        return self._deliver(request, stored.body, record, outcome, timer, stored.generation)

    def _mark_delivered(self, request: InferenceRequest, record_generation: int) -> None:
        """Not fatal: without the marker a redelivery sends one more (idempotent) webhook."""
        try:
            self.store.mark_delivered(
                self._loc(request, naming.RESULT_SUFFIX), record_generation, rfc3339_now()
            )
        except Exception as exc:  # noqa: BLE001 - storage error, record replaced or deleted
            log(logger, logging.WARNING, "cannot mark the result record as delivered",
                reason=f"{type(exc).__name__}: {exc}", record_generation=str(record_generation))  # fmt: skip

    def _deliver(
        self,
        request: InferenceRequest,
        body: bytes,
        record: dict[str, Any],
        outcome: Outcome,
        timer: _Timer,
        record_generation: int | None,
    ) -> ProcessResult:
        key = idempotency_key(request.bucket, request.name, request.generation, self.model_sha)
        delivery = self.webhook.deliver(body, idempotency_key=key, correlation_id=request.correlation_id)
        timer.ms["webhook"] = round(delivery.elapsed_ms, 1)
        if delivery.attempts:
            self.stats.bump("webhooks_sent")
        error = (record.get("error") or {}).get("code")
        if not delivery.accepted:
            log(logger, logging.ERROR, "webhook not accepted; the message will be redelivered",
                status=delivery.status, attempts=delivery.attempts, error=delivery.error,
                timings_ms=timer.ms)  # fmt: skip
            return ProcessResult(
                Outcome.RETRY,
                record=record,
                error_code="webhook_failed",
                detail=delivery.error,
                timings_ms=timer.ms,
            )
        if record_generation is not None:
            self._mark_delivered(request, record_generation)
        log(logger, logging.INFO, f"request {outcome.value}", outcome=outcome.value,
            result_status=record.get("status"), error_code=error,
            sop_instance_uid_hash=naming.hash_uid(record.get("sop_instance_uid")),
            webhook_status=delivery.status, webhook_attempts=delivery.attempts, timings_ms=timer.ms)  # fmt: skip
        return ProcessResult(outcome, record=record, error_code=error, timings_ms=timer.ms)
