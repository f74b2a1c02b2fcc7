"""Which failures of a request are permanent (a ``failed`` record) and which are transient (Pub/Sub
redelivers): a pure stage's error is a property of the input, except memory and I/O errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from gpu_service.inference.pixels import PixelDecodeError
from gpu_service.outcome import is_transient


class PermanentFailure(Exception):
    """A stage failed in a way no retry can fix: recorded as ``failed`` and delivered."""

    def __init__(self, code: str, message: str, dataset: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.dataset = dataset  # the parsed header, when there is one, for the failed record


@contextlib.contextmanager
def permanent_unless_transient(code: str, dataset: Any = None) -> Iterator[None]:
    """Errors of a pure stage are properties of the input, except memory and I/O errors; a decode
    error keeps its own code."""
    try:
        yield
    except PermanentFailure:
        raise
    except PixelDecodeError as exc:
        raise PermanentFailure(exc.code, exc.message, dataset) from exc
    except Exception as exc:
        if is_transient(exc):
            raise
        raise PermanentFailure(code, f"{type(exc).__name__}: {exc}", dataset) from exc
