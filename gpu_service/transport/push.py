"""Pub/Sub messages (push envelopes and pulled messages) turned into one inference request.

Pure parsing, no I/O. Anything that can never become a valid request raises
:class:`MessageError`; what the service answers for it is decided in
:mod:`gpu_service.pipeline.processing` (``ack_status``).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, replace
from typing import Any

from gpu_service.request import InferenceRequest, request_for_object
from pipeline_common import contract, naming


class MessageError(ValueError):
    """The envelope or its message can never be processed, however often it is redelivered."""


@dataclass(frozen=True)
class PubSubMessage:
    data: bytes
    attributes: dict[str, str]
    message_id: str | None = None
    delivery_attempt: int | None = None  # absent from the emulator's pushes


def parse_envelope(envelope: Any) -> PubSubMessage:
    """The push envelope Pub/Sub POSTs: ``{"message": {"data": b64, ...}, "subscription": ...}``."""
    if not isinstance(envelope, dict) or not isinstance(envelope.get("message"), dict):
        raise MessageError("not a Pub/Sub push envelope (no 'message' object)")
    message = envelope["message"]
    raw = message.get("data")
    if not isinstance(raw, str) or not raw:
        raise MessageError("push message has no data")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageError("push message data is not base64") from exc
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise MessageError("push message attributes are not an object")
    attempt = envelope.get("deliveryAttempt", message.get("deliveryAttempt"))
    return PubSubMessage(
        data=data,
        attributes={str(k): str(v) for k, v in attributes.items()},
        message_id=message.get("messageId") or message.get("message_id"),
        delivery_attempt=int(attempt) if isinstance(attempt, int | str) and str(attempt).isdigit() else None,
    )


def _json_object(message: PubSubMessage) -> dict[str, Any]:
    try:
        body = json.loads(message.data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError("message data is not UTF-8 JSON") from exc
    if not isinstance(body, dict):
        raise MessageError("message data is not a JSON object")
    return body


def parse_request(message: PubSubMessage) -> InferenceRequest:
    """The ``dicom-inference-request/1`` body of a message (see docs/contracts.md)."""
    body = _json_object(message)
    schema = body.get("schema") or message.attributes.get("schema")
    if schema != contract.INFERENCE_REQUEST:
        raise MessageError(f"unsupported message schema {schema!r}")
    source = body.get("source")
    if not isinstance(source, dict):
        raise MessageError("message has no 'source' object")
    bucket, name, generation = source.get("bucket"), source.get("name"), source.get("generation")
    if not (isinstance(bucket, str) and bucket and isinstance(name, str) and name):
        raise MessageError("message source has no bucket or name")
    generation = str(generation) if generation is not None else ""
    if not generation.isdigit():
        raise MessageError("message source has no numeric generation")
    size = source.get("size")
    try:
        size = int(size) if size is not None else None
    except (TypeError, ValueError):
        size = None
    dicom = body.get("dicom") if isinstance(body.get("dicom"), dict) else {}
    event_time = body.get("event_time")
    return InferenceRequest(
        bucket=bucket,
        name=name,
        generation=generation,
        # Recomputed, not trusted: redeliveries and retries of one upload must share it.
        correlation_id=naming.correlation_id(bucket, name, generation),
        size=size,
        dicom={k: dicom.get(k) for k in dicom},
        event_time=event_time if isinstance(event_time, str) and event_time else None,
    )


def parse_delivery(message: PubSubMessage) -> InferenceRequest:
    """The ``dicom-delivery/1`` body the service published for a result it could not deliver."""
    body = _json_object(message)
    if (body.get("schema") or message.attributes.get("schema")) != contract.DELIVERY:
        raise MessageError(f"unsupported delivery schema {body.get('schema')!r}")
    source = body.get("source")
    if not isinstance(source, dict):
        raise MessageError("delivery message has no 'source' object")
    bucket, name, generation = source.get("bucket"), source.get("name"), str(source.get("generation") or "")
    if not (isinstance(bucket, str) and bucket and isinstance(name, str) and name and generation.isdigit()):
        raise MessageError("delivery source has no bucket, name or numeric generation")
    event_time = body.get("event_time")
    return replace(
        request_for_object(bucket, name, generation, None),
        event_time=event_time if isinstance(event_time, str) and event_time else None,
    )
