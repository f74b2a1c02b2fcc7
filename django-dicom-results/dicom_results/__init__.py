"""Receives, verifies, deduplicates and shows dicom-inference-result/1 webhooks (docs/contracts.md)."""
