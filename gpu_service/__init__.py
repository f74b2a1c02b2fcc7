"""Inference service: DICOM pixels to prediction and LIME explanation (domain code plus adapters)."""
