"""The review component: a CPU Cloud Run service (the gpu_service image, another entrypoint, no
model) that makes each ``dicom-review/1`` decision into DICOM (:mod:`gpu_service.pipeline.review`).

``gunicorn 'gpu_service.review_app:create_app()'``; routes: ``POST /review`` (the push
subscription), ``/healthz``, ``/readyz``. Settings are the service's (:class:`Settings`):
``WEBHOOK_URL`` is Django's review webhook, ``DICOMWEB_URL`` the store, ``PUSH_AUDIENCE`` the
push authentication, ``OUTPUT_BUCKET`` / ``OUTPUT_PREFIX`` where the outputs are.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request

from gpu_service.dicom.dicomweb_store import DicomWebStore
from gpu_service.outcome import RequestOutcome, ack_status
from gpu_service.pipeline.review import ReviewProcessor
from gpu_service.pipeline.review_message import parse_review
from gpu_service.results.cloud_storage import GcsStore
from gpu_service.results.review_outputs import ReviewOutputs
from gpu_service.results.webhook import WebhookClient
from gpu_service.settings import Settings
from gpu_service.transport.oidc import AuthError
from gpu_service.transport.push import MessageError, parse_envelope
from gpu_service.wiring import make_cloud_storage, make_dicomweb_store, make_push_authenticator, make_webhook
from pipeline_common import jsonlog
from pipeline_common.jsonlog import log

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    cloud_storage: GcsStore | None = None,
    webhook: WebhookClient | None = None,
    store: DicomWebStore | None = None,
) -> Flask:
    settings = settings or Settings.from_env()
    jsonlog.setup(settings.log_level)
    authenticator = make_push_authenticator(settings)
    if not settings.webhook_url:
        log(logger, logging.WARNING, "webhook disabled (WEBHOOK_URL unset): receipts are not sent")
    processor = ReviewProcessor(
        ReviewOutputs(cloud_storage or make_cloud_storage(settings)),
        webhook or make_webhook(settings),
        store if store is not None else make_dicomweb_store(settings),
        settings.max_object_bytes,
    )
    app = Flask(__name__)
    app.extensions["review_processor"] = processor

    @app.get("/healthz")
    @app.get("/readyz")
    def healthz() -> tuple[Response, int]:
        return jsonify(status="ok"), 200

    @app.post("/review")
    def review() -> tuple[Response, int]:
        if authenticator is not None:
            try:
                authenticator.verify(request.headers.get("Authorization"))
            except AuthError as exc:
                log(logger, logging.WARNING, "push request refused", status=exc.status, reason=exc.reason)
                return jsonify(error=exc.reason), exc.status
        try:
            message = parse_envelope(request.get_json(silent=True, force=True))
            review = parse_review(message)
        except MessageError as exc:
            # Not acknowledged: Pub/Sub retries, then dead-letters it for people to read.
            log(logger, logging.ERROR, "unprocessable review message", reason=str(exc))
            return jsonify(outcome=RequestOutcome.INVALID.value, error=str(exc)), ack_status(
                RequestOutcome.INVALID
            )
        fields = {"review_id": review.assessment.review_id, "correlation_id": review.result.correlation_id,
                  "message_id": message.message_id, "delivery_attempt": message.delivery_attempt}  # fmt: skip
        with jsonlog.bind(**fields):
            try:
                result = processor.process(review)
            except OSError as exc:  # the store, Cloud Storage or the network: another delivery can succeed
                log(logger, logging.WARNING, "review not stored yet; asking for redelivery",
                    error=type(exc).__name__, reason=str(exc)[:200])  # fmt: skip
                return jsonify(outcome=RequestOutcome.RETRY.value), ack_status(RequestOutcome.RETRY)
            except Exception as exc:  # noqa: BLE001 - e.g. google.api_core errors: transient too
                if type(exc).__module__.startswith("google."):
                    log(
                        logger,
                        logging.WARNING,
                        "review storage failed; asking for redelivery",
                        error=type(exc).__name__,
                    )
                    return jsonify(outcome=RequestOutcome.RETRY.value), ack_status(RequestOutcome.RETRY)
                raise
            body = {"outcome": result.outcome.value, "review_id": review.assessment.review_id}
            if result.error_code:
                body["error_code"] = result.error_code
            return jsonify(body), result.http_status

    return app
