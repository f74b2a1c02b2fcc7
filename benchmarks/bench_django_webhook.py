"""Latency of django-dicom-results' webhook under gunicorn, as the local stack runs it:
new results, duplicates, refused signatures and a burst of concurrent duplicates, on SQLite
and (with ``--postgres``) on a throw-away PostgreSQL server, side by side in one run.

    .venv/bin/python benchmarks/bench_django_webhook.py [--n 200] [--postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from gpu_service.results.webhook_signature import new_secret, signed_headers
from infra.local import viewer
from infra.local.emulators import free_port, stop_process_group, wait_http
from infra.local.stack_config import INHERITED_ENV
from infra.local.supervision import inherited_env

REPO = Path(__file__).resolve().parents[1]


def _record(i: int) -> bytes:
    name = f"bench/{i}.dcm"
    return json.dumps({
        "schema": "dicom-inference-result/1", "status": "completed", "correlation_id": f"{i:032x}",
        "prediction": {"label": "nodule", "score": 0.9, "scores": {"nodule": 0.9, "normal": 0.1}},
        "image_uri": f"gs://b/bench/{i}.png",
        "explanation": {"method": "lime", "mask_uri": f"gs://b/bench/{i}.lime.png",
                        "overlay_uri": f"gs://b/bench/{i}.overlay.png"},
        "source": {"bucket": "b", "name": name, "uri": f"gs://b/{name}", "generation": "1"},
        "model": {"name": "m", "version": "1", "sha256": "0" * 64},
        "timings_ms": {"predict": 1.0}, "completed_at": "2026-11-30T00:00:00Z",
    }).encode()  # fmt: skip


def _ms(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=20)
    return f"p50 {statistics.median(samples):6.1f}  p95 {q[18]:6.1f}"


def run(n: int, database_url: str | None) -> dict[str, str]:
    secret = new_secret()
    root = Path(tempfile.mkdtemp(prefix="bench-django-"))
    port = free_port()
    env = {
        **inherited_env(os.environ, INHERITED_ENV),
        "WEBHOOK_SECRET": secret,
        "WEBHOOK_LOG": str(root / "hooks.jsonl"),
        **viewer.site_env(root, "bench-password"),
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    viewer.prepare(env, REPO)
    log = (root / "django.log").open("ab")
    proc = subprocess.Popen(viewer.command("127.0.0.1", port, Path(sys.executable).parent), cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}{viewer.WEBHOOK_PATH}"
    session = requests.Session()

    def post(body: bytes, key: str, key_secret: str = secret) -> tuple[int, float]:
        headers = signed_headers(key_secret, body, webhook_id=key, correlation_id="c" * 32)
        t0 = time.perf_counter()
        status = session.post(url, data=body, headers=headers, timeout=30).status_code
        return status, (time.perf_counter() - t0) * 1000

    try:
        wait_http(f"http://127.0.0.1:{port}{viewer.HEALTH_PATH}", 60, proc, root / "django.log")
        post(_record(-1), "warm-up")
        results = {}
        for name, calls in (
            ("new result (201)", [(_record(i), f"new-{i}", secret) for i in range(n)]),
            ("duplicate (200)", [(_record(i), f"new-{i}", secret) for i in range(n)]),
            ("forged (401)", [(_record(i), f"forged-{i}", new_secret()) for i in range(n)]),
        ):
            timings = [post(*call) for call in calls]
            assert len({s for s, _ in timings}) == 1, {s for s, _ in timings}
            results[name] = _ms([ms for _, ms in timings])
        body = _record(10_000)
        with ThreadPoolExecutor(max_workers=20) as pool:
            t0 = time.perf_counter()
            statuses = list(pool.map(lambda _: post(body, "burst")[0], range(20)))
            burst_ms = (time.perf_counter() - t0) * 1000
        assert sorted(statuses) == [200] * 19 + [201], statuses
        results["20 concurrent duplicates"] = f"all done in {burst_ms:6.1f} ms, one row"
        return results
    finally:
        stop_process_group(proc.pid)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--postgres", action="store_true", help="also on a throw-away PostgreSQL server")
    args = parser.parse_args()
    columns = {"SQLite": run(args.n, None)}
    if args.postgres:
        from devkit.postgres_server import PostgresServer

        server = PostgresServer().start()
        try:
            columns["PostgreSQL"] = run(args.n, server.url)
        finally:
            server.stop()
    threads = viewer.THREADS
    print(f"webhook latency, {args.n} sequential calls each, one gunicorn worker x {threads} threads (ms)")
    width = max(len(k) for k in next(iter(columns.values())))
    print(f"{'':<{width}}  " + "  ".join(f"{c:<34}" for c in columns))
    for row in next(iter(columns.values())):
        print(f"{row:<{width}}  " + "  ".join(f"{columns[c][row]:<34}" for c in columns))


if __name__ == "__main__":
    main()
