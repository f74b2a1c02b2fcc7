"""The local stack's topology: topic and subscription names (as in production,
infra/terraform: one place for the stack, the demo and the tests), the push relay's routes with
the retry budgets of each push subscription, and the addresses a shell needs (``stack.env``).
"""

from __future__ import annotations

from typing import Any

from infra.local import orthanc, viewer
from infra.local import review_component as review
from infra.local.emulators import LOOPBACK, FakeGcsServer, gcloud_storage_env
from infra.local.stack_config import StackConfig

# Names, as in production (infra/terraform): one place for the stack, the demo and the tests.
NOTIFY_TOPIC = "gcs-object-notifications"
NOTIFY_SUBSCRIPTION = "eventarc-ingest-dicom"
NOTIFY_DEAD_LETTER_TOPIC = "eventarc-ingest-dicom-dead-letter"
NOTIFY_ACK_DEADLINE_S = 60
NOTIFY_MAX_DELIVERY_ATTEMPTS = 10
# The bridge answers each push within the ack deadline: a delivery still running when the
# deadline passes would be pushed again while the first one is in flight.
BRIDGE_TIMEOUT_S = NOTIFY_ACK_DEADLINE_S - 15
INFERENCE_TOPIC = "dicom-inference-requests"
INFERENCE_SUBSCRIPTION = "dicom-inference-push"
DEAD_LETTER_TOPIC = "dicom-inference-dead-letter"
DEAD_LETTER_SUBSCRIPTION = "dicom-inference-dead-letter-hold"
# The service's three push subscriptions are pulled and pushed by the push relay
# (infra/local/push_relay.py), which gives every push its deliveryAttempt, honours the backoff
# and dead-letters as Pub/Sub does. The inference subscription's budget is production's,
# compressed: 5 attempts, backoff 2 s to 20 s (about 30 s), then the dead-letter topic.
INFERENCE_MAX_DELIVERY_ATTEMPTS = 5
INFERENCE_BACKOFF_S = (2, 20)
# Results whose downstream (Orthanc, Django) is down wait here, retried every 1 s to 5 s for as long
# as it takes: no dead-letter policy (docs/contracts.md, "Delivery after a downstream outage").
DELIVERY_TOPIC = "dicom-delivery"
DELIVERY_SUBSCRIPTION = "dicom-delivery-push"
DELIVERY_BACKOFF_S = (1, 5)
# Every dead letter is recorded by the service (STEM.dead-letter.json, an ERROR line) and kept on
# the hold subscription for the replay; `make status` counts what is held.
DEAD_LETTER_RECORDER = "dicom-inference-dead-letter-record"


def relay_routes(project: str, service_url: str, review_url: str) -> list[dict[str, Any]]:
    """What the push relay (infra/local/push_relay.py) pulls and where it pushes each message."""
    sub, topic = f"projects/{project}/subscriptions/", f"projects/{project}/topics/"
    return [
        {
            "subscription": sub + INFERENCE_SUBSCRIPTION,
            "endpoint": service_url + "/",
            "min_backoff_s": INFERENCE_BACKOFF_S[0],
            "max_backoff_s": INFERENCE_BACKOFF_S[1],
            "max_attempts": INFERENCE_MAX_DELIVERY_ATTEMPTS,
            "dead_letter_topic": topic + DEAD_LETTER_TOPIC,
        },
        {
            "subscription": sub + DELIVERY_SUBSCRIPTION,
            "endpoint": service_url + "/deliver",
            "min_backoff_s": DELIVERY_BACKOFF_S[0],
            "max_backoff_s": DELIVERY_BACKOFF_S[1],
        },
        {"subscription": sub + DEAD_LETTER_RECORDER, "endpoint": service_url + "/dead-letter"},
        review.relay_route(project, review_url),
    ]


def stack_env(c: StackConfig) -> dict[str, str]:
    """What a shell (``source .local/stack.env``), the demo and the tests need."""
    gcs = FakeGcsServer(http_port=c.ports.gcs, https_port=c.ports.gcs_https)
    env = {
        "GOOGLE_CLOUD_PROJECT": c.project,
        "PUBSUB_EMULATOR_HOST": f"{LOOPBACK}:{c.ports.pubsub}",
        "STORAGE_EMULATOR_HOST": gcs.endpoint,
        "UPLOAD_BUCKET": c.bucket,
        "INFERENCE_TOPIC": INFERENCE_TOPIC,
        "INFERENCE_SUBSCRIPTION": INFERENCE_SUBSCRIPTION,
        "DEAD_LETTER_SUBSCRIPTION": DEAD_LETTER_SUBSCRIPTION,
        "NOTIFY_TOPIC": NOTIFY_TOPIC,
        "WEBHOOK_LOG": str(c.webhook_log),
        "WEBHOOK_ATTEMPTS_LOG": str(c.webhook_log.with_suffix(".attempts.jsonl")),
        "WEBHOOK_URL": c.url("webhook") + viewer.WEBHOOK_PATH,
        "WEBHOOK_CONTROL_URL": c.url("webhook") + viewer.CONTROL_PATH,
        **viewer.stack_env(c.url("webhook"), c.viewer_password),
        "WEBHOOK_SECRET": c.webhook_secret,
        "REVIEW_TOPIC_PATH": review.topic_path(c.project),
        "REVIEW_URL": c.url("review"),
        "SERVICE_URL": c.url("service"),
        "FUNCTION_URL": c.url("function"),
        "BRIDGE_URL": c.url("bridge"),
        **orthanc.urls(c.url("orthanc")),
        "LOCAL_LOG_DIR": str(c.log_dir),
        # Each process appends its spans to one file (no collector to start or lose).
        "TRACE_EXPORTER": "file",
        "TRACE_FILE": str(c.trace_file),
        **gcloud_storage_env(gcs),
        "CLOUDSDK_CORE_PROJECT": c.project,
        # A gcloud configuration of its own: the user's accounts and settings stay out of it.
        "CLOUDSDK_CONFIG": str(c.root / "gcloud"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "BOTO_CONFIG": str(c.root / "boto.cfg"),
    }
    if c.ohif_dist is not None:
        env["OHIF_URL"] = c.url("ohif")
    return env
