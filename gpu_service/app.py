"""The Flask app Cloud Run serves: Pub/Sub push on ``POST /``, ``/healthz`` and ``/readyz``.

One model per process, loaded once (in a background thread, so ``/healthz`` answers at
once while ``/readyz`` waits for the model to be loaded and warmed) and shared by every
request thread through one batcher. gunicorn runs one worker with as many threads as
Cloud Run's concurrency (``gpu_service/gunicorn.conf.py``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request

from gpu_service.inference.batcher import Batcher
from gpu_service.inference.model import LoadedModel
from gpu_service.outcome import RequestOutcome, ack_status
from gpu_service.pipeline.dead_letters import record_dead_letter
from gpu_service.pipeline.processing import Processor
from gpu_service.request import InferenceRequest
from gpu_service.results.cloud_storage import GcsStore
from gpu_service.results.webhook import WebhookClient
from gpu_service.settings import Settings
from gpu_service.transport.oidc import AuthError
from gpu_service.transport.push import (
    MessageError,
    PubSubMessage,
    parse_delivery,
    parse_envelope,
    parse_request,
)
from gpu_service.wiring import (
    Wired,
    build_processor,
    load_warm_model,
    make_cloud_storage,
    make_push_authenticator,
    make_webhook,
)
from pipeline_common import jsonlog, tracing
from pipeline_common.jsonlog import log

logger = logging.getLogger(__name__)


def _project(settings: Settings) -> str | None:
    """Cloud Run does not set GOOGLE_CLOUD_PROJECT; the trace field needs the project id."""
    if settings.project or not os.environ.get("K_SERVICE"):
        return settings.project
    try:
        import google.auth

        return google.auth.default()[1]
    except Exception:  # noqa: BLE001 - logs lose their trace link, nothing else
        return None


class Service:
    """The process-wide state: model, batcher, processor, and whether they are ready."""

    def __init__(
        self,
        settings: Settings,
        model: LoadedModel | None = None,
        cloud_storage: GcsStore | None = None,
        webhook: WebhookClient | None = None,
    ) -> None:
        self.settings = settings
        self.cloud_storage = cloud_storage or make_cloud_storage(settings)
        self.webhook = webhook or make_webhook(settings)
        self.model = model
        self.wired: Wired | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self.project = _project(settings)
        self.authenticator = make_push_authenticator(settings)

    def start(self, background: bool = True) -> None:
        if background and self.model is None:
            threading.Thread(target=self._load, name="model-loader", daemon=True).start()
        else:
            self._load()

    def _load(self) -> None:
        try:
            if self.model is None:
                log(
                    logger, logging.INFO, "loading model", model_uri=self.settings.model_uri or "bundled demo"
                )
                self.model = load_warm_model(self.settings)
            else:
                self.model.warmup()
            self.wired = build_processor(self.settings, self.model, self.cloud_storage, self.webhook)
            info = self.model.info
            log(logger, logging.INFO, "model ready", model_name=info.name, model_version=info.version,
                model_sha256=info.sha256, batching=self.settings.batching)  # fmt: skip
            self.ready.set()
        except Exception as exc:  # noqa: BLE001 - reported by /readyz, which keeps the instance out
            self.error = f"{type(exc).__name__}: {exc}"
            logger.critical("model failed to load", exc_info=True)

    @property
    def processor(self) -> Processor | None:
        return self.wired.processor if self.wired is not None else None

    @property
    def batcher(self) -> Batcher | None:
        return self.wired.batcher if self.wired is not None else None

    def close(self) -> None:
        if self.wired is not None:
            self.wired.close()


def create_app(
    settings: Settings | None = None,
    model: LoadedModel | None = None,
    cloud_storage: GcsStore | None = None,
    webhook: WebhookClient | None = None,
) -> Flask:
    """WSGI app factory (``gunicorn 'gpu_service.app:create_app()'``); tests pass a loaded model."""
    settings = settings or Settings.from_env()
    jsonlog.setup(settings.log_level)
    tracing.setup(settings.tracing, "inference-service", _project(settings))
    service = Service(settings, model, cloud_storage, webhook)
    if not settings.webhook_url:
        log(logger, logging.WARNING, "webhook disabled (WEBHOOK_URL unset): results are only stored")
    service.start(background=model is None)

    app = Flask(__name__)
    app.extensions["gpu_service"] = service

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        return jsonify(status="ok"), 200

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        if service.ready.is_set():
            return jsonify(status="ready", model=service.model.info.as_record()), 200
        if service.error:
            return jsonify(status="failed", error=service.error), 503
        return jsonify(status="loading"), 503

    @app.post("/")
    def push() -> tuple[Response, int]:
        return _handle_push(service, parse_request, delivery=False)

    @app.post("/deliver")
    def deliver() -> tuple[Response, int]:
        """The delivery subscription: a durable result waits for its downstream (no hand-off, no
        giving up; docs/contracts.md, "Delivery after a downstream outage")."""
        return _handle_push(service, parse_delivery, delivery=True)

    @app.post("/dead-letter")
    def dead_letter() -> tuple[Response, int]:
        """The dead-letter topic's recorder: a record and an ERROR line per dead letter; the message
        itself stays on the hold subscription for the replay."""
        return _handle_dead_letter(service)

    return app


def _handle_push(
    service: Service, parse: Callable[[PubSubMessage], InferenceRequest], *, delivery: bool
) -> tuple[Response, int]:
    settings = service.settings
    trace_header = request.headers.get("X-Cloud-Trace-Context") or request.headers.get("traceparent")
    trace = jsonlog.trace_field(trace_header, service.project)
    with jsonlog.bind(**trace):
        if service.authenticator is not None:
            try:
                service.authenticator.verify(request.headers.get("Authorization"))
            except AuthError as exc:
                log(logger, logging.WARNING, "push request refused", status=exc.status, reason=exc.reason)
                return jsonify(error=exc.reason), exc.status
        try:
            message = parse_envelope(request.get_json(silent=True, force=True))
            req = parse(message)
        except MessageError as exc:
            # Not acknowledged: Pub/Sub retries, then dead-letters it (docs/contracts.md).
            log(logger, logging.ERROR, "unprocessable push message", reason=str(exc),
                message_id=_message_id(), outcome=RequestOutcome.INVALID.value)  # fmt: skip
            return jsonify(outcome=RequestOutcome.INVALID.value, error=str(exc)), ack_status(
                RequestOutcome.INVALID
            )
        attempt = message.delivery_attempt
        incoming = tracing.incoming_context(
            [(tracing.PUBSUB_ATTRIBUTE, tracing.pubsub_traceparent(message.attributes))]
        )
        with (
            jsonlog.bind_upload(req, message_id=message.message_id, delivery_attempt=attempt),
            tracing.root_span(
                "delivery" if delivery else "inference",
                incoming,
                correlation_id=req.correlation_id,
                **{"messaging.message.id": message.message_id, "delivery_attempt": attempt},
            ) as span,
        ):
            if not service.ready.wait(settings.ready_wait_s if not service.error else 0):
                log(logger, logging.WARNING, "model not ready; asking for redelivery", error=service.error)
                return jsonify(outcome=RequestOutcome.NOT_READY.value), ack_status(RequestOutcome.NOT_READY)
            assert service.processor is not None
            result = service.processor.process(
                req, message.delivery_attempt, hand_off=not delivery, give_up=not delivery
            )
            span.set_attribute("outcome", result.outcome.value)
            body: dict[str, Any] = {"outcome": result.outcome.value, "correlation_id": req.correlation_id}
            if result.error_code:
                body["error_code"] = result.error_code
            return jsonify(body), result.http_status


def _handle_dead_letter(service: Service) -> tuple[Response, int]:
    if service.authenticator is not None:
        try:
            service.authenticator.verify(request.headers.get("Authorization"))
        except AuthError as exc:
            return jsonify(error=exc.reason), exc.status
    try:
        message = parse_envelope(request.get_json(silent=True, force=True))
        req = parse_request(message)
    except MessageError as exc:  # kept on the hold subscription all the same: say so, and ack
        log(logger, logging.ERROR, "unreadable message dead-lettered; it stays on the hold subscription",
            message_id=_message_id(), reason=str(exc))  # fmt: skip
        return jsonify(outcome="recorded", error=str(exc)), 200
    if not service.ready.wait(service.settings.ready_wait_s if not service.error else 0):
        return jsonify(outcome=RequestOutcome.NOT_READY.value), ack_status(RequestOutcome.NOT_READY)
    assert service.processor is not None
    with jsonlog.bind_upload(req, message_id=message.message_id):
        try:
            record_dead_letter(
                service.processor.outputs, req, message.message_id, service.settings.dead_letter_subscription
            )
        except Exception:  # noqa: BLE001 - storage down: Pub/Sub pushes it again
            logger.exception("cannot record the dead letter; it will be pushed again")
            return jsonify(outcome=RequestOutcome.RETRY.value), ack_status(RequestOutcome.RETRY)
    return jsonify(outcome="recorded", correlation_id=req.correlation_id), 200


def _message_id() -> str | None:
    envelope = request.get_json(silent=True, force=True)
    if isinstance(envelope, dict) and isinstance(envelope.get("message"), dict):
        return envelope["message"].get("messageId")
    return None
