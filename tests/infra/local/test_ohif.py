"""OHIF in the local stack (infra/local/ohif.py), without a browser: the reverse proxy serves the
dist's files, its own app-config.js and OHIF's routes, and passes /dicom-web on to Orthanc
(here an in-process stand-in); the install checks the pinned integrity. And the Eventarc
stand-in's PACS role (infra/local/eventarc_bridge.store_source): DICOM sources only."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from infra.local import eventarc_bridge, ohif


class _Upstream(BaseHTTPRequestHandler):
    """Answers every request with what it received; serves objects for the GCS JSON API."""

    seen: list[dict[str, Any]] = []
    objects: dict[str, bytes] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        )
        for name, data in self.objects.items():
            if self.path.startswith(name):
                payload, content_type = data, "application/octet-stream"
                break
        else:
            payload = json.dumps({"method": self.command, "path": self.path}).encode()
            content_type = "application/dicom+json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Upstream", "yes")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer


def _serve(server: ThreadingHTTPServer) -> str:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def upstream() -> Iterator[str]:
    _Upstream.seen, _Upstream.objects = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    yield _serve(server)
    server.shutdown()


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text("<html>OHIF</html>")
    (root / "app.bundle.js").write_text("console.log(1)")
    (root / "codec.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("outside the dist")
    return root


def test_one_origin_serves_the_dist_the_config_and_proxies_dicomweb(dist: Path, upstream: str) -> None:
    server = ohif.make_server(dist, upstream)
    base = _serve(server)
    try:
        assert requests.get(base + ohif.HEALTH_PATH, timeout=5).text == "ok"
        js = requests.get(base + "/app.bundle.js", timeout=5)
        assert js.headers["Content-Type"] == "text/javascript" and js.text == "console.log(1)"
        assert requests.get(base + "/codec.wasm", timeout=5).headers["Content-Type"] == "application/wasm"
        # OHIF's own routes, and anything outside the dist, get the page.
        for path in (
            "/viewer?StudyInstanceUIDs=1.2.3",
            "/segmentation",
            "/../secret.txt",
            "/%2e%2e/secret.txt",
        ):
            answer = requests.get(base + path, timeout=5)
            assert answer.status_code == 200 and answer.text == "<html>OHIF</html>", path
        config = requests.get(base + "/app-config.js", timeout=5).text
        assert "window.location.origin" in config and '"/dicom-web"' in config
        assert "cloudfront" not in config  # not OHIF's public demo server

        qido = requests.get(
            base + "/dicom-web/studies?PatientID=X", headers={"Accept": "application/dicom+json"}, timeout=5
        )
        assert qido.status_code == 200 and qido.headers["X-Upstream"] == "yes"
        assert qido.json() == {"method": "GET", "path": "/dicom-web/studies?PatientID=X"}
        assert _Upstream.seen[-1]["headers"]["Accept"] == "application/dicom+json"
        stow = requests.post(base + "/dicom-web/studies", data=b"part10", timeout=5)
        assert stow.json()["method"] == "POST" and _Upstream.seen[-1]["body"] == b"part10"
        assert requests.post(base + "/app-config.js", timeout=5).status_code == 405
    finally:
        server.shutdown()


def test_study_link_and_a_missing_install_says_how(tmp_path: Path) -> None:
    assert ohif.study_url("http://127.0.0.1:8087", "1.2.840.1") == (
        "http://127.0.0.1:8087/viewer?StudyInstanceUIDs=1.2.840.1"
    )
    problem = ohif.missing(tmp_path / "nothing")
    assert problem and "make ohif" in problem
    with pytest.raises(FileNotFoundError, match="make ohif"):
        ohif.make_server(tmp_path / "nothing", "http://127.0.0.1:1")


def test_install_refuses_a_tarball_that_is_not_the_pinned_one(tmp_path: Path) -> None:
    fake_npm = tmp_path / "npm"
    # `npm pack ... --pack-destination DIR`: writes a tarball that is not the pinned package.
    fake_npm.write_text(
        '#!/bin/sh\nwhile [ "$1" != "--pack-destination" ]; do shift; done\necho x > "$2/app.tgz"\n'
    )
    fake_npm.chmod(0o755)
    with pytest.raises(RuntimeError, match="integrity"):
        ohif.install(tmp_path / "ohif", npm=str(fake_npm))
    assert ohif.missing(ohif.dist_dir(tmp_path / "ohif"))


def test_the_pacs_stand_in_stores_dicom_sources_only(upstream: str) -> None:
    dicom = b"\0" * 128 + b"DICM" + b"rest of the file"
    _Upstream.objects = {
        "/storage/v1/b/uploads/o/ward3%2Fscan.dcm": dicom,
        "/storage/v1/b/uploads/o/letter.dcm": b"Dear",
    }

    def store(name: str, metadata: dict | None = None) -> str:
        data = {"bucket": "uploads", "name": name, "generation": "7", "metadata": metadata}
        return eventarc_bridge.store_source(data, upstream, upstream + "/dicom-web")

    assert store("ward3/scan.dcm") == "source stored in the PACS"
    fetch, stow = _Upstream.seen[-2:]
    assert fetch["path"] == "/storage/v1/b/uploads/o/ward3%2Fscan.dcm?alt=media&generation=7"
    assert stow["method"] == "POST" and stow["path"] == "/dicom-web/studies"
    assert stow["headers"]["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert dicom in stow["body"]

    seen = len(_Upstream.seen)
    assert store("letter.dcm") == "not a DICOM file: left out of the PACS"
    assert store("ward3/scan.seg.dcm").startswith("not a source")
    assert store("ward3/scan.dcm", {"dicom-pipeline-output": "seg"}).startswith("not a source")
    assert store("ward3/scan.result.json").startswith("not a source")
    assert [s["method"] for s in _Upstream.seen[seen:]] == ["GET"]  # the letter was read, not stored


def test_demo_prints_each_completed_files_ohif_link(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from infra.local import demo_dicom, orthanc

    monkeypatch.setattr(orthanc, "study_id", lambda base, study: "abc")
    series = [{"modality": "DX", "description": "", "instances": "1", "series_instance_uid": "1.1"}]
    monkeypatch.setattr(orthanc, "study_series", lambda url, study: series)
    record = {"dicom": {"study_instance_uid": "1.2.3", "series_instance_uids": {}, "absent": {}}}
    outcomes = [
        SimpleNamespace(file="a.dcm", status="completed", record=record),
        SimpleNamespace(file="b.dcm", status="rejected", record={}),
    ]
    env = {"ORTHANC_URL": "http://o", "DICOMWEB_URL": "http://o/dicom-web", "OHIF_URL": "http://v"}
    lines, problems = demo_dicom.report(env, outcomes)
    assert problems == []
    assert "    OHIF http://v/viewer?StudyInstanceUIDs=1.2.3" in lines
    assert "    DX    1 instance(s)" in lines  # no trailing blanks without a description
    assert not any("b.dcm" in line for line in lines)
