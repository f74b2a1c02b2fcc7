"""Rebuild the bundled demo DICOMs: ``.venv/bin/python samples/make_samples.py``.

No patient data: two synthetic chest radiographs (``devkit.synthetic``, one with a
planted nodule), two of pydicom's own test files (a CT and a JPEG-LS compressed MR, to
show that decoding is not limited to the synthetic kind) and one file that only looks
like DICOM by its name, to show a rejection. ``manifest.json`` says what the pipeline
must do with each; ``make demo`` checks it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from pydicom.data import get_testdata_file

from devkit.synthetic import make_radiograph, to_dicom_dataset

HERE = Path(__file__).resolve().parent
SEED = 20240131


def main() -> None:
    rng = np.random.default_rng(SEED)
    manifest = []
    for name, nodule in (("chest-pa-nodule.dcm", True), ("chest-pa-clear.dcm", False)):
        sample = make_radiograph(rng, size=256, nodule=nodule)
        ds = to_dicom_dataset(sample.image, modality="DX", patient_id="DEMO-0001", bits=12)
        ds.save_as(HERE / name, enforce_file_format=True)
        manifest.append(
            {
                "file": name,
                "expect": "completed",
                "about": "synthetic radiograph, nodule" if nodule else "synthetic radiograph, no nodule",
            }
        )
    for name, source, about in (
        ("ct-small.dcm", "CT_small.dcm", "pydicom test file, CT, 128x128, 16-bit"),
        ("mr-small-jpegls.dcm", "MR_small_jpeg_ls_lossless.dcm", "pydicom test file, MR, JPEG-LS lossless"),
    ):
        path = get_testdata_file(source)
        if path is None:
            raise SystemExit(f"pydicom test file {source} is missing")
        shutil.copyfile(path, HERE / name)
        manifest.append({"file": name, "expect": "completed", "about": about})
    (HERE / "referral-letter.dcm").write_text(
        "Referral letter, not an image: a text file uploaded with a .dcm name by mistake.\n"
    )
    manifest.append(
        {
            "file": "referral-letter.dcm",
            "expect": "rejected",
            "reason": "not_dicom",
            "about": "text file named .dcm",
        }
    )
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
