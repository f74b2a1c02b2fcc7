"""The backfill job's DICOM step for results already delivered: their SEG and SR must be in the
DICOMweb store too. The store is asked (QIDO-RS) which of the record's instances it holds; the
missing ones are sent again (STOW-RS) from the bytes stored beside the upload, so nothing is
recomputed and a store that already has them costs one query.
"""

from __future__ import annotations

import io
import logging

import pydicom

from gpu_service.dicom.dicomweb_store import DicomWebStore, StoreRejected
from gpu_service.dicom.result_objects import SUFFIXES
from gpu_service.request import InferenceRequest
from gpu_service.results.outputs import RequestOutputs, StoredRecord
from pipeline_common.jsonlog import log

logger = logging.getLogger(__name__)

DONE = "skipped_done"  # nothing to store, or the store holds every object
STORED = "dicom_stored"  # sent now
REJECTED = "dicom_rejected"  # the store refuses them (logged; the record is as delivered)


def ensure_stored(
    store: DicomWebStore | None,
    outputs: RequestOutputs,
    request: InferenceRequest,
    found: StoredRecord | None,
) -> str:
    """For a delivered result (``found``, already read by the caller): make sure the store holds
    the objects written beside the upload (``outputs``); returns what happened."""
    dicom = (found.record.get("dicom") if found else None) or {}
    uids = dicom.get("sop_instance_uids") or {}
    study = dicom.get("study_instance_uid")
    if store is None or not uids or not study:
        return DONE
    missing = {role for role, uid in uids.items() if uid not in store.held(study, list(uids.values()))}
    if not missing:
        return DONE
    datasets = []
    for role in sorted(missing):
        stored = outputs.read(request, SUFFIXES[role])
        if stored is None:
            log(logger, logging.WARNING, "a DICOM object the record lists is gone; not stored", role=role)
            continue
        datasets.append(pydicom.dcmread(io.BytesIO(stored.data)))
    if not datasets:
        return DONE
    try:
        store.store(datasets)
    except StoreRejected as exc:
        log(logger, logging.WARNING, "the DICOMweb store refuses the objects", status=exc.status)
        return REJECTED
    log(logger, logging.INFO, "DICOM objects stored for a delivered result", roles=sorted(missing))
    return STORED
