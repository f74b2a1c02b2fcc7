"""How much of an object a header read fetches, and when it stops.

The first fetch is the initial range. When the parse jumped over a value it skipped, it
knows where it goes: only that range plus a small margin. When it walks on past the end of
what it has (an undefined-length sequence), the header's length is unknown: the run it walks
is doubled, by at most ``max(initial, 64 KiB)`` a time, so the overshoot into pixel data is
bounded whatever the header's length.
"""

from __future__ import annotations

from collections.abc import Callable

from dicom_ingest.sparse_file import Chunks, NeedMore

_MAX_ROUNDS = 48  # fetches per object; a guard against pathological headers
# A jump's fetch: the missing range plus this much (what usually follows a skipped value).
JUMP_MARGIN = 8192
# Growth per fetch while walking on, at least the initial range.
_MAX_STEP = 64 * 1024


class Pull:
    """Fetches, mid-parse, the range a parse is missing, as the fetch policy and budget allow.

    Policy (the module's docstring says why): a jump gets the missing range plus
    ``JUMP_MARGIN``; walking on doubles the run it extends, by at most ``max_step``.
    Refuses (False) beyond ``max_bytes`` or ``_MAX_ROUNDS`` (``over_budget``) and after
    a failed fetch (``error``, re-raised by :func:`read_header`: pydicom would swallow it).
    """

    def __init__(
        self, fetch: Callable[[int, int], bytes], chunks: Chunks, size: int, *, initial: int, max_bytes: int
    ) -> None:
        self.fetch = fetch
        self.chunks = chunks
        self.size = size
        self.max_bytes = max_bytes
        self.max_step = max(initial, _MAX_STEP)
        self.fetches = 0
        self.over_budget = False
        self.error: Exception | None = None

    def __call__(self, want: NeedMore) -> bool:
        if self.error is not None or self.over_budget:
            return False
        have = self.chunks.total
        budget = self.max_bytes - have
        if want.length > budget or budget <= 0 or self.fetches >= _MAX_ROUNDS:
            self.over_budget = True
            return False
        length = want.length
        if self.fetches:
            run = self.chunks.run_ending_at(want.start)
            if run:  # walking on past what it has: the header's length is unknown
                length = max(length, min(run, self.max_step))
            else:  # jumped over a skipped value: it knows where it goes
                length += min(JUMP_MARGIN, have)
        length = min(length, budget, self.size - want.start)
        if length <= 0:
            return False
        try:
            data = self.fetch(want.start, want.start + length)
        except Exception as exc:  # noqa: BLE001 - re-raised by read_header, whatever it is
            self.error = exc
            return False
        self.fetches += 1
        self.chunks.add(want.start, data)
        if len(data) < length:  # the object is shorter than its event said
            self.size = want.start + len(data)
        return True
