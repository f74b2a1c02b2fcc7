"""Ingest stage: look at the header of each DICOM upload and turn it into one inference
request on Pub/Sub or one rejection record beside the upload, without downloading pixels.

Pure: ``header`` (with ``sparse_file``, ``fetch_policy``, ``header_parse``, ``header_fields``),
``ingest_policy``, ``rejection``, ``message``. Adapters: ``reader``, ``publisher``, ``records``.
``handler`` wires them together.
"""
