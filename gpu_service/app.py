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
from typing import Any

from flask import Flask, Response, jsonify, request

from gpu_service import dicom_objects
from gpu_service.auth import AuthError, PushAuthenticator
from gpu_service.batcher import Batcher
from gpu_service.model import LoadedModel, load_model
from gpu_service.processing import Outcome, Processor, ack_status
from gpu_service.push import MessageError, parse_envelope, parse_request
from gpu_service.settings import Settings
from gpu_service.storage import GcsStore
from gpu_service.webhook import WebhookClient
from pipeline_common import jsonlog
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


def make_webhook(settings: Settings) -> WebhookClient:
    return WebhookClient(
        settings.webhook_url,
        settings.webhook_secret,
        timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts,
        backoff_base_s=settings.webhook_backoff_base_s,
        backoff_max_s=settings.webhook_backoff_max_s,
    )


def make_store(settings: Settings) -> GcsStore:
    return GcsStore(settings.project, settings.output_bucket, settings.output_prefix)


class Service:
    """The process-wide state: model, batcher, processor, and whether they are ready."""

    def __init__(
        self,
        settings: Settings,
        model: LoadedModel | None = None,
        store: GcsStore | None = None,
        webhook: WebhookClient | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or make_store(settings)
        self.webhook = webhook or make_webhook(settings)
        self.model = model
        self.batcher: Batcher | None = None
        self.processor: Processor | None = None
        self.error: str | None = None
        self.ready = threading.Event()
        self.project = _project(settings)
        self.authenticator = (
            PushAuthenticator(settings.push_audience, settings.push_service_account, settings.push_certs_url)
            if settings.push_audience
            else None
        )

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
                self.model = load_model(self.settings.model_uri, max_batch_size=self.settings.batch_max_size)
            self.model.warmup()
            if self.settings.dicom_objects:
                dicom_objects.warmup()
            if self.settings.batching:
                self.batcher = Batcher(
                    self.model.predict, self.settings.batch_max_size, self.settings.batch_max_wait_ms
                )
            self.processor = Processor(self.settings, self.model, self.store, self.webhook, self.batcher)
            info = self.model.info
            log(logger, logging.INFO, "model ready", model_name=info.name, model_version=info.version,
                model_sha256=info.sha256, batching=self.settings.batching)  # fmt: skip
            self.ready.set()
        except Exception as exc:  # noqa: BLE001 - reported by /readyz, which keeps the instance out
            self.error = f"{type(exc).__name__}: {exc}"
            logger.critical("model failed to load", exc_info=True)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def create_app(
    settings: Settings | None = None,
    model: LoadedModel | None = None,
    store: GcsStore | None = None,
    webhook: WebhookClient | None = None,
) -> Flask:
    """WSGI app factory (``gunicorn 'gpu_service.app:create_app()'``); tests pass a loaded model."""
    settings = settings or Settings.from_env()
    jsonlog.setup(settings.log_level)
    service = Service(settings, model, store, webhook)
    if service.authenticator is None:
        log(logger, logging.WARNING, "push authentication is off (PUSH_AUDIENCE unset)")
    elif not settings.push_service_account:
        log(
            logger,
            logging.WARNING,
            "PUSH_SERVICE_ACCOUNT unset: any Google identity with the audience is accepted",
        )
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
        return _handle_push(service)

    return app


def _handle_push(service: Service) -> tuple[Response, int]:
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
            req = parse_request(message)
        except MessageError as exc:
            # Not acknowledged: Pub/Sub retries, then dead-letters it (see processing's docstring).
            log(logger, logging.ERROR, "unprocessable push message", reason=str(exc),
                message_id=_message_id(), outcome=Outcome.INVALID.value)  # fmt: skip
            return jsonify(outcome=Outcome.INVALID.value, error=str(exc)), ack_status(Outcome.INVALID)
        with jsonlog.bind(
            correlation_id=req.correlation_id,
            bucket=req.bucket,
            object=req.name,
            generation=req.generation,
            message_id=message.message_id,
            delivery_attempt=message.delivery_attempt,
        ):
            if not service.ready.wait(settings.ready_wait_s if not service.error else 0):
                log(logger, logging.WARNING, "model not ready; asking for redelivery", error=service.error)
                return jsonify(outcome=Outcome.NOT_READY.value), ack_status(Outcome.NOT_READY)
            assert service.processor is not None
            result = service.processor.process(req, message.delivery_attempt)
            body: dict[str, Any] = {"outcome": result.outcome.value, "correlation_id": req.correlation_id}
            if result.error_code:
                body["error_code"] = result.error_code
            return jsonify(body), result.http_status


def _message_id() -> str | None:
    envelope = request.get_json(silent=True, force=True)
    if isinstance(envelope, dict) and isinstance(envelope.get("message"), dict):
        return envelope["message"].get("messageId")
    return None
