"""Writes the audit trail (``AuditEvent``): one row each time staff open a result's page or
one of its images or DICOM objects.

The client address is ``REMOTE_ADDR`` only: a forwarded header is whatever the client sent
unless the host's proxy set it, so a host behind a proxy makes its server put the real client
there (e.g. gunicorn's ``--forwarded-allow-ips``). The log line names ids only, never the
patient, the file or the label, like every other log line of the app.
"""

from __future__ import annotations

import ipaddress
import logging

from django.http import HttpRequest

from dicom_results.models import AuditEvent, InferenceResult

logger = logging.getLogger(__name__)


def client_address(request: HttpRequest) -> str | None:
    address = request.META.get("REMOTE_ADDR") or ""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None  # e.g. a Unix socket: nothing worth recording


def record(request: HttpRequest, action: str, result: InferenceResult, detail: str = "") -> AuditEvent:
    return record_for(request.user, action, result, detail, client_address(request))


def record_for(
    user, action: str, result: InferenceResult, detail: str = "", address: str | None = None
) -> AuditEvent:
    """The same event without a request: the review service writes it inside its own transaction."""
    event = AuditEvent.objects.create(
        user_id=user.pk,
        username=user.get_username(),
        action=action,
        result_id=result.pk,
        detail=detail,
        client_address=address,
    )
    fields = {"audit_id": event.pk, "action": action, "result_id": result.pk, "user_id": user.pk}
    if detail:
        fields["detail"] = detail
    logger.info("audit", extra={"fields": fields})
    return event
