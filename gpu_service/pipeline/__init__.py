"""One request's processing from download to delivery, the result staged while the DICOMweb store
is down, and the backfill of DICOM objects for results already delivered."""
