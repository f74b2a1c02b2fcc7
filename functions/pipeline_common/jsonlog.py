"""Structured JSON logs that Cloud Logging parses (one object per line on stdout).

Fields bound with :func:`bind` (bucket, object, generation, correlation id, trace)
are added to every line written in the same context, so one upload can be
followed from the function to the webhook. Callers must never pass patient
data: use object paths and :func:`pipeline_common.naming.hash_uid`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("log_context", default=None)

TRACE_KEY = "logging.googleapis.com/trace"
# Fields computed per line (the current span's trace fields: pipeline_common.tracing registers it).
_field_providers: list[Callable[[], dict[str, Any]]] = []
_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}


class CloudLoggingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        entry.update(_context.get() or {})
        for provider in _field_providers:
            entry.update(provider())
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            entry["stack_trace"] = stack_trace(record.exc_info[1])
        return json.dumps(entry, default=str)


# Exceptions raised by the DICOM readers and codecs can quote element values (patient data).
_DICOM_MODULES = ("pydicom", "pylibjpeg", "openjpeg", "libjpeg", "rle")
WITHHELD = "<message withheld: raised while reading DICOM data>"


def _from_dicom_code(exc: BaseException) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            module = tb.tb_frame.f_globals.get("__name__", "")
            if module.split(".")[0] in _DICOM_MODULES:
                return True
            tb = tb.tb_next
        if type(exc).__module__.split(".")[0] in _DICOM_MODULES:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def stack_trace(exc: BaseException) -> str:
    """A Python-format trace Error Reporting groups on, without DICOM readers' messages.

    Frames (file, line, function) are kept; the message is withheld when the exception,
    or one it was raised from, passed through pydicom or a codec plugin.
    """
    frames = "".join(traceback.format_tb(exc.__traceback__))
    message = WITHHELD if _from_dicom_code(exc) else str(exc)
    return f"Traceback (most recent call last):\n{frames}{type(exc).__name__}: {message}\n"


# Libraries whose log lines and warnings quote DICOM element values (patient names, ids,
# dates, UIDs that embed dates): e.g. pydicom's "Invalid value for VR UI: '1.2.3.20240131.x'".
PHI_LOGGERS = ("pydicom",)
PHI_WARNING_MODULES = r"pydicom(\.|$)"


def silence_phi_sources() -> None:
    """Keep libraries that quote element values out of Cloud Logging and stderr; idempotent.

    Disabling the logger (not just raising its level) also drops lines from handlers a
    library might attach itself; the warnings filter matches the warning's own module.
    """
    for name in PHI_LOGGERS:
        logging.getLogger(name).disabled = True
    warnings.filterwarnings("ignore", module=PHI_WARNING_MODULES)


def add_field_provider(provider: Callable[[], dict[str, Any]]) -> None:
    """Add ``provider()``'s fields to every line (after bound fields); idempotent."""
    if provider not in _field_providers:
        _field_providers.append(provider)


def setup(level: str | None = None) -> None:
    """Route the root logger to stdout as JSON and silence PHI-quoting libraries; idempotent."""
    silence_phi_sources()
    root = logging.getLogger()
    if any(isinstance(h.formatter, CloudLoggingFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CloudLoggingFormatter())
    root.handlers = [handler]
    root.setLevel(level or os.environ.get("LOG_LEVEL", "INFO"))


def trace_field(header: str | None, project: str | None) -> dict[str, str]:
    """Cloud Logging trace field from an ``X-Cloud-Trace-Context`` or ``traceparent`` header."""
    if not header or not project:
        return {}
    if header.startswith("00-"):  # W3C traceparent: 00-TRACEID-SPANID-FLAGS
        parts = header.split("-")
        trace_id = parts[1] if len(parts) > 2 else ""
    else:
        trace_id = header.split("/")[0]
    return {TRACE_KEY: f"projects/{project}/traces/{trace_id}"} if trace_id else {}


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written inside the block (thread- and task-local)."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class UploadRef(Protocol):
    @property
    def bucket(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def generation(self) -> str: ...
    @property
    def correlation_id(self) -> str: ...


def bind_upload(upload: UploadRef, **more: Any) -> contextlib.AbstractContextManager[None]:
    """:func:`bind` with the fields that follow one upload from the function to the webhook."""
    return bind(
        bucket=upload.bucket,
        object=upload.name,
        generation=upload.generation,
        correlation_id=upload.correlation_id,
        **more,
    )


def log(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with structured ``fields`` (never patient data)."""
    logger.log(level, message, extra={"fields": fields})
