"""The pipeline of one inference request: download, decode, predict, explain, render, write, record.

Stages that fail the same way on the same bytes raise :class:`PermanentFailure`, which
becomes a ``failed`` record; memory and I/O errors propagate as transient (see
:mod:`gpu_service.outcome`). Every adapter (Cloud Storage, DICOMweb store, webhook) is built by
:mod:`gpu_service.wiring` and handed in; storing and sending the record is
:mod:`gpu_service.results.delivery`'s. The protocol is in docs/contracts.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import logging
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpu_service.dicom import result_objects
from gpu_service.dicom.dicomweb_store import DicomWebStore, StoreRejected, StoreUnavailable
from gpu_service.inference import render
from gpu_service.inference.batcher import Batcher
from gpu_service.inference.explain import Explanation
from gpu_service.inference.model import LoadedModel
from gpu_service.inference.pixels import (
    DecodedImage,
    decode,
    read_dicom,
    to_model_input,
    to_uint8,
)
from gpu_service.outcome import DOWNSTREAM_UNAVAILABLE, ProcessResult, RequestOutcome, gives_up
from gpu_service.pipeline import explanations, renderings
from gpu_service.pipeline.explanations import Inference, infer
from gpu_service.pipeline.failures import PermanentFailure, permanent_unless_transient
from gpu_service.pipeline.staged_result import StagedResults
from gpu_service.request import InferenceRequest
from gpu_service.results import record as result
from gpu_service.results.cloud_storage import GcsStore, OutputConflict, SourceUnavailable
from gpu_service.results.delivery import ResultDelivery
from gpu_service.results.delivery_queue import DeliveryQueue
from gpu_service.results.outputs import RequestOutputs, StoredRecord
from gpu_service.results.webhook import WebhookClient
from gpu_service.settings import Settings, lime_params
from gpu_service.timing import StageTimer
from pipeline_common import naming
from pipeline_common.jsonlog import log

logger = logging.getLogger(__name__)
__all__ = ["NOT_READ", "Explanation", "Inference", "Processor", "infer", "pixel_count"]


def pixel_count(ds: Any) -> int | None:
    """rows x columns x frames from the header alone (None when it cannot be told)."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    return rows * columns * max(frames, 1)


@dataclass(frozen=True)
class _Decoded:
    dataset: Any
    image: DecodedImage
    preview: np.ndarray  # 8-bit, the source's resolution
    display: np.ndarray  # the preview at display resolution (render.display_image)
    model_input: np.ndarray


def _preview_and_display(image: DecodedImage, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    preview = to_uint8(image)
    return preview, render.display_image(preview, max_side)


class _NotRead(enum.Enum):
    TOKEN = 0


NOT_READ = _NotRead.TOKEN


class Processor:
    """One request's processing with one loaded model, over the adapters :mod:`gpu_service.wiring`
    built (``dicomweb`` None: no DICOMweb store configured)."""

    def __init__(
        self,
        settings: Settings,
        model: LoadedModel,
        cloud_storage: GcsStore,
        webhook: WebhookClient,
        dicomweb: DicomWebStore | None = None,
        batcher: Batcher | None = None,
        delivery_queue: DeliveryQueue | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.cloud_storage = cloud_storage
        self.batcher = batcher
        self.predict_fn = batcher.predict if batcher is not None else model.predict
        self.params = lime_params(settings)
        self.methods = settings.explanation_methods
        self.gradcam = explanations.gradcam_explainer(model, self.methods)
        self.outputs = RequestOutputs(cloud_storage, model.info.sha256)
        self.delivery = ResultDelivery(self.outputs, webhook)
        self.dicomweb = dicomweb if settings.dicom_objects else None
        self.staged = StagedResults(self.outputs, self.delivery, self.dicomweb)
        self.delivery_queue = delivery_queue
        # The pool's tasks of every request in flight: the preview's conversion (during decode),
        # the PNG compressions and writes (the renderings and one heat map per method) and the
        # DICOM objects' writes (up to four). No task waits on another, so a request's tasks can
        # only queue, never block each other.
        per_request = (
            1 + len(renderings.RENDERINGS) + len(explanations.HEATMAP_SUFFIXES) + len(result_objects.SUFFIXES)
        )
        self._pool = ThreadPoolExecutor(
            per_request * max(1, settings.concurrency), thread_name_prefix="outputs"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    @property
    def model_sha(self) -> str:
        return self.model.info.sha256

    # -- entry points --------------------------------------------------------------------
    def existing_result(self, request: InferenceRequest) -> StoredRecord | None:
        return self.outputs.stored_record(request)

    def is_done(self, request: InferenceRequest, stored: StoredRecord | None) -> bool:
        """Nothing left to do: this generation's result with this model is stored and Django
        accepted it. A stored but undelivered result is not done: processing re-sends it."""
        return bool(
            stored
            and stored.delivered_at
            and result.same_work(stored.record, request.uri, request.generation, self.model_sha)
        )

    def process(
        self,
        request: InferenceRequest,
        delivery_attempt: int | None = None,
        *,
        stored: StoredRecord | None | _NotRead = NOT_READ,
        hand_off: bool = True,
        give_up: bool = True,
    ) -> ProcessResult:
        """``stored``: the record :meth:`existing_result` returned, when the caller already read it.
        ``hand_off`` False and ``give_up``
        False: the delivery subscription's own push, which waits for the downstream as long as
        it takes (docs/contracts.md, "Delivery after a downstream outage")."""
        try:
            done = self._process(request, self.existing_result(request) if stored is NOT_READ else stored)
        except StoreUnavailable as exc:  # the result is staged (or recomputable): a downstream is down
            if not (hand_off and self.delivery_queue):
                return self._transient(request, exc, delivery_attempt, give_up)
            done = ProcessResult(RequestOutcome.RETRY, error_code="dicomweb_unavailable")
        except Exception as exc:  # noqa: BLE001 - storage, model/GPU, memory, I/O: transient
            return self._transient(request, exc, delivery_attempt, give_up)
        if done.outcome is RequestOutcome.RETRY and done.error_code in DOWNSTREAM_UNAVAILABLE and hand_off:
            return self._hand_off(request, done)
        return done

    def _hand_off(self, request: InferenceRequest, waiting: ProcessResult) -> ProcessResult:
        """A durable result whose downstream is down goes to the delivery subscription, so the
        inference message is acknowledged instead of exhausting its retries."""
        if self.delivery_queue is None:
            return waiting  # no delivery topic configured: the inference message waits, as it did
        try:
            self.delivery_queue.publish(request, str(waiting.error_code))
        except Exception:  # noqa: BLE001 - Pub/Sub unreachable: the inference message stays
            logger.exception("cannot publish the delivery message; the message will be redelivered")
            return waiting
        log(logger, logging.INFO, "downstream unavailable; delivery handed off", reason=waiting.error_code)
        return ProcessResult(
            RequestOutcome.HANDED_OFF, error_code=waiting.error_code, timings_ms=waiting.timings_ms
        )

    def _transient(
        self,
        request: InferenceRequest,
        exc: Exception,
        delivery_attempt: int | None,
        give_up: bool,
    ) -> ProcessResult:
        detail = f"{type(exc).__name__}: {exc}"
        if not (give_up and gives_up(delivery_attempt, self.settings.give_up_attempt)):
            logger.exception("processing failed; the message will be redelivered")
            return ProcessResult(RequestOutcome.RETRY, error_code="transient")
        logger.exception(
            "processing failed at the last useful delivery; recording retries_exhausted",
            extra={"fields": {"delivery_attempt": delivery_attempt}},
        )
        try:
            return self._fail(
                request,
                PermanentFailure(
                    "retries_exhausted",
                    f"still failing at delivery attempt {delivery_attempt}: {detail}",
                ),
                StageTimer(),
            )
        except Exception:  # noqa: BLE001 - even the record cannot be stored: redeliver
            logger.exception("cannot record retries_exhausted; the message will be redelivered")
            return ProcessResult(RequestOutcome.RETRY, error_code="transient")

    # -- the pipeline --------------------------------------------------------------------
    def _process(self, request: InferenceRequest, existing: StoredRecord | None) -> ProcessResult:
        timer = StageTimer()
        if existing is not None:
            if result.same_work(existing.record, request.uri, request.generation, self.model_sha):
                return self.delivery.redeliver(request, existing, RequestOutcome.DUPLICATE, timer)
            stored_gen = result.record_generation(existing.record)
            if stored_gen is not None and stored_gen > int(request.generation):
                log(logger, logging.INFO, "a newer generation's result is stored; skipping",
                    stored_generation=str(stored_gen))  # fmt: skip
                return ProcessResult(RequestOutcome.SUPERSEDED, timings_ms=timer.ms)
        try:
            resumed = self.staged.resume(request, timer)  # the store was down: no recompute
            return resumed if resumed is not None else self._run(request, timer)
        except StoreRejected as exc:
            return self._fail(request, PermanentFailure(exc.code, str(exc)), timer)
        except PermanentFailure as failure:
            return self._fail(request, failure, timer)

    def _run(self, request: InferenceRequest, timer: StageTimer) -> ProcessResult:
        decoded = self._decode(self._download(request, timer), timer)
        ds = decoded.dataset
        header = result.merge_header(request.dicom, result.header_from_dataset(ds))

        inference = self._infer(decoded, timer)

        heatmaps = [
            (explanations.HEATMAP_SUFFIXES[method], inference.weights(method)) for method in inference.methods
        ]
        drawn = renderings.render_arrays(
            ds,
            decoded.preview,
            decoded.display,
            inference.explanation.mask,
            heatmaps,
            self.settings.render_max_side,
            timer,
        )
        writes = renderings.start_writes(self._pool, self.outputs, request, ds, drawn, timer)
        dicom = None
        try:  # the PNGs are written while the DICOM objects are built
            if self.settings.dicom_objects:  # SEG + SR, stored before any record claims them
                with timer.stage("dicom"):
                    try:
                        dicom = self._write_dicom(request, ds, inference, decoded.image)
                    except result_objects.Superseded:
                        return ProcessResult(RequestOutcome.SUPERSEDED, timings_ms=timer.ms)
                    except OutputConflict as exc:
                        raise PermanentFailure(exc.code, str(exc), ds) from exc
        finally:
            superseded = writes.wait()  # a PNG's failure first, as when the PNGs came first
        if superseded is not None:
            return superseded

        with permanent_unless_transient("record_failed", ds):
            record = self._completed_record(
                request, header, inference, decoded.image, timer, dicom.section if dicom else None
            )
        try:  # STOW-RS, then the record; a store that is down finds the record staged next time
            return self.staged.store_and_commit(request, record, dicom.datasets if dicom else [], timer)
        except StoreRejected as exc:
            raise PermanentFailure(exc.code, str(exc), ds) from exc

    def _infer(self, decoded: _Decoded, timer: StageTimer) -> Inference:
        """The model calls of one request (prediction and LIME); model/GPU errors propagate: transient."""
        with self.batcher.caller() if self.batcher is not None else contextlib.nullcontext():
            inference = infer(
                self.predict_fn,
                decoded.preview,
                decoded.model_input,
                self.params,
                timer,
                self.methods,
                self.gradcam,
            )
        log(logger, logging.INFO, "model and explanation computed",
            predict_ms=timer.ms.get("predict"), explain_ms=timer.ms.get("explain"))  # fmt: skip
        return inference

    def _download(self, request: InferenceRequest, timer: StageTimer) -> bytes:
        with timer.stage("download"):
            try:
                return self.cloud_storage.fetch_source(
                    request.bucket, request.name, request.generation, self.settings.max_object_bytes
                )
            except SourceUnavailable as exc:
                raise PermanentFailure(exc.code, exc.message) from exc

    def _decode(self, data: bytes, timer: StageTimer) -> _Decoded:
        """The pixel budget is checked from the header, before any pixel is decoded."""
        with timer.stage("decode"):
            with permanent_unless_transient("decode_failed"):
                ds = read_dicom(data)
            pixels = pixel_count(ds)
            if pixels is not None and pixels > self.settings.max_pixels:
                raise PermanentFailure(
                    "image_too_large",
                    f"rows x columns x frames = {pixels}, above the limit of {self.settings.max_pixels}",
                    ds,
                )
            with permanent_unless_transient("decode_failed", ds):
                image = decode(ds)
                # The 8-bit image and its display copy on an output thread, beside the model
                # input's resize: each is a pass in C that releases the GIL (numpy, Pillow).
                run = contextvars.copy_context().run  # the request's logs and trace, on that thread
                shown = self._pool.submit(run, _preview_and_display, image, self.settings.render_max_side)
                info = self.model.info
                try:
                    model_input = to_model_input(image, info.input_size, info.channels)
                finally:
                    wait([shown])  # settled before anything is raised; the resize's error first
                preview, display = shown.result()
                return _Decoded(ds, image, preview, display, model_input)

    def _completed_record(
        self,
        request: InferenceRequest,
        header: dict[str, Any],
        inference: Inference,
        decoded: DecodedImage,
        timer: StageTimer,
        dicom: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        expl, preview = inference.explanation, inference.preview

        def uri(suffix: str) -> str:
            return self.outputs.location(request, suffix).uri

        return self._record(
            request,
            result.COMPLETED,
            header,
            timer,
            prediction=result.prediction_fields(inference.probs, self.model.info.labels),
            image_uri=self.outputs.location(request, naming.PREVIEW_SUFFIX).uri,
            explanation=explanations.gradcam_first_explanation(expl, uri)
            if inference.methods[0] == "gradcam"
            else {
                "method": "lime",
                "mask_uri": self.outputs.location(request, naming.MASK_SUFFIX).uri,
                "overlay_uri": self.outputs.location(request, naming.OVERLAY_SUFFIX).uri,
                **result.explanation_quality(expl, self.outputs.location(request, naming.HEATMAP_SUFFIX).uri),
                "parameters": expl.params,
                "top_segments": expl.top_segments,
                "weights": {str(s): round(expl.weights[s], 6) for s in expl.top_segments},
                "intercept": round(expl.intercept, 6),
                "local_score": round(expl.local_score, 6),
                "label_index": expl.label_index,
            },
            explanations=explanations.entries(inference, uri, dicom),
            image={
                "rows": int(preview.shape[0]),
                "columns": int(preview.shape[1]),
                "frame_index": int(decoded.frame_index),
                "n_frames": int(decoded.n_frames),
                "photometric": decoded.photometric,
            },
            dicom=dicom,
        )

    def _write_dicom(
        self, request: InferenceRequest, ds: Any, inference: Inference, decoded: DecodedImage
    ) -> result_objects.WrittenObjects:
        return result_objects.write_result_objects(
            source=ds,
            explanation=inference.explanation,
            probs=inference.probs,
            model=self.model.info,
            dedup_key=request.object_key,
            frame_index=int(decoded.frame_index),
            write=lambda suffix, role, data, ctype: self.outputs.write(request, suffix, role, data, ctype),
            uri=lambda suffix: self.outputs.location(request, suffix).uri,
            dicomweb_url=self.dicomweb.url if self.dicomweb else None,
            correlation_id=request.correlation_id,
            gradcam=inference.gradcam,
            lime=inference.lime,
            methods=inference.methods,
            pool=self._pool,
        )

    def _record(
        self, request: InferenceRequest, status: str, header: dict[str, Any], timer: StageTimer, **fields: Any
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

    def _fail(self, request: InferenceRequest, failure: PermanentFailure, timer: StageTimer) -> ProcessResult:
        """A permanent failure: record it and tell Django, so nothing is silently dropped."""
        log(logger, logging.WARNING, "permanent failure", error_code=failure.code)
        ds = failure.dataset
        header = result.merge_header(
            request.dicom, result.header_from_dataset(ds) if ds is not None else None
        )
        error = {"code": failure.code, "message": failure.message}
        record = self._record(request, result.FAILED, header, timer, error=error)
        return self.delivery.commit(request, record, RequestOutcome.FAILED, timer)
