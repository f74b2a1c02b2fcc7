"""The pixel budget read from the header alone, before any pixel is decoded."""

from __future__ import annotations

import pydicom

from gpu_service.pipeline.processing import pixel_count

# -- settings ------------------------------------------------------------------------------


def test_pixel_count_from_the_header() -> None:
    ds = pydicom.Dataset()
    assert pixel_count(ds) is None
    ds.Rows, ds.Columns = 512, 256
    assert pixel_count(ds) == 512 * 256
    ds.NumberOfFrames = 3
    assert pixel_count(ds) == 3 * 512 * 256
