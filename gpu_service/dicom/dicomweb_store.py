"""STOW-RS of the result's DICOM objects to a DICOMweb store (Orthanc locally, the Cloud Healthcare
API in production), with dicomweb-client, and the store's answer sorted into the pipeline's
acknowledgement rules (docs/contracts.md):

- accepted, or already there (409, or a Failed SOP item "duplicate SOP instance"): success;
- down, timed out, 5xx, 408, 429, 401 (an expired token), "out of resources": :class:`StoreUnavailable`,
  an ``OSError``, so the request is transient and Pub/Sub redelivers it;
- any other 4xx or a Failed SOP item with another reason: :class:`StoreRejected`, permanent,
  which becomes a ``failed`` record saying why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

# dicomweb-client's log lines name study UIDs (patient data, never logged); and no message of
# ours quotes a URL or an answer body (they name UIDs too): the status code says enough.
# A disabled logger does not silence its children (dicomweb_client.web logs "store instances of
# study <UID>"), and `retrying` logs the failed request's URL: both are raised out of reach.
for _name in ("dicomweb_client", "retrying"):
    logging.getLogger(_name).setLevel(logging.CRITICAL + 1)

AUTH_MODES = ("none", "google")
GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
TRANSIENT_STATUS = frozenset({401, 408, 429})
ALREADY_STORED_STATUS = 409
DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.4 Table GG.4-1 "Duplicate SOP Instance"
OUT_OF_RESOURCES = range(0xA700, 0xA800)


class StoreUnavailable(OSError):
    """The store is down or busy: another delivery can succeed."""


class StoreRejected(Exception):
    """The store refused the objects themselves: another delivery would be refused too."""

    code = "dicomweb_rejected"

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"DICOMweb store refused the objects (HTTP {status}): {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Stored:
    sop_instance_uids: list[str]
    already_present: bool  # the store answered 409 / duplicate: stored by an earlier delivery
    status: int


def make_session(auth: str, timeout_s: float) -> requests.Session:
    """``google``: Application Default Credentials (the Cloud Run service account) via google-auth."""
    if auth not in AUTH_MODES:
        raise ValueError(f"DICOMWEB_AUTH must be one of {AUTH_MODES}, got {auth!r}")
    if auth == "google":
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        credentials, _ = google.auth.default(scopes=list(GOOGLE_SCOPES))
        return AuthorizedSession(credentials)
    return requests.Session()


class DicomWebStore:
    def __init__(self, url: str, auth: str = "none", timeout_s: float = 30.0, session: Any = None) -> None:
        self.url = url.rstrip("/")
        self.client = DICOMwebClient(
            self.url, session=session or make_session(auth, timeout_s), timeout=timeout_s
        )
        # One quick retry for a blip; longer outages are Pub/Sub's redelivery's business.
        self.client.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=200)

    def held(self, study_instance_uid: str, sop_instance_uids: Sequence[str]) -> set[str]:
        """Which of these instances the store holds (QIDO-RS in the study)."""
        try:
            found = self.client.search_for_instances(study_instance_uid=study_instance_uid)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status == 404:  # no such study yet
                return set()
            raise StoreUnavailable(f"DICOMweb store answered {status}") from None
        except requests.RequestException as exc:
            raise StoreUnavailable(f"DICOMweb store unreachable: {type(exc).__name__}") from None
        held = {str((item.get("00080018", {}).get("Value") or [""])[0]) for item in found}
        return held & set(sop_instance_uids)

    def store(self, datasets: Sequence[Dataset]) -> Stored:
        """STOW-RS all objects of one result (one study) in one request."""
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        study = str(datasets[0].StudyInstanceUID)
        try:
            answer = self.client.store_instances(list(datasets), study_instance_uid=study)
        except requests.HTTPError as exc:
            response = exc.response
            status = response.status_code if response is not None else None
            text = (response.text if response is not None else "")[:300].strip()
            if status == ALREADY_STORED_STATUS:
                return Stored(uids, True, status)
            if status is None or status >= 500 or status in TRANSIENT_STATUS:
                raise StoreUnavailable(f"DICOMweb store answered {status}") from None
            # The record (not the logs) gets the store's own words: it may name the study.
            raise StoreRejected(status, text or response.reason if response is not None else "") from None
        except requests.RequestException as exc:  # connection refused, timeout: the store is down
            raise StoreUnavailable(f"DICOMweb store unreachable: {type(exc).__name__}") from None
        except ValueError as exc:  # an answer that is not a DICOM response: not a DICOMweb store
            raise StoreUnavailable(
                f"DICOMweb store gave an unreadable answer: {type(exc).__name__}"
            ) from None
        return Stored(uids, _check_failed(answer), 200)


def _check_failed(answer: Dataset) -> bool:
    """Raises for failed items that are not duplicates; True when some were duplicates."""
    failed = list(answer.get("FailedSOPSequence") or [])
    reasons = [int(item.get("FailureReason") or 0) for item in failed]
    if any(r in OUT_OF_RESOURCES for r in reasons):
        raise StoreUnavailable(f"DICOMweb store is out of resources (failure reasons {reasons})")
    refused = [r for r in reasons if r != DUPLICATE_SOP_INSTANCE]
    if refused:
        raise StoreRejected(200, "failure reasons " + ", ".join(f"0x{r:04X}" for r in refused))
    return bool(failed)
