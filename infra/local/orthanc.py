"""Orthanc as the local stack's DICOMweb store (the Cloud Healthcare API's stand-in).

The Debian packages ``orthanc`` and ``orthanc-dicomweb``: ``/usr/sbin/Orthanc`` with the DICOMweb
plugin, HTTP only from loopback, no DICOM (DIMSE) listener, no authentication, its storage and
index under the stack's root (``.local/orthanc/``, emptied by each ``make up``).

``refuse_study_prefix`` makes the store refuse (HTTP 403, an Orthanc Lua HTTP filter) a STOW-RS
to any study whose UID starts with it: how the end-to-end tests show a store rejecting objects.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DICOMWEB_ROOT = "/dicom-web"
INSTALL_HINT = "apt-get install orthanc orthanc-dicomweb"


def binary() -> str | None:
    found = shutil.which("Orthanc")
    if found:
        return found
    return ORTHANC_BINARY if Path(ORTHANC_BINARY).exists() else None


def missing() -> str | None:
    """What is missing to run Orthanc with DICOMweb, as a message a person can act on; None if nothing."""
    if binary() is None:
        return f"Orthanc not found: {INSTALL_HINT} (Debian/Ubuntu)"
    if not Path(DICOMWEB_PLUGIN).exists():
        return f"the Orthanc DICOMweb plugin ({DICOMWEB_PLUGIN}) is missing: {INSTALL_HINT}"
    return None


def lua_filter(refuse_study_prefix: str) -> str:
    prefix = json.dumps(f"{DICOMWEB_ROOT}/studies/{refuse_study_prefix}")  # a valid Lua string literal
    return (
        "function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)\n"
        f"  if method == 'POST' and string.find(uri, {prefix}, 1, true) == 1 then\n"
        "    return false\n"
        "  end\n"
        "  return true\n"
        "end\n"
    )


def write_config(workdir: Path, port: int, refuse_study_prefix: str | None = None) -> Path:
    """Orthanc's configuration for the stack; returns its path (the command's only argument)."""
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "db"
    storage.mkdir(exist_ok=True)
    config = {
        "Name": "dicom-pipeline-local",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "RemoteAccessAllowed": False,  # loopback only
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT + "/", "EnableWado": True},
        "OverwriteInstances": False,
        "StableAge": 1,
    }
    if refuse_study_prefix:
        script = workdir / "refuse.lua"
        script.write_text(lua_filter(refuse_study_prefix))
        config["LuaScripts"] = [str(script)]
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def command(config_path: Path) -> list[str]:
    exe = binary()
    if exe is None:
        raise FileNotFoundError(missing())
    return [exe, str(config_path)]


def urls(base_url: str) -> dict[str, str]:
    """``ORTHANC_URL`` (REST API and Orthanc Explorer) and ``DICOMWEB_URL`` (what the service stores to)."""
    return {"ORTHANC_URL": base_url, "DICOMWEB_URL": base_url + DICOMWEB_ROOT}


def explorer_url(base_url: str, orthanc_study_id: str | None = None) -> str:
    if orthanc_study_id:
        return f"{base_url}/app/explorer.html#study?uuid={orthanc_study_id}"
    return f"{base_url}/app/explorer.html"


def study_id(base_url: str, study_instance_uid: str) -> str | None:
    """Orthanc's own id of a study (what Orthanc Explorer's URL names), from its DICOM UID."""
    import requests

    answer = requests.post(base_url + "/tools/lookup", data=study_instance_uid, timeout=10)
    answer.raise_for_status()
    return next((m["ID"] for m in answer.json() if m.get("Type") == "Study"), None)


def study_series(dicomweb_url: str, study_instance_uid: str) -> list[dict[str, str]]:
    """The study's series as the store holds them (QIDO-RS): modality, description, instances."""
    from dicomweb_client import DICOMwebClient

    def value(item: dict, tag: str) -> str:
        return str((item.get(tag, {}).get("Value") or [""])[0])

    found = DICOMwebClient(dicomweb_url).search_for_series(study_instance_uid=study_instance_uid)
    rows = [
        {
            "modality": value(s, "00080060"),
            "description": value(s, "0008103E"),
            "instances": value(s, "00201209"),
            "series_instance_uid": value(s, "0020000E"),
        }
        for s in found
    ]
    return sorted(rows, key=lambda r: (r["modality"], r["series_instance_uid"]))


def stack_command(root: Path, port: int, refuse_study_prefix: str | None) -> list[str]:
    """The command that runs the stack's store, its configuration written under ``root/orthanc``."""
    return command(write_config(root / "orthanc", port, refuse_study_prefix))
