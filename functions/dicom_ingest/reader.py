"""Ranged reads of one object generation from Cloud Storage (adapter).

Counts what it downloads, so the function can log the cost of every event and
the tests can hold it to "well under 1% of a large image".
"""

from __future__ import annotations

from google.api_core import exceptions as gexc
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY


class ObjectGone(Exception):
    """The generation named by the event no longer exists (deleted or overwritten)."""


class RangedReader:
    """Reads byte ranges of ``gs://bucket/name#generation``; never the whole object."""

    def __init__(
        self,
        client: storage.Client,
        bucket: str,
        name: str,
        generation: str | int | None,
        *,
        timeout_s: float = 20.0,
        retry_deadline_s: float = 60.0,
    ) -> None:
        gen = int(generation) if generation not in (None, "") else None
        self._blob = client.bucket(bucket).blob(name, generation=gen)
        self._timeout = timeout_s
        # Reads are idempotent: retry 429/5xx/connection errors in-process for a while,
        # then raise so that Eventarc redelivers the event later.
        self._retry = DEFAULT_RETRY.with_deadline(retry_deadline_s)
        self.bytes_read = 0
        self.requests = 0

    def fetch(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object (fewer if it is shorter)."""
        if end <= start:
            return b""
        self.requests += 1
        try:
            data = self._blob.download_as_bytes(
                start=start,
                end=end - 1,  # inclusive in the client library
                checksum=None,  # a range has no whole-object checksum to compare with
                timeout=self._timeout,
                retry=self._retry,
            )
        except gexc.NotFound as exc:
            raise ObjectGone(str(exc)) from exc
        except gexc.RequestRangeNotSatisfiable:
            data = b""  # asked past the end: the object is shorter than its event said
        self.bytes_read += len(data)
        return data

    def size(self) -> int:
        """Object size from its metadata, for events that lack it (one small request)."""
        try:
            self._blob.reload(timeout=self._timeout, retry=self._retry)
        except gexc.NotFound as exc:
            raise ObjectGone(str(exc)) from exc
        return int(self._blob.size or 0)
