"""A processor built from settings: the one place the Flask app and the Cloud Run job share."""

from __future__ import annotations

from dataclasses import dataclass

from gpu_service import dicom_objects
from gpu_service.batcher import Batcher
from gpu_service.model import LoadedModel, load_model
from gpu_service.processing import Processor
from gpu_service.settings import Settings
from gpu_service.storage import GcsStore
from gpu_service.webhook import WebhookClient


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


def load_warm_model(settings: Settings) -> LoadedModel:
    model = load_model(settings.model_uri, max_batch_size=settings.batch_max_size)
    model.warmup()
    return model


@dataclass(frozen=True)
class Wired:
    processor: Processor
    batcher: Batcher | None  # shared by every thread that calls the processor; close it last

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def build_processor(
    settings: Settings,
    model: LoadedModel,
    store: GcsStore | None = None,
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
        settings, model, store or make_store(settings), webhook or make_webhook(settings), batcher
    )
    return Wired(processor, batcher)
