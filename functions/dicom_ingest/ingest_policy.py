"""Which parsed images the pipeline accepts: decodable, of an allowed modality, within the pixel budget."""

from __future__ import annotations

from pydicom import uid as dcm_uid

from dicom_ingest.header_parse import DicomHeader
from dicom_ingest.rejection import (
    CS_VALUE,
    IMAGE_TOO_LARGE,
    MISSING_REQUIRED_ATTRIBUTE,
    MODALITY_NOT_ALLOWED,
    UI_VALUE,
    UNSUPPORTED_TRANSFER_SYNTAX,
    Rejection,
    vr_safe,
)

# What the inference service can decode: pydicom's native decoders (numpy) and the
# pylibjpeg plugins it installs (libjpeg, openjpeg, rle). The function itself has no
# codecs, so this is a list; tests check it against the decoders pydicom reports.
DECODABLE_TRANSFER_SYNTAXES: frozenset[str] = frozenset(
    {
        dcm_uid.ImplicitVRLittleEndian,
        dcm_uid.ExplicitVRLittleEndian,
        dcm_uid.DeflatedExplicitVRLittleEndian,
        dcm_uid.ExplicitVRBigEndian,
        dcm_uid.RLELossless,
        dcm_uid.JPEGBaseline8Bit,
        dcm_uid.JPEGExtended12Bit,
        dcm_uid.JPEGLossless,
        dcm_uid.JPEGLosslessSV1,
        dcm_uid.JPEGLSLossless,
        dcm_uid.JPEGLSNearLossless,
        dcm_uid.JPEG2000Lossless,
        dcm_uid.JPEG2000,
        dcm_uid.HTJ2KLossless,
        dcm_uid.HTJ2KLosslessRPCL,
        dcm_uid.HTJ2K,
    }
)

# Attributes without which no decoder can turn Pixel Data into an image.
REQUIRED_IMAGE_ATTRIBUTES = ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")


def check(
    header: DicomHeader, allowed_modalities: frozenset[str] | None, max_pixels: int
) -> Rejection | None:
    """Apply the pipeline's policy to a parsed image header; None means accepted."""
    dicom = header.dicom
    invalid = [k for k in dicom.get("_invalid", []) if k in ("Rows", "Columns", "NumberOfFrames")]
    missing = [k for k in REQUIRED_IMAGE_ATTRIBUTES if dicom.get(_KEY[k]) is None and k not in invalid]
    if missing or invalid:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing))
        if invalid:
            parts.append("not an integer: " + ", ".join(invalid))
        return Rejection(
            MISSING_REQUIRED_ATTRIBUTE,
            "The image cannot be decoded: " + "; ".join(parts) + ".",
            {"missing": missing, "invalid": invalid},
        )
    modality = dicom.get("modality")
    if allowed_modalities is not None:
        if not modality:
            return Rejection(
                MISSING_REQUIRED_ATTRIBUTE,
                "Modality (0008,0060) is missing, so it cannot be checked against ALLOWED_MODALITIES "
                "(set ALLOWED_MODALITIES=* to accept any).",
                {"missing": ["Modality"], "invalid": []},
            )
        if modality.upper() not in allowed_modalities:
            return Rejection(
                MODALITY_NOT_ALLOWED,
                f"Modality {vr_safe(modality, CS_VALUE)} is not processed here "
                f"(allowed: {', '.join(sorted(allowed_modalities))}).",
                {"modality": vr_safe(modality, CS_VALUE)},
            )
    ts = dicom["transfer_syntax_uid"]
    if ts not in DECODABLE_TRANSFER_SYNTAXES:
        safe_ts = vr_safe(ts, UI_VALUE)
        name = dcm_uid.UID(safe_ts).name if safe_ts and UI_VALUE.fullmatch(safe_ts) else "missing"
        return Rejection(
            UNSUPPORTED_TRANSFER_SYNTAX,
            f"Pixel Data encoded as {name} ({safe_ts}) cannot be decoded by the pipeline.",
            {"transfer_syntax_uid": safe_ts},
        )
    frames = dicom.get("number_of_frames") or 1
    pixels = dicom["rows"] * dicom["columns"] * frames
    if dicom["rows"] <= 0 or dicom["columns"] <= 0 or frames <= 0:
        return Rejection(
            MISSING_REQUIRED_ATTRIBUTE,
            "Rows, Columns and NumberOfFrames must be positive.",
            {"missing": [], "invalid": ["Rows", "Columns", "NumberOfFrames"]},
        )
    if pixels > max_pixels:
        return Rejection(
            IMAGE_TOO_LARGE,
            f"The image has {pixels} pixels ({dicom['rows']} x {dicom['columns']} x {frames} frames), "
            f"above the budget of {max_pixels} (MAX_PIXELS).",
            {"pixels": pixels, "max_pixels": max_pixels},
        )
    return None


_KEY = {
    "Rows": "rows",
    "Columns": "columns",
    "BitsAllocated": "bits_allocated",
    "PhotometricInterpretation": "photometric_interpretation",
}
