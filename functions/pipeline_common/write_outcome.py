"""What a conditional write of a pipeline object did, and how the object already under its name
relates to the upload being written for. Pure: the Cloud Storage write itself is
:mod:`pipeline_common.conditional_write`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from pipeline_common import naming


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
