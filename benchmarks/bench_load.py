"""The whole local stack under load: N uploads in one ``gcloud storage cp``, every webhook awaited.

    .venv/bin/python benchmarks/bench_load.py [--n 50] [--size 256] [--timeout 1800]
    .venv/bin/python benchmarks/bench_load.py --n 20 --size 2048
    .venv/bin/python benchmarks/bench_load.py --n 1000 --size 2048 --timeout 7200  # long: see docs

Starts its own local stack (infra.local.stack.Stack) on free ports in a temporary directory, as
the end-to-end tests do, so it never touches a stack ``make up`` left running; stops it at the
end. Writes N synthetic radiographs (devkit/synthetic.py), each of its own study (distinct
study, series and instance UIDs), 12-bit DX, ``--size`` pixels a side, and uploads them all in
ONE ``gcloud storage cp`` call, as a user would. Then waits until each has its webhook.
fake-gcs-server keeps the objects on disk under the temporary directory (``--gcs-backend
filesystem``, the default here): in memory, 1,000 uploads of 2048² need about 24 GiB.

The service runs with its production configuration (LIME's production defaults) unless
``--lime-samples`` is given; the output says which.

Prints:
- throughput: webhooks per second from the start of ``gcloud storage cp`` to the last webhook;
- upload-to-webhook latency (webhook received minus the object's ``timeCreated``): p50, p95, max;
- lost (no webhook by the timeout) and duplicated deliveries (more than one accepted webhook
  for one object in the receiver's log, counted after a settling pause);
- each component's peak RSS: VmRSS summed over the component's process group (every recorded
  component runs in its own session), sampled once a second from /proc.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from devkit.synthetic import make_radiograph, to_dicom_dataset
from infra.local import traces
from infra.local.demo import _parse_time, gcloud_cp, read_webhooks, storage_client
from infra.local.stack import Ports, Stack, StackConfig


def _pgid(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[2])  # state, ppid, pgrp


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Once a second: VmRSS summed over each recorded component's process group; keeps the peak."""

    def __init__(self, components: dict[str, int], interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.components = components  # name -> process group id (the recorded pid)
        self.interval_s = interval_s
        self.peak_kib: dict[str, int] = collections.defaultdict(int)
        self.first_kib: dict[str, int] = {}
        self.last_kib: dict[str, int] = {}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        totals: dict[int, int] = collections.defaultdict(int)
        groups = set(self.components.values())
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pgid = _pgid(int(entry))
            if pgid in groups:
                totals[pgid] += _rss_kib(int(entry))
        for name, pgid in self.components.items():
            kib = totals.get(pgid, 0)
            self.first_kib.setdefault(name, kib)
            self.last_kib[name] = kib
            self.peak_kib[name] = max(self.peak_kib[name], kib)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def write_uploads(directory: Path, n: int, size: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        image = make_radiograph(rng, size=size, nodule=bool(i % 2))
        ds = to_dicom_dataset(image.image, patient_id=f"LOAD-{i:05d}")
        path = directory / f"load-{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def wait_for_webhooks(log: str, wanted: set[str], timeout_s: float, sampler: RssSampler) -> None:
    """Until every object has a webhook (the receiver's log only: nothing polled on the stack).
    Every 10 s a progress line with the inference service's RSS, to see it settle or grow."""
    started = time.monotonic()
    last_report = 0.0
    while True:
        seen = {h["body"]["source"]["name"] for h in read_webhooks(log) if h.get("body")} & wanted
        elapsed = time.monotonic() - started
        if len(seen) == len(wanted) or elapsed > timeout_s:
            return
        if elapsed - last_report >= 10:
            last_report = elapsed
            rss = sampler.last_kib.get("inference-service", 0) / 1024
            print(
                f"  ... {len(seen)}/{len(wanted)} webhooks after {elapsed:.0f}s; service RSS {rss:.0f} MiB",
                flush=True,
            )
        time.sleep(1.0)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50, help="uploads (default 50)")
    parser.add_argument("--size", type=int, default=256, help="pixels a side (e.g. 256, 2048)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for all webhooks")
    parser.add_argument("--settle", type=float, default=15, help="seconds to wait for late duplicates")
    parser.add_argument(
        "--lime-samples", type=int, default=None, help="LIME_NUM_SAMPLES (default: production)"
    )
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument(
        "--gcs-backend",
        choices=("filesystem", "memory"),
        default="filesystem",
        help="fake-gcs-server's backend (default filesystem: RAM stays flat at any N)",
    )
    args = parser.parse_args(argv)

    service_env = {} if args.lime_samples is None else {"LIME_NUM_SAMPLES": str(args.lime_samples)}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        root = Path(tmp)
        uploads_dir = root / "uploads"
        uploads_dir.mkdir()
        t0 = time.monotonic()
        files = write_uploads(uploads_dir, args.n, args.size, args.seed)
        total_mb = sum(p.stat().st_size for p in files) / 1e6
        print(
            f"{args.n} synthetic DX radiographs {args.size}x{args.size}, 12-bit, distinct studies: "
            f"{total_mb:.1f} MB written in {time.monotonic() - t0:.1f}s"
        )
        print(
            "LIME: "
            + (
                "production defaults"
                if args.lime_samples is None
                else f"LIME_NUM_SAMPLES={args.lime_samples} (REDUCED from the production defaults)"
            )
        )

        stack = Stack(
            StackConfig(
                root=root / "stack",
                ports=Ports.free(),
                project="load-project",
                bucket="load-uploads",
                service_env=service_env,
                gcs_backend=args.gcs_backend,
            )
        )
        try:
            t0 = time.monotonic()
            env = stack.up()
            print(
                f"stack up in {time.monotonic() - t0:.0f}s under {root / 'stack'} "
                f"(fake-gcs-server backend: {args.gcs_backend})"
            )
            components = {r["name"]: r["pid"] for r in stack.records}
            sampler = RssSampler(components)
            sampler.start()

            prefix = f"load/{args.size}/"
            destination = f"gs://{env['UPLOAD_BUCKET']}/{prefix}"
            cp_started_wall = time.time()
            t0 = time.monotonic()
            gcloud_cp(files, destination, env, timeout_s=max(300.0, args.n * 5.0))
            cp_s = time.monotonic() - t0
            print(f"gcloud storage cp of {args.n} files ({total_mb:.1f} MB) to {destination}: {cp_s:.1f}s")
            names = {p.name: prefix + p.name for p in files}
            wanted = set(names.values())
            wait_for_webhooks(env["WEBHOOK_LOG"], wanted, args.timeout, sampler)
            time.sleep(args.settle)
            sampler.stop()

            hooks = [h for h in read_webhooks(env["WEBHOOK_LOG"]) if h.get("body")]
            hooks = [h for h in hooks if h["body"]["source"]["name"] in wanted]
            per_object = collections.Counter(h["body"]["source"]["name"] for h in hooks)
            lost = sorted(n for n in wanted if per_object[n] == 0)
            duplicated = {n: c for n, c in per_object.items() if c > 1}
            statuses = collections.Counter(h["body"]["status"] for h in hooks)
            # One listing for the uploads' timeCreated (polling each object would load the stack).
            created = {
                b.name: b.time_created.timestamp()
                for b in storage_client(env).list_blobs(env["UPLOAD_BUCKET"], prefix=prefix)
                if b.name in wanted and b.time_created
            }
            first_hook: dict[str, float] = {}
            for h in hooks:
                t = _parse_time(h["received_at"])
                name = h["body"]["source"]["name"]
                if t is not None and (name not in first_hook or t < first_hook[name]):
                    first_hook[name] = t
            latencies = [first_hook[n] - created[n] for n in first_hook if n in created]
            received = list(first_hook.values())
            last = max((r for r in received if r), default=None)
            elapsed = (last - cp_started_wall) if last else float("nan")
            delivered = len(wanted) - len(lost)

            print()
            print(f"delivered {delivered}/{args.n}; statuses {dict(statuses)}")
            print(
                f"throughput: {delivered / elapsed:.2f} uploads/s ({delivered / elapsed * 3600:.0f}/h), "
                f"{elapsed:.1f}s from the start of gcloud storage cp to the last webhook"
            )
            if latencies:
                print(
                    f"upload-to-webhook: p50 {percentile(latencies, 50):.1f}s  "
                    f"p95 {percentile(latencies, 95):.1f}s  max {max(latencies):.1f}s  "
                    f"(min {min(latencies):.1f}s)"
                )
            keys = {h["body"]["correlation_id"] for h in hooks if h["body"].get("correlation_id")}
            time.sleep(2)  # the span exporters' last batch (every ~1 s)
            print("per-stage times from the uploads' traces (traces.jsonl of this run's stack):")
            print("\n".join(traces.stage_summary(keys, traces.load_spans(stack.config.trace_file))))
            print(
                f"lost: {len(lost)}  duplicated: {len(duplicated)}"
                + (f" {duplicated}" if duplicated else "")
                + (f" lost: {lost[:10]}" if lost else "")
            )
            print("\npeak RSS per component (process group, sampled every 1 s): start -> peak -> end")
            for name in components:
                print(
                    f"  {name:<22} {sampler.first_kib.get(name, 0) / 1024:7.0f} -> "
                    f"{sampler.peak_kib[name] / 1024:7.0f} -> {sampler.last_kib.get(name, 0) / 1024:7.0f} MiB"
                )
            return 0 if not lost and not duplicated else 1
        finally:
            stack.down()


if __name__ == "__main__":
    sys.exit(main())
