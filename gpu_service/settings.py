"""The inference service's settings, read once from the environment into one frozen object, so a
test builds the service with exactly the configuration it needs and nothing reads ``os.environ``
behind its back. Output names and the delivery-attempt policy: docs/contracts.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gpu_service.inference.explain import LimeParams
from gpu_service.inference.render import DEFAULT_MAX_SIDE
from gpu_service.results.webhook_signature import check_secret
from pipeline_common.contract import DEFAULT_MAX_PIXELS
from pipeline_common.env import read_bool, read_float, read_int, read_str
from pipeline_common.tracing import TraceSettings

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
EXPLANATION_METHODS = ("lime", "gradcam")


def _methods(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = read_str(env, "EXPLANATION_METHODS", "lime") or "lime"
    return tuple(m.strip().lower() for m in raw.split(",") if m.strip())


def _optional_float(env: Mapping[str, str], key: str) -> float | None:
    return read_float(env, key, 0.0) if env.get(key, "").strip() else None


@dataclass(frozen=True)
class Settings:
    project: str | None = None
    model_uri: str | None = None  # None: the bundled demo model
    # Webhook to the Django server; no URL disables it (local runs without Django).
    webhook_url: str | None = None
    webhook_secret: str = field(default="", repr=False)
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = 5
    webhook_backoff_base_s: float = 0.5
    webhook_backoff_max_s: float = 8.0
    # Push authentication: on when an audience is set.
    push_audience: str | None = None
    push_service_account: str | None = None
    push_certs_url: str = GOOGLE_CERTS_URL
    # Outputs go next to the upload unless an output bucket/prefix relocates them.
    output_bucket: str | None = None
    output_prefix: str = ""
    # The explanation methods, in the record's order (docs/contracts.md, "Explanation methods").
    explanation_methods: tuple[str, ...] = ("lime",)
    # LIME.
    lime_num_samples: int = 1000
    lime_num_features: int = 5
    lime_segmentation: str | None = None  # None: the inference core's default
    lime_seed: int = 0
    lime_batch_size: int | None = None
    # Side (px) of the downscaled copy that is segmented; None: the inference core's default.
    # Larger inputs than the demo model's may want more detailed superpixels.
    lime_segmentation_max_side: int | None = None
    # Adaptive sampling: stop once the explanation's stability reaches this (0: always draw
    # LIME_NUM_SAMPLES, lime's fixed mode), but never past LIME_MAX_SAMPLES (unset: LIME_NUM_SAMPLES).
    # None: the inference core's default. See docs/contracts.md for the stability figure.
    lime_target_stability: float | None = None
    lime_max_samples: int | None = None
    # A mask superpixel weighs at least this share of the strongest; None: the core's default.
    lime_min_relative_weight: float | None = None
    # Long side (px) of the preview, overlay and heat-map PNGs (0: the source's resolution); the
    # mask PNG and the SEGs always keep the source's resolution. docs/contracts.md.
    render_max_side: int = DEFAULT_MAX_SIDE
    # Shared batcher across concurrent requests.
    batching: bool = True
    batch_max_size: int = 256
    batch_max_wait_ms: float = 10.0
    # Requests handled at once by one instance (gunicorn threads = Cloud Run concurrency).
    concurrency: int = 4
    max_object_bytes: int = 512 * 1024 * 1024
    # rows x columns x frames, checked from the header before pixels are decoded
    # (same default as the ingest function's MAX_PIXELS).
    max_pixels: int = DEFAULT_MAX_PIXELS
    # The subscription's max delivery attempts (dead-letter policy): a transient failure at
    # delivery MAX_DELIVERY_ATTEMPTS - 1 is recorded (retries_exhausted), leaving one delivery
    # to re-send that record if the webhook is down.
    max_delivery_attempts: int = 5
    # The delivery topic (docs/contracts.md, "Delivery after a downstream outage"); unset: a
    # downstream outage is retried on the inference subscription.
    delivery_topic: str | None = None
    # The dead-letter topic's pull subscription, named in each dead letter's replay command.
    dead_letter_subscription: str | None = None
    # How long a push waits for the model to finish loading before answering 503.
    ready_wait_s: float = 60.0
    port: int = 8080
    log_level: str = "INFO"
    # Results as DICOM objects (SEG + SR) beside the upload; STOW-RS to DICOMWEB_URL when set
    # (DICOM_OBJECTS=false turns both off).
    dicom_objects: bool = True
    dicomweb_url: str | None = None
    dicomweb_auth: str = "none"  # none | google (Application Default Credentials)
    dicomweb_timeout_s: float = 30.0
    # OpenTelemetry: TRACE_EXPORTER (none | file | gcp), TRACE_FILE, TRACE_SAMPLE_RATIO.
    tracing: TraceSettings = field(default_factory=TraceSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        settings = cls(
            project=read_str(env, "GOOGLE_CLOUD_PROJECT"),
            model_uri=read_str(env, "MODEL_URI"),
            webhook_url=read_str(env, "WEBHOOK_URL"),
            webhook_secret=env.get("WEBHOOK_SECRET", ""),
            webhook_timeout_s=read_float(env, "WEBHOOK_TIMEOUT_S", 10.0),
            webhook_max_attempts=read_int(env, "WEBHOOK_MAX_ATTEMPTS", 5),
            webhook_backoff_base_s=read_float(env, "WEBHOOK_BACKOFF_BASE_S", 0.5),
            webhook_backoff_max_s=read_float(env, "WEBHOOK_BACKOFF_MAX_S", 8.0),
            push_audience=read_str(env, "PUSH_AUDIENCE"),
            push_service_account=read_str(env, "PUSH_SERVICE_ACCOUNT"),
            push_certs_url=read_str(env, "PUSH_CERTS_URL", GOOGLE_CERTS_URL) or GOOGLE_CERTS_URL,
            output_bucket=read_str(env, "OUTPUT_BUCKET"),
            output_prefix=(read_str(env, "OUTPUT_PREFIX", "") or "").strip("/"),
            explanation_methods=_methods(env),
            lime_num_samples=read_int(env, "LIME_NUM_SAMPLES", 1000),
            lime_num_features=read_int(env, "LIME_NUM_FEATURES", 5),
            lime_segmentation=read_str(env, "LIME_SEGMENTATION"),
            lime_seed=read_int(env, "LIME_SEED", 0),
            lime_batch_size=read_int(env, "LIME_BATCH_SIZE", 0) or None,
            lime_segmentation_max_side=read_int(env, "LIME_SEGMENTATION_MAX_SIDE", 0) or None,
            lime_target_stability=_optional_float(env, "LIME_TARGET_STABILITY"),
            lime_max_samples=read_int(env, "LIME_MAX_SAMPLES", 0) or None,
            lime_min_relative_weight=_optional_float(env, "LIME_MIN_RELATIVE_WEIGHT"),
            render_max_side=read_int(env, "RENDER_MAX_SIDE", DEFAULT_MAX_SIDE),
            batching=read_bool(env, "BATCHING", True),
            batch_max_size=read_int(env, "BATCH_MAX_SIZE", 256),
            batch_max_wait_ms=read_float(env, "BATCH_MAX_WAIT_MS", 10.0),
            concurrency=read_int(env, "CONCURRENCY", 4),
            max_object_bytes=read_int(env, "MAX_OBJECT_BYTES", 512 * 1024 * 1024),
            max_pixels=read_int(env, "MAX_PIXELS", DEFAULT_MAX_PIXELS),
            max_delivery_attempts=read_int(env, "MAX_DELIVERY_ATTEMPTS", 5),
            delivery_topic=read_str(env, "DELIVERY_TOPIC"),
            dead_letter_subscription=read_str(env, "DEAD_LETTER_SUBSCRIPTION"),
            ready_wait_s=read_float(env, "READY_WAIT_S", 60.0),
            port=read_int(env, "PORT", 8080),
            log_level=read_str(env, "LOG_LEVEL", "INFO") or "INFO",
            dicom_objects=read_bool(env, "DICOM_OBJECTS", True),
            dicomweb_url=read_str(env, "DICOMWEB_URL"),
            dicomweb_auth=read_str(env, "DICOMWEB_AUTH", "none") or "none",
            dicomweb_timeout_s=read_float(env, "DICOMWEB_TIMEOUT_S", 30.0),
            tracing=TraceSettings.from_env(env),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse configurations that would silently weaken security or never work."""
        if self.webhook_url and not self.webhook_secret:
            raise ValueError("WEBHOOK_URL is set but WEBHOOK_SECRET is empty: webhooks must be signed")
        if self.webhook_secret:
            check_secret(self.webhook_secret)
        if self.webhook_max_attempts < 1:
            raise ValueError("WEBHOOK_MAX_ATTEMPTS must be at least 1")
        if self.batch_max_size < 1 or self.concurrency < 1 or self.lime_num_samples < 1:
            raise ValueError("BATCH_MAX_SIZE, CONCURRENCY and LIME_NUM_SAMPLES must be positive")
        if self.max_object_bytes < 1 or self.max_pixels < 1:
            raise ValueError("MAX_OBJECT_BYTES and MAX_PIXELS must be positive")
        if self.max_delivery_attempts < 1:
            raise ValueError("MAX_DELIVERY_ATTEMPTS must be at least 1")
        methods = self.explanation_methods
        if not methods or len(set(methods)) != len(methods) or set(methods) - set(EXPLANATION_METHODS):
            raise ValueError(
                f"EXPLANATION_METHODS must list each of {', '.join(EXPLANATION_METHODS)} at most once, "
                f"at least one, got {','.join(methods)!r}"
            )
        target = self.lime_target_stability
        if target is not None and not 0 <= target <= 1:
            raise ValueError(f"LIME_TARGET_STABILITY must be in [0, 1] (0: fixed sampling), got {target}")
        if self.lime_max_samples is not None and self.lime_max_samples < 2:
            raise ValueError(f"LIME_MAX_SAMPLES must be at least 2, got {self.lime_max_samples}")
        weight = self.lime_min_relative_weight
        if weight is not None and not 0 <= weight < 1:
            raise ValueError(f"LIME_MIN_RELATIVE_WEIGHT must be in [0, 1), got {weight}")
        if self.render_max_side < 0:
            raise ValueError(f"RENDER_MAX_SIDE must be >= 0 (0: no bound), got {self.render_max_side}")
        if self.dicomweb_auth not in ("none", "google"):
            raise ValueError(f"DICOMWEB_AUTH must be none or google, got {self.dicomweb_auth!r}")

    @property
    def give_up_attempt(self) -> int:
        """The delivery at which a transient failure becomes a ``retries_exhausted`` record."""
        return max(1, self.max_delivery_attempts - 1)


def lime_params(settings: Settings) -> LimeParams:
    """The LIME parameters the settings ask for; unset settings keep the inference core's defaults."""
    params = LimeParams(
        num_samples=settings.lime_num_samples,
        num_features=settings.lime_num_features,
        seed=settings.lime_seed,
    )
    if settings.lime_segmentation:
        params = replace(params, segmentation=settings.lime_segmentation)
    if settings.lime_batch_size:
        params = replace(params, batch_size=settings.lime_batch_size)
    if settings.lime_segmentation_max_side:
        params = replace(params, segmentation_max_side=settings.lime_segmentation_max_side)
    if settings.lime_min_relative_weight is not None:
        params = replace(params, min_relative_weight=settings.lime_min_relative_weight)
    if settings.lime_target_stability is not None:  # 0: lime's fixed sampling
        params = replace(params, target_stability=settings.lime_target_stability or None)
    if params.target_stability is not None and settings.lime_max_samples:
        params = replace(params, num_samples=settings.lime_max_samples)
    return params
