"""Reads result artifacts from Cloud Storage with the server's own credentials.

The browser never sees a bucket URL: the viewer streams the bytes itself. Locally,
``STORAGE_EMULATOR_HOST`` points the client at fake-gcs-server (anonymous credentials).
"""

from __future__ import annotations

import functools
import mimetypes
from dataclasses import dataclass

from google.api_core import exceptions as gcs_errors
from google.cloud import storage


class ArtifactUnavailable(LookupError):
    """The URI is not a readable gs:// object for this app (bad form, bucket not allowed, gone)."""


@dataclass(frozen=True)
class Artifact:
    data: bytes
    content_type: str


def split_gs_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("gs://"):
        raise ArtifactUnavailable("not a gs:// URI")
    bucket, _, name = uri[len("gs://") :].partition("/")
    if not bucket or not name:
        raise ArtifactUnavailable("gs:// URI without bucket or object name")
    return bucket, name


@functools.lru_cache(maxsize=4)
def _client(project: str | None) -> storage.Client:
    return storage.Client(project=project)


def fetch(uri: str, *, project: str | None, allowed_buckets: frozenset[str]) -> Artifact:
    bucket, name = split_gs_uri(uri)
    if allowed_buckets and bucket not in allowed_buckets:
        raise ArtifactUnavailable(f"bucket {bucket} is not in DICOM_RESULTS_ALLOWED_BUCKETS")
    blob = _client(project).bucket(bucket).blob(name)
    try:
        data = blob.download_as_bytes()
    except gcs_errors.NotFound:
        raise ArtifactUnavailable("object not found") from None
    content_type = blob.content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Artifact(data, content_type)
