"""Read a DICOM header from the first bytes of an object, never its pixels.

Pure: the only I/O is the ``fetch(start, end)`` callable :func:`read_header` is given. One
parse (:mod:`dicom_ingest.header_parse`) runs over a sparse view of the object
(:mod:`dicom_ingest.sparse_file`) and fetches what it misses mid-parse, as
:mod:`dicom_ingest.fetch_policy` allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dicom_ingest.fetch_policy import Pull
from dicom_ingest.header_parse import DicomHeader, inspect
from dicom_ingest.rejection import EMPTY_OBJECT, HEADER_TOO_LARGE, TRUNCATED, Rejection
from dicom_ingest.sparse_file import Chunks, NeedMore

__all__ = ["DicomHeader", "HeaderRead", "Rejection", "read_header"]


@dataclass(frozen=True)
class HeaderRead:
    """Outcome of :func:`read_header` plus what it cost."""

    result: DicomHeader | Rejection
    bytes_read: int
    fetches: int


def read_header(
    fetch: Callable[[int, int], bytes],
    size: int,
    *,
    initial_bytes: int,
    max_bytes: int,
) -> HeaderRead:
    """Fetch as little of the object as its header needs and parse it.

    ``fetch(start, end)`` returns bytes ``[start, end)`` (end exclusive). The first
    fetch is ``initial_bytes``; later ones cover what the parse asked for (see the
    module's docstring), never beyond ``max_bytes`` in all (then ``header_too_large``).
    Whatever ``fetch`` raises propagates.
    """
    if size <= 0:
        return HeaderRead(Rejection(EMPTY_OBJECT, "The object is empty (0 bytes)."), 0, 0)
    chunks = Chunks()
    pull = Pull(fetch, chunks, size, initial=initial_bytes, max_bytes=max_bytes)
    want: DicomHeader | Rejection | NeedMore = NeedMore(0, min(initial_bytes, size, max_bytes))
    while isinstance(want, NeedMore):
        # A parse only stops short when the pull could not fetch (or before the file meta).
        if not pull(want):
            if pull.error is not None:
                raise pull.error
            if pull.over_budget:
                return HeaderRead(_too_large(max_bytes, pull.size), chunks.total, pull.fetches)
            truncated = Rejection(TRUNCATED, "The file ends in the middle of its DICOM header.")
            return HeaderRead(truncated, chunks.total, pull.fetches)  # wants bytes past the end
        want = inspect(chunks, pull.size, pull)
        if pull.error is not None:
            raise pull.error
        if pull.over_budget:
            return HeaderRead(_too_large(max_bytes, pull.size), chunks.total, pull.fetches)
    return HeaderRead(want, chunks.total, pull.fetches)


def _too_large(max_bytes: int, size: int) -> Rejection:
    return Rejection(
        HEADER_TOO_LARGE,
        f"No Pixel Data within the first {max_bytes} bytes read (HEADER_MAX_BYTES); "
        "the header is too large to inspect.",
        {"max_bytes": max_bytes, "object_size": size},
    )
