"""Write one pipeline object under generation preconditions: the object already there decides.

Create only if absent; when the name is taken, ``decide`` looks at that object's metadata
(usually through :func:`relation`) and either keeps it or replaces exactly the generation
looked at, so a concurrent writer is never lost. Storage errors propagate.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import storage

from pipeline_common import naming

MAX_WRITE_RACES = 3


class StorageRace(Exception):
    """Other writers kept changing the object: let the event or message be retried (transient)."""


class WriteOutcome(enum.StrEnum):
    CREATED = "created"
    REPLACED = "replaced"  # an output of an older generation (or another model) of the upload
    PRESENT = "present"  # the same work is already stored (a redelivery or a concurrent twin)
    SUPERSEDED = "superseded"  # a newer generation's output is there and stays
    TAKEN = "taken"  # the name holds another upload's output or a foreign object, which stays


class Relation(enum.Enum):
    """How the object under an output's name relates to the upload being written for."""

    FOREIGN = "foreign"  # not written by the pipeline
    OTHER_UPLOAD = "other_upload"  # written for another object (``x.dcm`` and ``x.DCM`` share a stem)
    UNKNOWN_GENERATION = "unknown_generation"  # the pipeline's, but its source names no generation
    OLDER = "older"
    SAME = "same"
    NEWER = "newer"


def relation(metadata: Mapping[str, str], uri: str, generation: int, marker_key: str) -> Relation:
    if marker_key not in metadata:
        return Relation.FOREIGN
    their_uri, their_gen = naming.parse_source_marker(metadata.get(naming.SOURCE_KEY))
    if their_uri and their_uri != uri:
        return Relation.OTHER_UPLOAD
    if their_gen is None:
        return Relation.UNKNOWN_GENERATION
    if their_gen > generation:
        return Relation.NEWER
    return Relation.SAME if their_gen == generation else Relation.OLDER


@dataclass(frozen=True)
class WriteResult:
    outcome: WriteOutcome
    generation: int | None = None  # of the object written (CREATED and REPLACED)
    existing_source: str | None = None  # the source marker of the object that was kept


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
