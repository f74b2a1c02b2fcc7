"""``make demo``: the bundled samples through the whole local pipeline, in one command.

Starts the local stack (or uses the one ``make up`` left running), uploads ``samples/*.dcm``
with ``gcloud storage cp`` exactly as a user would, waits until every file has its outcome
(a webhook for an image, a rejection record for anything else), prints one row per file,
copies the overlays to ``.local/out/`` and stops the stack it started (``--keep`` /
``make demo KEEP=1`` leaves it running). Exits non-zero when an outcome differs from
``samples/manifest.json`` or does not arrive in time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from infra.local import demo_dicom, demo_traces
from infra.local.emulators import private_gcloud_env
from infra.local.stack import REPO, Stack, StackConfig, StackError, exit_on_termination
from pipeline_common import naming


@dataclass
class UploadOutcome:
    file: str
    object_name: str
    status: str  # completed | failed | rejected
    record: dict[str, Any]
    seconds: float | None


def read_webhooks(path: Path | str) -> list[dict[str, Any]]:
    """Accepted webhook calls, oldest first. Whole lines only: a line the receiver is still
    appending (no newline yet) is left for the next read (bench_load.py read one half-written
    under load)."""
    p = Path(path)
    if not p.exists():
        return []
    complete = p.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def storage_client(env: dict[str, str]):
    """A Cloud Storage client for the stack's fake-gcs-server, whatever this process's environment says."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project=env["GOOGLE_CLOUD_PROJECT"],
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": env["STORAGE_EMULATOR_HOST"]},
    )


def wait_for_outcomes(
    env: dict[str, str],
    bucket: str,
    object_names: dict[str, str],
    timeout_s: float,
    progress: bool = False,
) -> dict[str, UploadOutcome]:
    """Wait until each uploaded object has a webhook or a rejection record; returns those found."""
    bkt = storage_client(env).bucket(bucket)
    outcomes: dict[str, UploadOutcome] = {}
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    last_report = 0.0
    while True:
        hooks = {h["body"]["source"]["name"]: h for h in read_webhooks(env["WEBHOOK_LOG"]) if h.get("body")}
        for file, name in object_names.items():
            if file in outcomes:
                continue
            hook = hooks.get(name)
            source = bkt.get_blob(name)
            uploaded = source.time_created.timestamp() if source and source.time_created else None
            if hook is not None:
                received = _parse_time(hook["received_at"])
                seconds = received - uploaded if received and uploaded else None
                outcomes[file] = UploadOutcome(file, name, hook["body"]["status"], hook["body"], seconds)
                continue
            rejection = bkt.get_blob(naming.output_name(name, naming.REJECTION_SUFFIX))
            if rejection is not None:
                record = json.loads(rejection.download_as_bytes())
                created = rejection.time_created.timestamp() if rejection.time_created else None
                seconds = created - uploaded if created and uploaded else None
                outcomes[file] = UploadOutcome(file, name, "rejected", record, seconds)
        if len(outcomes) == len(object_names) or time.monotonic() > deadline:
            return outcomes
        if progress and time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            print(
                f"  ... {len(outcomes)}/{len(object_names)} done after {time.monotonic() - started:.0f}s",
                flush=True,
            )
        time.sleep(1.0)


def gcloud_cp(
    sources: list[Path | str], destination: str, env: dict[str, str], timeout_s: float = 300
) -> None:
    """Upload exactly as a user would (``gcloud storage cp``), against the local bucket, with the
    stack's private gcloud configuration and never waiting on a prompt."""
    cmd = ["gcloud", "storage", "cp", *map(str, sources), destination]
    run_env = {**private_gcloud_env(Path(env["CLOUDSDK_CONFIG"])), **env}
    try:
        result = subprocess.run(
            cmd,
            env=run_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{' '.join(cmd)} did not finish in {timeout_s:.0f}s") from exc
    if result.returncode != 0:
        raise StackError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}")


def format_table(outcomes: list[UploadOutcome]) -> str:
    header = ("file", "modality", "prediction", "score", "stability", "samples", "mask URI", "seconds")
    rows = []
    for o in outcomes:
        r = o.record
        stability = samples = "-"
        if o.status == "completed":
            prediction = (r.get("prediction") or {}).get("label", "?")
            score = f"{(r.get('prediction') or {}).get('score', 0):.3f}"
            explanation = r.get("explanation") or {}
            mask = explanation.get("mask_uri") or "-"
            if explanation.get("stability") is not None:
                stability = f"{explanation['stability']:.2f}"
            samples = str(explanation.get("samples_used", "-"))
        elif o.status == "failed":
            prediction, score, mask = f"failed: {(r.get('error') or {}).get('code')}", "-", "-"
        else:
            prediction, score, mask = f"rejected: {r.get('reason')}", "-", "-"
        modality = r.get("study_modality") or "-"
        seconds = f"{o.seconds:.1f}" if o.seconds is not None else "-"
        rows.append((o.file, modality, prediction, score, stability, samples, mask, seconds))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def copy_overlays(env: dict[str, str], outcomes: list[UploadOutcome], out_dir: Path) -> list[Path]:
    client = storage_client(env)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for o in outcomes:
        explanation = (o.record.get("explanation") or {}) if o.status == "completed" else {}
        for key, suffix in (("overlay_uri", naming.OVERLAY_SUFFIX), ("heatmap_uri", naming.HEATMAP_SUFFIX)):
            uri = explanation.get(key)
            if not uri:
                continue
            bucket, _, name = uri.removeprefix("gs://").partition("/")
            target = out_dir / (Path(naming.stem(o.file)).name + suffix)
            client.bucket(bucket).blob(name).download_to_filename(str(target))
            written.append(target)
    return written


def _manifest(samples: Path) -> dict[str, dict[str, Any]]:
    path = samples / "manifest.json"
    if not path.exists():
        return {}
    return {entry["file"]: entry for entry in json.loads(path.read_text())}


def _surprises(outcomes: dict[str, UploadOutcome], files: list[str], manifest: dict[str, dict]) -> list[str]:
    problems = []
    for file in files:
        outcome = outcomes.get(file)
        expected = manifest.get(file, {})
        if outcome is None:
            problems.append(f"{file}: no webhook and no rejection record arrived")
            continue
        want = expected.get("expect")
        if want and outcome.status != want:
            detail = (outcome.record.get("error") or {}).get("message") or outcome.record.get("message") or ""
            problems.append(f"{file}: expected {want}, got {outcome.status} {detail}".rstrip())
        elif (
            want == "rejected"
            and expected.get("reason")
            and outcome.record.get("reason") != expected["reason"]
        ):
            problems.append(
                f"{file}: expected rejection {expected['reason']}, got {outcome.record.get('reason')}"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the stack running (make down stops it)")
    parser.add_argument("--samples", default=str(REPO / "samples"))
    parser.add_argument("--root", default=os.environ.get("LOCAL_ROOT", str(REPO / ".local")))
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("DEMO_TIMEOUT_S", "900")))
    args = parser.parse_args(argv)

    samples = Path(args.samples)
    files = sorted(p for p in samples.glob("*.dcm"))
    if not files:
        print(f"no *.dcm files in {samples}", file=sys.stderr)
        return 1
    try:
        stack = Stack(StackConfig.from_env(args.root))
    except StackError as exc:
        print(f"DEMO FAILED: {exc}", file=sys.stderr)
        return 2
    exit_on_termination()
    log_dir = stack.config.log_dir
    started_here = False
    exit_code = 1
    env: dict[str, str] = {}
    try:
        if stack.running():
            env = json.loads(stack.config.state_file.read_text())["env"]
            print(f"using the local stack already running from {stack.config.root}")
        else:
            print(
                f"starting the local stack (logs: {log_dir}); the model loads first, this takes a minute ..."
            )
            started_here = True
            env = stack.up()
            print(f"stack up in {stack.started_in_s:.0f}s")

        run = datetime.now().strftime("%Y%m%d-%H%M%S")
        prefix = f"demo/{run}/"
        destination = f"gs://{env['UPLOAD_BUCKET']}/{prefix}"
        print(f"gcloud storage cp {samples}/*.dcm {destination}")
        gcloud_cp(files, destination, env)
        names = {p.name: prefix + p.name for p in files}
        print(f"waiting for {len(files)} outcomes (timeout {args.timeout:.0f}s) ...", flush=True)
        outcomes = wait_for_outcomes(env, env["UPLOAD_BUCKET"], names, args.timeout, progress=True)

        ordered = [outcomes[p.name] for p in files if p.name in outcomes]
        print()
        print(format_table(ordered))
        out_dir = stack.config.root / "out"
        written = copy_overlays(env, ordered, out_dir)
        print(f"\n{len(written)} overlays and heat maps copied to {out_dir}/")
        print(f"webhooks received: {env['WEBHOOK_LOG']}")
        dicom_lines, dicom_problems = demo_dicom.report(env, ordered)
        print("\n" + "\n".join(dicom_lines))
        print("\n" + "\n".join(demo_traces.report(stack.config.trace_file, ordered)))

        problems = _surprises(outcomes, [p.name for p in files], _manifest(samples)) + dicom_problems
        if problems:
            print("\nDEMO FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
            print(f"see the logs in {log_dir}/", file=sys.stderr)
        else:
            exit_code = 0
    except Exception as exc:  # noqa: BLE001 - say what failed and where the logs are, then clean up
        message = str(exc) if isinstance(exc, StackError) else f"{type(exc).__name__}: {exc}"
        print(f"\nDEMO FAILED: {message}\nsee the logs in {log_dir}/", file=sys.stderr)
    finally:
        if started_here and not args.keep:
            print("stopping the local stack (make demo KEEP=1 keeps it running)")
            stack.down()
        elif started_here:
            print(f"the stack keeps running: source {stack.config.env_file}; make down stops it")
        if env.get("VIEWER_URL") and stack.running():
            url, user, password = env["VIEWER_URL"], env["VIEWER_USER"], env["VIEWER_PASSWORD"]
            print(f"results viewer: {url}  user {user}  password {password}")
            if env.get("REVIEWER_URL"):
                print(f"review as a radiologist: {env['REVIEWER_URL']}  user {env['REVIEWER_USER']}  "
                      f"password {password}")  # fmt: skip
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
