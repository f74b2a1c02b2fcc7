"""The review component in the local stack (docs/contracts.md, "Review of a result"): its topic
names, how it is started and the push relay's route to it. Django publishes dicom-review/1 to
``REVIEW_TOPIC``; the relay pushes each message to ``POST /review`` of the component (the service's
code, ``gpu_service.review_app``, its own process as in production) every 1 s to 5 s, and
dead-letters it after 100 attempts (about 8 minutes of a DICOMweb store outage) to a topic whose
hold subscription keeps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infra.local import viewer

TOPIC = "dicom-reviews"
SUBSCRIPTION = "dicom-review-push"
DEAD_LETTER_TOPIC = "dicom-review-dead-letter"
DEAD_LETTER_SUBSCRIPTION = "dicom-review-dead-letter-hold"
BACKOFF_S = (1, 5)
MAX_DELIVERY_ATTEMPTS = 100
NAME = "review-component"
HEALTH_PATH = "/readyz"


def topic_path(project: str) -> str:
    """What Django's ``DICOM_RESULTS_REVIEW_TOPIC`` is set to (``REVIEW_TOPIC_PATH``)."""
    return f"projects/{project}/topics/{TOPIC}"


def command(bin_dir: Path, host: str, port: int) -> list[str]:
    return [
        str(bin_dir / "gunicorn"), "-c", "gpu_service/gunicorn.conf.py", "--no-control-socket",
        "--bind", f"{host}:{port}", "gpu_service.review_app:create_app()",
    ]  # fmt: skip


def env(port: int, webhook_base_url: str) -> dict[str, str]:
    """As the Terraform review service: Django's review webhook (the stack adds the secret and
    ``DICOMWEB_URL``, Orthanc's)."""
    return {
        "PORT": str(port), "LOG_LEVEL": "INFO", "CONCURRENCY": "4",
        "WEBHOOK_URL": webhook_base_url + viewer.REVIEW_WEBHOOK_PATH,
        "WEBHOOK_MAX_ATTEMPTS": "2", "WEBHOOK_BACKOFF_BASE_S": "0.2",
    }  # fmt: skip


def relay_route(project: str, base_url: str) -> dict[str, Any]:
    return {
        "subscription": f"projects/{project}/subscriptions/{SUBSCRIPTION}",
        "endpoint": base_url + "/review",
        "min_backoff_s": BACKOFF_S[0],
        "max_backoff_s": BACKOFF_S[1],
        "max_attempts": MAX_DELIVERY_ATTEMPTS,
        "dead_letter_topic": f"projects/{project}/topics/{DEAD_LETTER_TOPIC}",
        "timeout_s": 120,
    }
