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
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

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


def deliver(event: CloudEvent, url: str, timeout_s: float) -> int:
    """POST the event in binary content mode; the HTTP status, or 503 when the function is unreachable."""
    headers, body = to_binary(event)
    try:
        return requests.post(url, headers=headers, data=body, timeout=timeout_s).status_code
    except requests.RequestException:
        return HTTPStatus.SERVICE_UNAVAILABLE


def _log(message: str, **fields: Any) -> None:
    print(
        json.dumps({"severity": "INFO", "message": message, "time": datetime.now(UTC).isoformat(), **fields}),
        flush=True,
    )


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
        self._reply(HTTPStatus.OK if self.path == "/healthz" else HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:
        settings = self.server.settings
        length = int(self.headers.get("Content-Length") or 0)
        try:
            message = json.loads(self.rfile.read(length))["message"]
            event = notification_to_cloudevent(message)
        except (ValueError, KeyError, TypeError):
            # A push that is not a Pub/Sub envelope can never succeed: acknowledge and say so.
            _log("dropping malformed push", path=self.path)
            self._reply(HTTPStatus.NO_CONTENT)
            return
        if event is None or event["type"] != settings.event_type:
            self._reply(HTTPStatus.NO_CONTENT)  # outside the trigger's filter
            return
        status = deliver(event, settings.target_url, settings.timeout_s)
        _log(
            "delivered CloudEvent",
            event_id=event["id"],
            subject=event["subject"],
            source=event["source"],
            function_status=status,
        )
        # 2xx acknowledges; anything else makes the emulator redeliver with backoff.
        self._reply(HTTPStatus.NO_CONTENT if 200 <= status < 300 else HTTPStatus.BAD_GATEWAY)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    settings: BridgeSettings


def make_server(settings: BridgeSettings) -> _Server:
    server = _Server((settings.host, settings.port), _Handler)
    server.settings = settings
    return server


def main() -> None:
    settings = BridgeSettings.from_env()
    server = make_server(settings)
    _log("eventarc bridge listening", port=server.server_port, target=settings.target_url)
    server.serve_forever()


if __name__ == "__main__":
    main()
