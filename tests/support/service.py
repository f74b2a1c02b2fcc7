"""Test support for the inference service: a real webhook HTTP server, push envelopes, uploads."""

from __future__ import annotations

import base64
import io
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pydicom
from google.cloud import storage
from standardwebhooks import Webhook, WebhookVerificationError

from devkit import synthetic
from pipeline_common import naming

PROJECT = "test-project"
SECRET = "whsec_" + base64.b64encode(b"test-webhook-secret-key-32-bytes").decode()


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    signature_ok: bool

    def json(self) -> Any:
        return json.loads(self.body)


def _verified(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    """The receivers' check: the standardwebhooks library, as in django-dicom-results."""
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except (WebhookVerificationError, ValueError):
        return False
    return True


@dataclass
class WebhookServer:
    """A local HTTP server standing in for Django; can fail the next N calls."""

    secret: str = SECRET
    calls: list[Call] = field(default_factory=list)
    fail_next: int = 0
    fail_status: int = 503
    drop_connection: bool = False  # fail by closing the socket instead of answering
    redirect_to: str | None = None  # answer POSTs with 302 to this path (a login page), GETs with 200
    gets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                with owner._lock:
                    owner.gets.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if owner.redirect_to is not None:
                    with owner._lock:
                        owner.calls.append(Call(self.path, dict(self.headers.items()), body, 302, False))
                    self.send_response(302)
                    self.send_header("Location", owner.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items()}
                ok = _verified(owner.secret, body, headers)
                with owner._lock:
                    failing = owner.fail_next > 0
                    if failing:
                        owner.fail_next -= 1
                    status = owner.fail_status if failing else (200 if ok else 401)
                    owner.calls.append(Call(self.path, headers, body, status, ok))
                if failing and owner.drop_connection:
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/webhook"

    def accepted(self) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.status == 200]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def dicom_bytes(nodule: bool = True, size: int = 160, seed: int = 1, **kwargs: Any) -> bytes:
    sample = synthetic.make_radiograph(np.random.default_rng(seed), size=size, nodule=nodule)
    ds = synthetic.to_dicom_dataset(sample.image, **kwargs)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def upload(bucket: str, name: str, data: bytes, content_type: str = "application/dicom") -> storage.Blob:
    blob = storage.Client(project=PROJECT).bucket(bucket).blob(name)
    blob.upload_from_string(data, content_type=content_type)
    blob.reload()
    return blob


def request_body(blob: storage.Blob, dicom: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``dicom-inference-request/1`` message body, as the ingest function publishes it."""
    gen = str(blob.generation)
    return {
        "schema": "dicom-inference-request/1",
        "correlation_id": naming.correlation_id(blob.bucket.name, blob.name, gen),
        "event_id": "evt-1",
        "event_time": datetime.now(UTC).isoformat(),
        "source": {
            "bucket": blob.bucket.name,
            "name": blob.name,
            "generation": gen,
            "size": blob.size,
            "content_type": blob.content_type,
            "uri": naming.gs_uri(blob.bucket.name, blob.name),
        },
        "dicom": dicom or {},
    }


def header_of(data: bytes) -> dict[str, Any]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return {
        "patient_id": str(ds.PatientID),
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "modality": str(ds.Modality),
    }


def envelope(
    body: dict[str, Any],
    message_id: str = "1",
    attempt: int | None = None,
    attributes: dict[str, str] | None = None,
) -> dict[str, Any]:
    source = body.get("source", {})
    env: dict[str, Any] = {
        "message": {
            "data": base64.b64encode(json.dumps(body).encode()).decode(),
            "attributes": {
                "schema": "dicom-inference-request/1",
                "bucket": source.get("bucket", ""),
                "object": source.get("name", ""),
                "generation": str(source.get("generation", "")),
            },
            "messageId": message_id,
            "publishTime": datetime.now(UTC).isoformat(),
        },
        "subscription": f"projects/{PROJECT}/subscriptions/test-push",
    }
    env["message"]["attributes"].update(attributes or {})
    if attempt is not None:
        env["deliveryAttempt"] = attempt
    return env


def read_object(bucket: str, name: str) -> tuple[bytes, dict[str, str]] | None:
    blob = storage.Client(project=PROJECT).bucket(bucket).get_blob(name)
    if blob is None:
        return None
    return blob.download_as_bytes(), dict(blob.metadata or {})


@dataclass
class WorkCounts:
    """What one processor really did: results computed (model and LIME run) and staged results
    resumed (stored again from the bucket, no model call)."""

    inferences: int = 0
    staged_resumed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def count_work(processor: Any) -> WorkCounts:
    """Spies on ``processor`` (its real methods still run) and returns the live counts."""
    counts = WorkCounts()
    infer, resume = processor._infer, processor.staged.resume

    def counted_infer(*args: Any, **kwargs: Any) -> Any:
        inference = infer(*args, **kwargs)
        with counts.lock:
            counts.inferences += 1
        return inference

    def counted_resume(*args: Any, **kwargs: Any) -> Any:
        found = True
        try:
            resumed = resume(*args, **kwargs)
            found = resumed is not None
            return resumed
        finally:  # a staged record found, whether its objects were then stored or refused
            if found:
                with counts.lock:
                    counts.staged_resumed += 1

    processor._infer, processor.staged.resume = counted_infer, counted_resume
    return counts
