"""Conventions shared by the ingest function and the inference service.

Lives inside ``functions/`` so that the function's source folder deploys on its
own; the service image copies this package next to ``gpu_service``.
"""
