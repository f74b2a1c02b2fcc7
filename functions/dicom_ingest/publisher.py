"""Publishing inference requests to Pub/Sub (adapter)."""

from __future__ import annotations

from google.cloud import pubsub_v1


def make_client() -> pubsub_v1.PublisherClient:
    """One client per process: it holds a gRPC channel and a batching thread.

    One event publishes one message and waits for it, so batching would only add
    latency: send each message at once.
    """
    return pubsub_v1.PublisherClient(batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))


def publish(
    client: pubsub_v1.PublisherClient,
    topic_path: str,
    body: bytes,
    attributes: dict[str, str],
    timeout_s: float,
) -> str:
    """Publish and wait for the server's message id; any failure raises (the event is retried)."""
    future = client.publish(topic_path, body, **attributes)
    return future.result(timeout=timeout_s)
