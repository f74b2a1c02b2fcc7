"""The ingest function's settings, read once per event from the environment (cheap, and
lets one process serve different configurations in tests)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline_common import naming
from pipeline_common.contract import DEFAULT_MAX_PIXELS
from pipeline_common.env import SettingsError, read_int

__all__ = ["IMAGE_MODALITIES", "Settings", "SettingsError"]

# Modalities that produce images a reader would look at (DICOM PS3.3 C.7.3.1.1.1).
# Left out on purpose: objects that carry Pixel Data but are not pictures of the
# patient (SEG label maps, RTDOSE dose grids) and non-image modalities (SR, KO, PR,
# RTPLAN, RTSTRUCT, ECG, DOC, ...), which have no Pixel Data anyway.
IMAGE_MODALITIES: frozenset[str] = frozenset(
    {
        "BDUS", "BMD", "CR", "CT", "DG", "DX", "ES", "GM", "IO", "IVOCT", "IVUS", "LS", "MG",
        "MR", "NM", "OCT", "OP", "OPT", "OT", "PA", "PT", "PX", "RF", "RG", "RTIMAGE", "SM",
        "TG", "US", "XA", "XC",
    }
)  # fmt: skip


def _int(name: str, default: int) -> int:
    return read_int(os.environ, name, default, minimum=1)


def _csv(name: str) -> tuple[str, ...] | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    project: str
    topic_path: str
    # None means any modality ("*"); otherwise Modality must be one of these (upper case).
    allowed_modalities: frozenset[str] | None
    header_initial_bytes: int
    header_max_bytes: int
    max_pixels: int
    output_suffixes: tuple[str, ...]
    marker_key: str
    log_level: str
    publish_timeout_s: float = 30.0
    storage_timeout_s: float = 20.0
    # Total time the storage client may spend retrying one request before the event is retried.
    storage_retry_deadline_s: float = 60.0

    @classmethod
    def from_env(cls) -> Settings:
        project = os.environ.get("GOOGLE_CLOUD_PROJECT", "").strip()
        topic = os.environ.get("INFERENCE_TOPIC", "").strip()
        if not topic:
            raise SettingsError("INFERENCE_TOPIC is not set")
        if topic.startswith("projects/"):
            topic_path = topic
            project = project or topic.split("/")[1]
        else:
            if not project:
                raise SettingsError("GOOGLE_CLOUD_PROJECT is needed when INFERENCE_TOPIC is a bare name")
            topic_path = f"projects/{project}/topics/{topic}"

        modalities = _csv("ALLOWED_MODALITIES")
        if modalities is None:
            allowed: frozenset[str] | None = IMAGE_MODALITIES
        elif "*" in modalities:
            allowed = None
        else:
            allowed = frozenset(m.upper() for m in modalities)

        initial = _int("HEADER_INITIAL_BYTES", 64 * 1024)
        maximum = _int("HEADER_MAX_BYTES", 1024 * 1024)
        if maximum < initial:
            raise SettingsError("HEADER_MAX_BYTES must be at least HEADER_INITIAL_BYTES")
        if initial < 256:
            raise SettingsError("HEADER_INITIAL_BYTES must be at least 256 (preamble and file meta)")

        return cls(
            project=project,
            topic_path=topic_path,
            allowed_modalities=allowed,
            header_initial_bytes=initial,
            header_max_bytes=maximum,
            max_pixels=_int("MAX_PIXELS", DEFAULT_MAX_PIXELS),
            output_suffixes=_csv("OUTPUT_SUFFIXES") or naming.OUTPUT_SUFFIXES,
            marker_key=os.environ.get("OUTPUT_MARKER_KEY", "").strip() or naming.MARKER_KEY,
            log_level=os.environ.get("LOG_LEVEL", "INFO").strip().upper() or "INFO",
            publish_timeout_s=float(_int("PUBLISH_TIMEOUT_S", 30)),
            storage_timeout_s=float(_int("STORAGE_TIMEOUT_S", 20)),
            storage_retry_deadline_s=float(_int("STORAGE_RETRY_DEADLINE_S", 60)),
        )
