"""Eventarc stand-in for the local stack: Cloud Storage notifications in, CloudEvents out.

Local stack only, never product code. In Google Cloud, Eventarc turns a bucket's
``OBJECT_FINALIZE`` notification into a ``google.cloud.storage.object.v1.finalized``
CloudEvent and delivers it over HTTP through a Pub/Sub push subscription, retrying
until the function answers 2xx. Here fake-gcs-server publishes the notification to the
Pub/Sub emulator, the emulator pushes it to this bridge, and the bridge posts a real
CloudEvent (``cloudevents`` library, binary mode) to the function under
functions-framework. The bridge answers the push with the function's verdict, so a
failing function leaves the message unacknowledged and the emulator's retry policy
redelivers it, as Eventarc does.

With ``BRIDGE_PACS_URL`` (a DICOMweb URL; the stack gives its Orthanc) the bridge also stands in
for the hospital's PACS, which in production already holds every study the pipeline reads: before
delivering the event of an uploaded DICOM file, it reads the object and stores it there (STOW-RS),
so that a viewer on that store (OHIF) can draw the results over their source. The pipeline's own
outputs and anything that is not DICOM are left alone; a store that fails is logged and the event
delivered all the same.

A delivery that can never succeed (the function answers 4xx, or the event cannot be put on
the wire) is logged as an ERROR naming the object, counted, and acknowledged so it is not
retried forever; ``GET /stats`` gives the counts that ``make status`` prints.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from pipeline_common import naming

FINALIZED = "google.cloud.storage.object.v1.finalized"
# Notification event types (JSON_API_V1 payload) and the CloudEvent type Eventarc gives each.
EVENT_TYPES = {
    "OBJECT_FINALIZE": FINALIZED,
    "OBJECT_DELETE": "google.cloud.storage.object.v1.deleted",
    "OBJECT_ARCHIVE": "google.cloud.storage.object.v1.archived",
    "OBJECT_METADATA_UPDATE": "google.cloud.storage.object.v1.metadataUpdated",
}
DATA_SCHEMA = (
    "https://googleapis.github.io/google-cloudevents/jsonschema/google/events/cloud/storage/v1/"
    "StorageObjectData.json"
)


@dataclass(frozen=True)
class BridgeSettings:
    target_url: str
    host: str = "127.0.0.1"
    port: int = 8084
    event_type: str = FINALIZED  # the trigger's event filter, as in the Eventarc trigger
    timeout_s: float = 60.0
    max_attempts: int = 0  # the subscription's dead-letter limit; 0: no limit
    pacs_url: str | None = None  # DICOMweb store that receives each uploaded DICOM source
    storage_host: str | None = None  # where the objects are read (STORAGE_EMULATOR_HOST)

    @classmethod
    def from_env(cls) -> BridgeSettings:
        target = os.environ.get("FUNCTION_URL", "")
        if not target:
            raise SystemExit("FUNCTION_URL is required: where to deliver the CloudEvents")
        return cls(
            target_url=target,
            host=os.environ.get("BRIDGE_HOST", "127.0.0.1"),
            port=int(os.environ.get("BRIDGE_PORT") or os.environ.get("LOCAL_BRIDGE_PORT") or 8084),
            event_type=os.environ.get("BRIDGE_EVENT_TYPE", FINALIZED),
            timeout_s=float(os.environ.get("BRIDGE_TIMEOUT_S", "60")),
            max_attempts=int(os.environ.get("BRIDGE_MAX_ATTEMPTS", "0")),
            pacs_url=os.environ.get("BRIDGE_PACS_URL") or None,
            storage_host=os.environ.get("STORAGE_EMULATOR_HOST") or None,
        )


def notification_to_cloudevent(message: dict[str, Any]) -> CloudEvent | None:
    """The CloudEvent Eventarc would deliver for one Pub/Sub notification message, or None
    for a message that is not a JSON_API_V1 object notification."""
    attributes = message.get("attributes") or {}
    ce_type = EVENT_TYPES.get(attributes.get("eventType", ""))
    if ce_type is None or attributes.get("payloadFormat", "JSON_API_V1") != "JSON_API_V1":
        return None
    data = json.loads(base64.b64decode(message.get("data") or b"") or b"{}")
    bucket = data.get("bucket") or attributes.get("bucketId")
    name = data.get("name") or attributes.get("objectId")
    if not bucket or not name:
        return None
    event_time = message.get("publishTime") or attributes.get("eventTime") or datetime.now(UTC).isoformat()
    return CloudEvent(
        {
            "specversion": "1.0",
            "type": ce_type,
            "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
            "subject": f"objects/{name}",
            "id": str(message["messageId"]),
            "time": event_time,
            "datacontenttype": "application/json",
            "dataschema": DATA_SCHEMA,
        },
        data,
    )


def store_source(data: dict[str, Any], storage_host: str, pacs_url: str, timeout_s: float = 60) -> str:
    """The PACS stand-in: the uploaded object, when it is a DICOM source, STOW-RS to ``pacs_url``.
    Returns what happened, for the log line; raises ``requests.RequestException`` when the object
    cannot be read or the store refuses it."""
    bucket, name = str(data.get("bucket") or ""), str(data.get("name") or "")
    if naming.is_pipeline_output(name, data.get("metadata") or {}) or name.lower().endswith(".json"):
        return "not a source: left out of the PACS"
    url = f"{storage_host.rstrip('/')}/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
    params = {"alt": "media", **({"generation": str(data["generation"])} if data.get("generation") else {})}
    answer = requests.get(url, params=params, timeout=timeout_s)
    answer.raise_for_status()
    body = answer.content
    if body[128:132] != b"DICM":
        return "not a DICOM file: left out of the PACS"
    boundary = uuid.uuid4().hex
    payload = b"".join(
        (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            body,
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    stored = requests.post(
        pacs_url.rstrip("/") + "/studies", data=payload, headers=headers, timeout=timeout_s
    )
    if stored.status_code != HTTPStatus.CONFLICT:  # 409: an earlier delivery stored it
        stored.raise_for_status()
    return "source stored in the PACS"


# CloudEvents HTTP binding 1.0.2, 3.1.3.2: header values are UTF-8, then percent-encoded for
# space, '"', '%' and every byte outside printable ASCII; all other characters stay as they are.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def encode_header_value(value: str) -> str:
    """A CloudEvent attribute as an HTTP header value. The cloudevents SDK (1.12) leaves this to
    the caller, and http.client then refuses any object name outside Latin-1."""
    return quote(value, safe=_HEADER_SAFE, encoding="utf-8")


def binary_request(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    headers, body = to_binary(event)
    encoded = {k: encode_header_value(v) if k.lower().startswith("ce-") else v for k, v in headers.items()}
    return encoded, body


def deliver(event: CloudEvent, url: str, timeout_s: float) -> int:
    """POST the event in binary content mode; the HTTP status, or 503 when the function is unreachable."""
    headers, body = binary_request(event)
    try:
        return requests.post(url, headers=headers, data=body, timeout=timeout_s).status_code
    except requests.RequestException:
        return HTTPStatus.SERVICE_UNAVAILABLE


def can_never_succeed(status: int) -> bool:
    """4xx (but a timeout or throttling) from the function: the same event will be refused again."""
    return 400 <= status < 500 and status not in (HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS)


@dataclass
class DeliveryStats:
    """What ``make status`` shows: events still being retried, and those given up on, by object."""

    delivered: int = 0
    pending: dict[str, str] = field(default_factory=dict)  # message id -> gs:// object
    failed: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, message_id: str, uri: str, status: int, reason: str | None = None) -> None:
        with self.lock:
            if reason is not None:
                self.pending.pop(message_id, None)
                self.failed.append({"event_id": message_id, "object": uri, "reason": reason})
            elif 200 <= status < 300:
                self.pending.pop(message_id, None)
                self.delivered += 1
            else:
                self.pending[message_id] = uri

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "delivered": self.delivered,
                "pending": len(self.pending),
                "failed": len(self.failed),
                "failures": self.failed[-20:],
            }


def fetch_stats(bridge_url: str) -> dict[str, Any] | None:
    try:
        return requests.get(bridge_url + "/stats", timeout=3).json()
    except (requests.RequestException, ValueError):
        return None


def print_stats(stats: dict[str, Any] | None) -> bool:
    """One line of event counts, and the objects given up on; False when any was."""
    if stats is None:
        print("\nevents: unknown (the eventarc bridge does not answer /stats)")
        return True
    print(f"\nevents: {stats['delivered']} delivered, {stats['pending']} pending, {stats['failed']} failed")
    for failure in stats.get("failures", []):
        print(f"  failed: {failure['object']}: {failure['reason']}")
    return not stats["failed"]


def _log(message: str, severity: str = "INFO", **fields: Any) -> None:
    line = {"severity": severity, "message": message, "time": datetime.now(UTC).isoformat(), **fields}
    print(json.dumps(line, ensure_ascii=False), flush=True)


def _object_uri(event: CloudEvent) -> str:
    data = event.get_data() or {}
    return f"gs://{data.get('bucket', '')}/{data.get('name', '')}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler API
        pass  # one structured line per delivery instead (see do_POST)

    def _reply(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        if self.path == "/stats":
            body = json.dumps(self.server.stats.snapshot(), ensure_ascii=False).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._reply(HTTPStatus.OK if self.path == "/healthz" else HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        settings = self.server.settings
        length = int(self.headers.get("Content-Length") or 0)
        try:
            envelope = json.loads(self.rfile.read(length))
            event = notification_to_cloudevent(envelope["message"])
            attempt = int(envelope.get("deliveryAttempt") or 0)
        except (ValueError, KeyError, TypeError):
            # A push that is not a Pub/Sub envelope can never succeed: acknowledge and say so.
            _log("dropping malformed push", "ERROR", path=self.path)
            self._reply(HTTPStatus.NO_CONTENT)
            return
        if event is None or event["type"] != settings.event_type:
            self._reply(HTTPStatus.NO_CONTENT)  # outside the trigger's filter
            return
        uri, reason = _object_uri(event), None
        if settings.pacs_url and settings.storage_host and attempt <= 1:
            severity = "INFO"
            try:
                outcome = store_source(event.get_data() or {}, settings.storage_host, settings.pacs_url)
            except requests.RequestException as exc:
                severity, outcome = "WARNING", f"cannot store the source in the PACS: {exc}"
            _log("PACS stand-in", severity, event_id=event["id"], object=uri, outcome=outcome)
        try:
            status = deliver(event, settings.target_url, settings.timeout_s)
        except (UnicodeError, ValueError) as exc:  # the request could not be built: never will be
            status, reason = 0, f"cannot encode the CloudEvent: {type(exc).__name__}"
        if reason is None and can_never_succeed(status):
            reason = f"the function refused the event with HTTP {status}"
        dead_end = reason is not None
        if reason is None and not 200 <= status < 300 and 0 < settings.max_attempts <= attempt:
            reason = f"HTTP {status} at attempt {attempt}: Pub/Sub moves it to the dead-letter topic"
        self.server.stats.record(event["id"], uri, status, reason)
        if reason is not None:
            # Retrying cannot help (or is over): say so loudly, name the object, stop the retries.
            _log(
                "event can never be delivered; giving up",
                "ERROR",
                event_id=event["id"],
                object=uri,
                reason=reason,
                function_status=status,
            )
            # A refused event is acknowledged; an exhausted one is refused once more, so that
            # Pub/Sub keeps it on the dead-letter topic.
            self._reply(HTTPStatus.NO_CONTENT if dead_end else HTTPStatus.BAD_GATEWAY)
            return
        ok = 200 <= status < 300
        _log(
            "delivered CloudEvent" if ok else "delivery failed; the emulator will redeliver",
            "INFO" if ok else "WARNING",
            event_id=event["id"],
            object=uri,
            function_status=status,
        )
        # 2xx acknowledges; anything else makes the emulator redeliver with backoff.
        self._reply(HTTPStatus.NO_CONTENT if ok else HTTPStatus.BAD_GATEWAY)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    settings: BridgeSettings
    stats: DeliveryStats


def make_server(settings: BridgeSettings) -> _Server:
    server = _Server((settings.host, settings.port), _Handler)
    server.settings = settings
    server.stats = DeliveryStats()
    return server


def main() -> None:
    settings = BridgeSettings.from_env()
    server = make_server(settings)
    _log("eventarc bridge listening", port=server.server_port, target=settings.target_url)
    server.serve_forever()


if __name__ == "__main__":
    main()
