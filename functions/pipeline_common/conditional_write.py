"""Write one pipeline object under generation preconditions: the object already there decides.

Create only if absent; when the name is taken, ``decide`` looks at that object's metadata
(usually through :func:`pipeline_common.write_outcome.relation`) and either keeps it or replaces
exactly the generation looked at, so a concurrent writer is never lost. Storage errors propagate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import storage

from pipeline_common import naming
from pipeline_common.write_outcome import WriteOutcome, WriteResult

MAX_WRITE_RACES = 3


class StorageRace(Exception):
    """Other writers kept changing the object: let the event or message be retried (transient)."""


def write_unless_kept(
    handle: storage.Bucket,
    name: str,
    data: bytes,
    *,
    content_type: str,
    metadata: dict[str, str],
    decide: Callable[[dict[str, str]], WriteOutcome | None],
    **request: Any,
) -> WriteResult:
    """``decide(existing_metadata)``: None replaces the object, an outcome keeps it (or raises).

    ``request``: ``timeout``/``retry`` for every storage call.
    """
    expected, outcome = 0, WriteOutcome.CREATED
    for _ in range(MAX_WRITE_RACES):
        blob = handle.blob(name)
        blob.metadata = metadata
        try:
            blob.upload_from_string(data, content_type=content_type, if_generation_match=expected, **request)
            return WriteResult(outcome, int(blob.generation) if blob.generation else None)
        except gexc.PreconditionFailed:
            pass
        existing = handle.get_blob(name, **request)
        if existing is None:  # deleted since: create it again
            expected, outcome = 0, WriteOutcome.CREATED
            continue
        found = dict(existing.metadata or {})
        kept = decide(found)
        if kept is not None:
            return WriteResult(kept, existing_source=found.get(naming.SOURCE_KEY))
        expected, outcome = int(existing.generation), WriteOutcome.REPLACED
    raise StorageRace(f"lost the write race for {naming.gs_uri(handle.name, name)} {MAX_WRITE_RACES} times")
