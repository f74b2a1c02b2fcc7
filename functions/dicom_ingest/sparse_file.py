"""Read-only files over the byte ranges of an object fetched so far, for pydicom to parse.

A read of a byte not fetched yet asks the ``pull`` for it, or, without one, stops the parse
(:class:`MissingBytes`) and leaves the range it wanted in ``missing``. Deflated data sets
(PS3.5 A.5) are inflated incrementally from the compressed bytes fetched so far: pydicom's
own reader would inflate the whole rest of the object, pixels included.
"""

from __future__ import annotations

import bisect
import zlib
from dataclasses import dataclass
from typing import Protocol

# Inflated bytes a deflated header may span (a guard against zip bombs), and how much
# of the inflated stream is kept behind the read position (pydicom seeks back a little).
MAX_INFLATED = 64 * 1024 * 1024
INFLATE_WINDOW = 1024 * 1024
_INFLATE_FEED = 64 * 1024


@dataclass(frozen=True)
class NeedMore:
    """The parse needs bytes ``[start, start + length)`` that were not fetched yet."""

    start: int
    length: int


class Puller(Protocol):
    """Fetches a missing range mid-parse (True when it did); ``size`` may shrink when it finds the end."""

    size: int

    def __call__(self, want: NeedMore) -> bool: ...


class MissingBytes(Exception):
    """Stops pydicom as soon as it wants a byte that was not fetched."""


class Chunks:
    """Byte ranges of one object fetched so far, merged when they touch."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._data: list[bytes] = []

    @property
    def total(self) -> int:
        return sum(len(d) for d in self._data)

    def add(self, start: int, data: bytes) -> None:
        if not data:
            return
        spans = [(s, d) for s, d in zip(self._starts, self._data, strict=True)] + [(start, data)]
        spans.sort(key=lambda sd: sd[0])
        merged: list[tuple[int, bytearray]] = []
        for s, d in spans:
            if merged and s <= merged[-1][0] + len(merged[-1][1]):
                ms, md = merged[-1]
                overlap = ms + len(md) - s
                md.extend(d[overlap:] if overlap < len(d) else b"")
            else:
                merged.append((s, bytearray(d)))
        self._starts = [s for s, _ in merged]
        self._data = [bytes(d) for _, d in merged]

    def covered_until(self, pos: int) -> int:
        """End of the fetched run that contains ``pos`` (``pos`` itself when it is not fetched)."""
        i = bisect.bisect_right(self._starts, pos) - 1
        if i >= 0 and pos < self._starts[i] + len(self._data[i]):
            return self._starts[i] + len(self._data[i])
        return pos

    def run_ending_at(self, pos: int) -> int:
        """Length of the fetched run that ends exactly at ``pos`` (0 when none does)."""
        i = bisect.bisect_right(self._starts, pos) - 1
        if i >= 0 and self._starts[i] + len(self._data[i]) == pos:
            return len(self._data[i])
        return 0

    def get(self, start: int, end: int) -> bytes:
        i = bisect.bisect_right(self._starts, start) - 1
        base = self._starts[i]
        return self._data[i][start - base : end - base]


class SparseFile:
    """A read-only file over :class:`Chunks` of an object of known ``size``.

    Records the first missing range (``missing``) and whether a read ran into the real
    end of the object mid-element (``truncated``); pydicom swallows some errors
    (EOFError, and it turns any error in a sequence item into OSError), so the caller
    looks at these flags rather than at what pydicom raised.
    """

    name = "<cloud storage object>"

    def __init__(self, chunks: Chunks, size: int, pull: Puller | None = None) -> None:
        self.chunks = chunks
        self.size = size
        self.pull = pull
        self.pos = 0
        self.missing: NeedMore | None = None
        self.truncated = False

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        start = self.pos
        end = self.size if n is None or n < 0 else min(start + n, self.size)
        if start >= self.size:
            # At the real end: reading the next tag (8 bytes) or peeking (1) there is
            # how a complete data set ends; anything else means a value was cut off.
            if start > self.size or n not in (1, 8):
                self.truncated = True
            return b""
        have = self.chunks.covered_until(start)
        if have < end and self.pull is not None and self.pull(NeedMore(have, end - have)):
            self.size = self.pull.size  # the object may prove shorter than its event said
            return self.read(n)
        if have < end:
            if self.missing is None:
                self.missing = NeedMore(have, end - have)
            raise MissingBytes
        data = self.chunks.get(start, end)
        self.pos = end
        if n is not None and n >= 0 and len(data) < n:
            self.truncated = True
        return data


class InflatedFile:
    """A read-only file over the inflated data set of a deflated object (PS3.5 A.5).

    Positions are in the inflated stream. It inflates lazily, from the compressed
    bytes in ``chunks`` from ``start`` on, only as far as pydicom reads, keeping a
    window behind the read position. Flags as :class:`SparseFile` (``missing`` is a
    range of compressed bytes), plus ``corrupt`` (not a deflate stream) and
    ``too_large`` (the header would inflate beyond ``MAX_INFLATED``).
    """

    name = "<cloud storage object, inflated>"

    def __init__(self, chunks: Chunks, size: int, start: int, pull: Puller | None = None) -> None:
        self.chunks = chunks
        self.size = size
        self.pull = pull
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._next = start  # the next compressed byte to feed
        self._tail = b""  # compressed input the inflater has not consumed yet
        self._buf = bytearray()
        self._base = 0  # inflated offset of _buf[0]
        self._cut = False  # the object ends before the deflate stream does
        self.pos = 0
        self.missing: NeedMore | None = None
        self.truncated = False
        self.corrupt = False
        self.too_large = False

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            raise OSError("the length of an inflated data set is not known")
        self.pos = max(0, (self.pos if whence == 1 else 0) + offset)
        return self.pos

    def _inflate(self, data: bytes, max_length: int) -> None:
        try:
            out = self._inflater.decompress(data, max_length)
        except zlib.error as exc:
            self.corrupt = True
            raise MissingBytes from exc
        self._tail = self._inflater.unconsumed_tail
        self._buf += out
        if self._base + len(self._buf) > MAX_INFLATED:
            self.too_large = True
            raise MissingBytes
        drop = self.pos - INFLATE_WINDOW - self._base
        if drop > INFLATE_WINDOW:
            del self._buf[:drop]
            self._base += drop

    def _inflate_to(self, end: int) -> None:
        while self._base + len(self._buf) < end and not self._inflater.eof and not self._cut:
            want = max(end - self._base - len(self._buf), _INFLATE_FEED)
            if not self._tail:
                before = len(self._buf)
                self._inflate(b"", want)  # output the inflater may still hold
                if len(self._buf) > before:
                    continue
                have = self.chunks.covered_until(self._next)
                if have == self._next and self.pull is not None and self.pull(NeedMore(self._next, 1)):
                    self.size = self.pull.size
                    continue
                if have == self._next:
                    if self._next >= self.size:
                        self._cut = True
                        return
                    if self.missing is None:
                        self.missing = NeedMore(self._next, 1)
                    raise MissingBytes
                end_feed = min(have, self._next + _INFLATE_FEED)
                self._tail = self.chunks.get(self._next, end_feed)
                self._next = end_feed
            self._inflate(self._tail, want)

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            raise OSError("unbounded read of a deflated data set")
        end = self.pos + n
        self._inflate_to(end)
        if self.pos < self._base:
            raise OSError("seek behind the inflate window")
        data = bytes(self._buf[self.pos - self._base : end - self._base])
        if len(data) < n and (self._cut or data or n not in (1, 8)):
            self.truncated = True  # cut off mid-stream, or the stream ends mid-element
        self.pos += len(data)
        return data
