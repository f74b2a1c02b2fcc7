"""The one time format both components write: RFC 3339 in UTC with a ``Z`` suffix."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(when: datetime | None = None) -> str:
    """``when`` (default: now) as ``2024-01-31T12:00:00.123456Z``."""
    return (when or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
