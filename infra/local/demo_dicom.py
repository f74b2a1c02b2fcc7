"""``make demo``'s DICOM part: per completed file, the study's series as the local DICOMweb store
(Orthanc) holds them, the OHIF link that opens the study in the radiologist's viewer, and the
Orthanc Explorer URL.

A completed record whose objects were stored but that the store does not list is a demo failure.
"""

from __future__ import annotations

from typing import Any

from infra.local import ohif, orthanc


def report(env: dict[str, str], outcomes: list[Any]) -> tuple[list[str], list[str]]:
    """(lines to print, problems) for the completed outcomes."""
    lines: list[str] = []
    problems: list[str] = []
    base, dicomweb_url = env.get("ORTHANC_URL"), env.get("DICOMWEB_URL")
    if not base or not dicomweb_url:
        return ["(no DICOMweb store in this stack)"], problems
    lines.append(f"DICOM objects in the local DICOMweb store ({dicomweb_url}):")
    for o in outcomes:
        if o.status != "completed":
            continue
        dicom = o.record.get("dicom") or {}
        study = dicom.get("study_instance_uid")
        absent = dicom.get("absent") or {}
        if not study:
            lines.append(f"  {o.file}: no DICOM objects ({'; '.join(absent.values()) or 'not built'})")
            continue
        try:
            series = orthanc.study_series(dicomweb_url, study)
            explorer = orthanc.explorer_url(base, orthanc.study_id(base, study))
        except Exception as exc:  # noqa: BLE001 - say what failed, the demo goes on
            problems.append(f"{o.file}: cannot query the DICOMweb store: {type(exc).__name__}: {exc}")
            continue
        lines.append(f"  {o.file}  {explorer}")
        if env.get("OHIF_URL"):
            lines.append(f"    OHIF {ohif.study_url(env['OHIF_URL'], study)}")
        for s in series:
            row = f"    {s['modality']:<4} {s['instances'] or '?':>2} instance(s)  {s['description']}"
            lines.append(row.rstrip())
        for role, why in absent.items():
            lines.append(f"    no {role.upper()}: {why}")
        held = {s["series_instance_uid"] for s in series}
        missing = sorted(
            role for role, uid in (dicom.get("series_instance_uids") or {}).items() if uid not in held
        )
        if (dicom.get("dicomweb") or {}).get("stored") and missing:
            problems.append(f"{o.file}: the store does not list the {', '.join(missing)} series it accepted")
    return lines, problems
