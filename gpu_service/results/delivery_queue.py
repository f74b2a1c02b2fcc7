"""The delivery topic (``DELIVERY_TOPIC``): one ``dicom-delivery/1`` message per result whose
delivery waits on a downstream that is down. Publishing is the last step before the inference
push is acknowledged, so it blocks until Pub/Sub has the message (docs/contracts.md, "Delivery
after a downstream outage").
"""

from __future__ import annotations

import json

from gpu_service.request import InferenceRequest
from pipeline_common import contract, tracing


def delivery_message(request: InferenceRequest, reason: str) -> tuple[bytes, dict[str, str]]:
    body = {
        "schema": contract.DELIVERY,
        "correlation_id": request.correlation_id,
        "reason": reason,
        "source": {"bucket": request.bucket, "name": request.name, "generation": request.generation},
    }
    if request.event_time:  # the upload's time, so the delivery's latency is measured from it
        body["event_time"] = request.event_time
    attributes = {"schema": contract.DELIVERY, "correlation_id": request.correlation_id, "reason": reason}
    tracing.inject_attributes(attributes)  # the /deliver push continues this upload's trace
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), attributes


class DeliveryQueue:
    def __init__(self, project: str | None, topic: str, timeout_s: float = 30.0) -> None:
        from google.cloud import pubsub_v1

        self.client = pubsub_v1.PublisherClient()
        self.topic = topic if topic.startswith("projects/") else self.client.topic_path(project or "", topic)
        self.timeout_s = timeout_s

    def publish(self, request: InferenceRequest, reason: str) -> str:
        """The message id; raises when Pub/Sub did not take it (the caller answers 503)."""
        data, attributes = delivery_message(request, reason)
        return self.client.publish(self.topic, data, **attributes).result(timeout=self.timeout_s)
