"""The inference core: pixels decoded from DICOM, the model and its batcher, LIME, and the PNG
renderings. Pure computation: it imports no adapter (import-linter enforces it)."""
