"""Every adapter of the service built from settings, and the processor over them: the one place
the Flask app and the Cloud Run job share. Nothing below this module builds an adapter."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gpu_service.dicom import objects as dicom_objects
from gpu_service.dicom.dicomweb_store import DicomWebStore
from gpu_service.inference.batcher import Batcher
from gpu_service.inference.model import LoadedModel, load_model
from gpu_service.pipeline.processing import Processor
from gpu_service.results.cloud_storage import GcsStore
from gpu_service.results.delivery_queue import DeliveryQueue
from gpu_service.results.webhook import WebhookClient
from gpu_service.settings import Settings
from gpu_service.transport.model_download import download_model
from gpu_service.transport.oidc import PushAuthenticator
from pipeline_common.jsonlog import log

logger = logging.getLogger(__name__)


def make_push_authenticator(settings: Settings) -> PushAuthenticator | None:
    """The push endpoints' OIDC check, or None without ``PUSH_AUDIENCE``; either way one start-up
    line says when pushes are not (fully) authenticated. Shared by the service and the review
    component, which take the same pushes."""
    if not settings.push_audience:
        log(logger, logging.WARNING, "push authentication is off (PUSH_AUDIENCE unset)")
        return None
    if not settings.push_service_account:
        log(
            logger,
            logging.WARNING,
            "PUSH_SERVICE_ACCOUNT unset: any Google identity with the audience is accepted",
        )
    return PushAuthenticator(settings.push_audience, settings.push_service_account, settings.push_certs_url)


def make_webhook(settings: Settings) -> WebhookClient:
    return WebhookClient(
        settings.webhook_url,
        settings.webhook_secret,
        timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts,
        backoff_base_s=settings.webhook_backoff_base_s,
        backoff_max_s=settings.webhook_backoff_max_s,
    )


def make_cloud_storage(settings: Settings) -> GcsStore:
    return GcsStore(settings.project, settings.output_bucket, settings.output_prefix)


def make_dicomweb_store(settings: Settings) -> DicomWebStore | None:
    """None when results are not stored as DICOM objects, or no store is configured."""
    if not (settings.dicom_objects and settings.dicomweb_url):
        return None
    return DicomWebStore(settings.dicomweb_url, settings.dicomweb_auth, settings.dicomweb_timeout_s)


def make_delivery_queue(settings: Settings) -> DeliveryQueue | None:
    return DeliveryQueue(settings.project, settings.delivery_topic) if settings.delivery_topic else None


def load_warm_model(settings: Settings) -> LoadedModel:
    model = load_model(settings.model_uri, max_batch_size=settings.batch_max_size, fetch=download_model)
    model.warmup()
    return model


@dataclass(frozen=True)
class Wired:
    processor: Processor
    batcher: Batcher | None  # shared by every thread that calls the processor; close it last

    def close(self) -> None:
        self.processor.close()
        if self.batcher is not None:
            self.batcher.close()


def build_processor(
    settings: Settings,
    model: LoadedModel,
    cloud_storage: GcsStore | None = None,
    webhook: WebhookClient | None = None,
    *,
    batching: bool = True,
) -> Wired:
    """``batching`` False: a single caller, for which a batcher only adds its wait."""
    if settings.dicom_objects:
        dicom_objects.warmup()  # highdicom's first build costs about 0.3 s: not on a request
    batcher = None
    if settings.batching and batching:
        batcher = Batcher(model.predict, settings.batch_max_size, settings.batch_max_wait_ms)
    processor = Processor(
        settings,
        model,
        cloud_storage or make_cloud_storage(settings),
        webhook or make_webhook(settings),
        make_dicomweb_store(settings),
        batcher,
        make_delivery_queue(settings),
    )
    return Wired(processor, batcher)
