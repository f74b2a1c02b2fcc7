"""Ingest stage: look at the header of each DICOM upload and turn it into one inference
request on Pub/Sub or one rejection record beside the upload, without downloading pixels.

``header`` is pure (bytes in, metadata or a rejection out); ``reader``, ``publisher`` and
``records`` are the Cloud Storage and Pub/Sub adapters; ``handler`` wires them together.
"""
