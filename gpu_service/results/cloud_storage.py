"""Cloud Storage adapter of the service: read one upload at one generation, write outputs
without clobbering (:mod:`pipeline_common.conditional_write`; which output is replaced when is
in docs/contracts.md), mark a result record delivered. Storage errors propagate (transient).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.cloud import storage

from pipeline_common import naming
from pipeline_common.conditional_write import write_unless_kept
from pipeline_common.write_outcome import Relation, WriteOutcome, WriteResult, relation


class SourceUnavailable(Exception):
    """The requested generation of the upload cannot be read, now or ever (permanent)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class OutputConflict(Exception):
    """An output name is taken by an object the pipeline did not write for this upload."""

    code = "output_conflict"


@dataclass(frozen=True)
class StoredOutput:
    data: bytes
    metadata: dict[str, str]
    generation: int


@dataclass(frozen=True)
class Location:
    bucket: str
    name: str

    @property
    def uri(self) -> str:
        return naming.gs_uri(self.bucket, self.name)


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    name: str
    generation: str
    size: int | None
    content_type: str | None
    metadata: dict[str, str]


class GcsStore:
    def __init__(
        self,
        project: str | None = None,
        output_bucket: str | None = None,
        output_prefix: str = "",
        client_factory: Callable[[], storage.Client] | None = None,
    ) -> None:
        self.output_bucket = output_bucket
        self.output_prefix = output_prefix
        self._factory = client_factory or (lambda: storage.Client(project=project))
        self._local = threading.local()

    def client(self) -> storage.Client:
        """One client per thread: requests sessions are not documented as thread-safe."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._factory()
        return client

    # -- names ---------------------------------------------------------------------------
    def location(self, bucket: str, name: str, suffix: str) -> Location:
        """Beside the upload, or in ``output_bucket`` under ``prefix/<source-bucket>/``: one
        output bucket serves many upload buckets, whose object names may coincide."""
        if not self.output_bucket:
            return Location(bucket, naming.output_name(name, suffix, self.output_prefix))
        prefix = "/".join(p for p in (self.output_prefix.strip("/"), bucket) if p)
        return Location(self.output_bucket, naming.output_name(name, suffix, prefix))

    # -- source --------------------------------------------------------------------------
    def fetch_source(self, bucket: str, name: str, generation: str, max_bytes: int) -> bytes:
        """The bytes of exactly ``generation``; permanent errors as :class:`SourceUnavailable`."""
        handle = self.client().bucket(bucket)
        blob = handle.get_blob(name, generation=int(generation))
        if blob is None:
            self._raise_missing(handle, name, generation)
        if blob.size is not None and blob.size > max_bytes:
            raise SourceUnavailable(
                "object_too_large", f"object is {blob.size} bytes, above the limit of {max_bytes}"
            )
        try:
            return blob.download_as_bytes()
        except gexc.NotFound:
            self._raise_missing(handle, name, generation)
            raise  # unreachable: _raise_missing always raises

    @staticmethod
    def _raise_missing(handle: storage.Bucket, name: str, generation: str) -> None:
        live = handle.get_blob(name)
        if live is None:
            raise SourceUnavailable("object_missing", "the object no longer exists")
        raise SourceUnavailable(
            "generation_changed",
            f"generation {generation} was replaced by generation {live.generation}",
        )

    def read_head(self, bucket: str, name: str, generation: str, n_bytes: int) -> bytes:
        blob = self.client().bucket(bucket).blob(name, generation=int(generation))
        return blob.download_as_bytes(start=0, end=n_bytes - 1)

    def list_objects(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        for blob in self.client().list_blobs(bucket, prefix=prefix or None):
            yield ObjectInfo(
                bucket=bucket,
                name=blob.name,
                generation=str(blob.generation),
                size=blob.size,
                content_type=blob.content_type,
                metadata=dict(blob.metadata or {}),
            )

    def object_metadata(self, bucket: str, name: str) -> dict[str, str] | None:
        """Custom metadata of the live object, None when there is none (one metadata read)."""
        blob = self.client().bucket(bucket).get_blob(name)
        return None if blob is None else dict(blob.metadata or {})

    # -- outputs -------------------------------------------------------------------------
    def read_output(self, location: Location) -> StoredOutput | None:
        blob = self.client().bucket(location.bucket).get_blob(location.name)
        if blob is None:
            return None
        try:
            data = blob.download_as_bytes(if_generation_match=blob.generation)
        except (gexc.NotFound, gexc.PreconditionFailed):
            return None  # replaced or deleted between the two calls: the caller recomputes
        return StoredOutput(data, dict(blob.metadata or {}), int(blob.generation))

    def mark_delivered(self, location: Location, generation: int, when: str) -> None:
        """Add the delivered marker to exactly ``generation`` of an output (a metadata patch
        merges keys; a replaced object raises ``PreconditionFailed``, a deleted one ``NotFound``)."""
        blob = self.client().bucket(location.bucket).blob(location.name)
        blob.metadata = {naming.DELIVERED_KEY: when}
        blob.patch(if_generation_match=generation)

    def write_output(
        self,
        location: Location,
        data: bytes,
        *,
        content_type: str,
        role: str,
        source_bucket: str,
        source_name: str,
        source_generation: str,
        correlation_id: str,
        model_sha256: str,
    ) -> WriteResult:
        ours_uri, ours_gen = naming.gs_uri(source_bucket, source_name), int(source_generation)

        def decide(found: dict[str, str]) -> WriteOutcome | None:
            kind = relation(found, ours_uri, ours_gen, naming.MARKER_KEY)
            if kind is Relation.FOREIGN:
                raise OutputConflict(f"{location.uri} exists and was not written by the pipeline")
            if kind is Relation.OTHER_UPLOAD:
                raise OutputConflict(f"{location.uri} belongs to another upload")
            if kind is Relation.NEWER:
                return WriteOutcome.SUPERSEDED
            if kind is Relation.SAME and found.get(naming.MODEL_KEY) == model_sha256:
                return WriteOutcome.PRESENT
            return None  # an older generation, or another model's output

        return write_unless_kept(
            self.client().bucket(location.bucket),
            location.name,
            data,
            content_type=content_type,
            metadata={
                naming.MARKER_KEY: role,
                naming.SOURCE_KEY: naming.source_marker(source_bucket, source_name, source_generation),
                naming.CORRELATION_KEY: correlation_id,
                naming.MODEL_KEY: model_sha256,
            },
            decide=decide,
        )
