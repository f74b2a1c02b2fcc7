"""Cloud Run function entry point: ``ingest_dicom`` for ``google.cloud.storage.object.v1.finalized``.

Deploy this folder alone (``gcloud functions deploy --source functions/ --entry-point
ingest_dicom``); it needs only ``pipeline_common`` and ``dicom_ingest`` beside it.
"""

from __future__ import annotations

import os
import threading

import functions_framework
from cloudevents.http import CloudEvent
from google.cloud import pubsub_v1, storage

from dicom_ingest import handler, publisher
from dicom_ingest.settings import Settings
from pipeline_common import jsonlog, tracing

jsonlog.setup()  # also keeps pydicom's logs and warnings (element values: patient data) out
tracing.setup(
    tracing.TraceSettings.from_env(os.environ), "ingest-function", os.environ.get("GOOGLE_CLOUD_PROJECT")
)

_lock = threading.Lock()
_storage: storage.Client | None = None
_publisher: pubsub_v1.PublisherClient | None = None


def _clients(settings: Settings) -> tuple[storage.Client, pubsub_v1.PublisherClient]:
    """Created on first use, then shared by every event this instance serves."""
    global _storage, _publisher
    with _lock:
        if _storage is None:
            _storage = storage.Client(project=settings.project or None)
        if _publisher is None:
            _publisher = publisher.make_client()
        return _storage, _publisher


@functions_framework.cloud_event
def ingest_dicom(event: CloudEvent) -> None:
    settings = Settings.from_env()
    storage_client, publisher_client = _clients(settings)
    # Spans are exported in the background, never flushed here: a flush would add Cloud Trace's
    # round trip (or, with the exporter down, its timeout) to every event. With the CPU throttled
    # between events, a batch goes out during the next event or at shutdown (SIGTERM).
    handler.handle(event, settings, storage_client, publisher_client)
