"""OHIF, the radiologist's viewer, in the local stack: the prebuilt ``dist/`` of the npm package
``@ohif/app`` (pinned below) served on one origin with Orthanc's DICOMweb, by a small reverse proxy.

Local stack only, never product code. ``python -m infra.local.ohif install`` (``make ohif``, which
``make up`` and ``make demo`` run) fetches the package's tarball once with ``npm pack``, checks its
integrity against the pin and unpacks ``dist/`` into ``.local/ohif/<version>/`` (ignored by git,
kept by ``make up``); nothing is downloaded at run time. ``python -m infra.local.ohif`` serves:

- ``/dicom-web/...``: proxied to the stack's Orthanc (``ORTHANC_URL``), so OHIF's DICOMweb
  requests are same-origin (no CORS, which Orthanc does not answer);
- ``/app-config.js``: OHIF's configuration, one DICOMweb data source at this origin's
  ``/dicom-web``;
- ``/healthz``; any other path: a file of ``dist/``, else ``index.html`` (OHIF routes in the page).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "@ohif/app"
VERSION = "3.13.2"
# `npm view @ohif/app@3.13.2 dist.integrity`: the tarball installed must be this one.
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
INSTALL_DIR = REPO / ".local" / "ohif"
DICOMWEB_ROOT = "/dicom-web"
HEALTH_PATH = "/healthz"
INSTALL_HINT = "make ohif (npm installs the pinned @ohif/app; needs npm and the npm registry once)"
# Headers a proxy does not pass on (RFC 9110 7.6.1), plus those it sets itself.
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
_TYPES = {
    ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".html": "text/html",
    ".json": "application/json", ".wasm": "application/wasm", ".svg": "image/svg+xml",
    ".png": "image/png", ".ico": "image/x-icon", ".woff2": "font/woff2", ".woff": "font/woff",
    ".ttf": "font/ttf", ".xml": "application/xml", ".txt": "text/plain", ".onnx": "application/octet-stream",
}  # fmt: skip


def dist_dir(install_dir: Path = INSTALL_DIR) -> Path:
    return install_dir / VERSION / "dist"


def missing(dist: Path) -> str | None:
    """What is missing to serve OHIF, as a message a person can act on; None if nothing."""
    if not (dist / "index.html").is_file():
        return f"OHIF {VERSION} is not installed in {dist.parent}: {INSTALL_HINT}"
    return None


def study_url(ohif_url: str, study_instance_uid: str) -> str:
    """The OHIF link that opens one study in its basic viewer."""
    return f"{ohif_url}/viewer?StudyInstanceUIDs={quote(study_instance_uid)}"


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def install(install_dir: Path = INSTALL_DIR, npm: str = "npm") -> Path:
    """Unpack the pinned package's ``dist/`` once; returns it. Raises RuntimeError with the reason."""
    dist = dist_dir(install_dir)
    if missing(dist) is None:
        return dist
    exe = shutil.which(npm)
    if exe is None:
        raise RuntimeError("npm not found: apt-get install npm (Debian/Ubuntu), then make ohif")
    install_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=install_dir) as tmp:
        run = subprocess.run(
            [exe, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", tmp, "--silent"],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=900,
        )
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if run.returncode != 0 or len(tarballs) != 1:
            raise RuntimeError(f"npm pack {PACKAGE}@{VERSION} failed: {run.stderr.strip()[-2000:]}")
        found = _integrity(tarballs[0].read_bytes())
        if found != INTEGRITY:
            raise RuntimeError(f"{PACKAGE}@{VERSION}: integrity {found} is not the pinned {INTEGRITY}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            archive.extractall(unpacked, members=members, filter="data")
        target = dist.parent
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        (unpacked / "package" / "dist").rename(dist)
    return dist


def app_config(friendly_name: str = "Local stack (Orthanc)") -> str:
    """OHIF's configuration: one DICOMweb data source, this origin's ``/dicom-web`` (Orthanc)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": friendly_name,
            "name": "orthanc",
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    # The roots are this page's origin: whatever host and port the browser reached the proxy at.
    return (
        "/* Written by infra/local/ohif.py: OHIF on the local stack's Orthanc. */\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        "(function (c) {\n"
        f"  const root = window.location.origin + {json.dumps(DICOMWEB_ROOT)};\n"
        "  Object.assign(c, {wadoUriRoot: root, qidoRoot: root, wadoRoot: root});\n"
        "})(window.config.dataSources[0].configuration);\n"
    )


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler API
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        # Cross-origin isolation: OHIF's volume loading uses SharedArrayBuffer when it may.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _proxy(self) -> None:
        target = urlsplit(self.server.orthanc_url)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
        try:
            connection.request(self.command, target.path.rstrip("/") + self.path, body=body, headers=headers)
            answer = connection.getresponse()
            payload = answer.read()
        except OSError as exc:
            self._send(HTTPStatus.BAD_GATEWAY, f"Orthanc unreachable: {exc}".encode(), "text/plain")
            return
        finally:
            connection.close()
        passed = {k: v for k, v in answer.getheaders() if k.lower() not in _HOP_BY_HOP | {"content-type"}}
        content_type = answer.getheader("Content-Type", "application/octet-stream")
        self._send(answer.status, payload, content_type, passed)

    def _static(self) -> None:
        dist: Path = self.server.dist
        relative = urlsplit(self.path).path.lstrip("/")
        path = (dist / relative).resolve()
        if not relative or not path.is_relative_to(dist) or not path.is_file():
            path = dist / "index.html"  # OHIF's own routes (/viewer, /segmentation, ...)
        content_type = _TYPES.get(path.suffix.lower(), "application/octet-stream")
        cache = "no-cache" if path.name == "index.html" else "public, max-age=3600"
        self._send(HTTPStatus.OK, path.read_bytes(), content_type, {"Cache-Control": cache})

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        if path == DICOMWEB_ROOT or path.startswith(DICOMWEB_ROOT + "/"):
            self._proxy()
        elif self.command not in ("GET", "HEAD"):
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"", "text/plain")
        elif path == HEALTH_PATH:
            self._send(HTTPStatus.OK, b"ok", "text/plain")
        elif path == "/app-config.js":
            self._send(HTTPStatus.OK, self.server.config_js, "text/javascript", {"Cache-Control": "no-cache"})
        else:
            self._static()

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dist: Path
    orthanc_url: str
    config_js: bytes
    verbose: bool


def make_server(dist: Path, orthanc_url: str, host: str = "127.0.0.1", port: int = 0) -> _Server:
    problem = missing(dist)
    if problem:
        raise FileNotFoundError(problem)
    server = _Server((host, port), _Handler)
    server.dist = dist.resolve()
    server.orthanc_url = orthanc_url
    server.config_js = app_config().encode()
    server.verbose = False
    return server


def command(python: str, port: int, dist: Path) -> list[str]:
    """The stack's command for the viewer (``ORTHANC_URL`` from the environment)."""
    return [python, "-m", "infra.local.ohif", "serve", "--port", str(port), "--dist", str(dist)]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m infra.local.ohif", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("install", help=f"unpack {PACKAGE}@{VERSION}'s dist/ into {INSTALL_DIR}")
    serve = sub.add_parser("serve", help="serve OHIF and proxy /dicom-web to ORTHANC_URL")
    serve.add_argument("--port", type=int, default=int(os.environ.get("OHIF_PORT") or 8087))
    serve.add_argument("--dist", type=Path, default=dist_dir())
    args = parser.parse_args(argv)
    if args.action == "install":
        try:
            print(f"OHIF {VERSION}: {install()}")
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"cannot install OHIF: {exc}", file=sys.stderr)
            return 1
        return 0
    orthanc_url = os.environ.get("ORTHANC_URL")
    if not orthanc_url:
        print("ORTHANC_URL is required: the Orthanc whose /dicom-web OHIF shows", file=sys.stderr)
        return 2
    server = make_server(args.dist, orthanc_url, port=args.port)
    line = {"message": "OHIF listening", "port": server.server_port, "orthanc": orthanc_url}
    print(json.dumps(line), flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
