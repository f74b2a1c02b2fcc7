"""The hospital side of the local stack: django-dicom-results in a minimal Django project
(``infra/local/results_site``) under gunicorn, with SQLite under the stack's root.

``python -m infra.local.viewer setup`` (run by the stack before it starts gunicorn) applies
the migrations to a fresh database and creates the staff user ``VIEWER_USER`` with the
stack's random ``VIEWER_PASSWORD``; both go to ``.local/stack.env`` with ``VIEWER_URL``.
It also creates ``REVIEWER_USER`` (same password), a staff user in the "radiologists" group,
which holds ``dicom_results.review_result``: the one who may accept, reject or correct results
(``REVIEWER_URL``, the worklist).
One gunicorn worker with threads: the test hooks' failure budget lives in that process.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

SETTINGS_MODULE = "infra.local.results_site.settings"
WSGI_APP = "infra.local.results_site.wsgi:application"
VIEWER_PATH = "/results/"
WEBHOOK_PATH = "/results/webhook/"
REVIEW_WEBHOOK_PATH = "/results/webhook/review/"  # the review component's receipts
CONTROL_PATH = "/_control"
HEALTH_PATH = "/healthz"
VIEWER_USER = "viewer"
REVIEWER_USER = "radiologist"
REVIEWERS_GROUP = "radiologists"
WORKLIST_PATH = VIEWER_PATH + "worklist/"
THREADS = 8


def database_path(root: Path) -> Path:
    return root / "results.sqlite3"


def stack_env(base_url: str, password: str) -> dict[str, str]:
    """What ``stack.env`` tells a person (and the browser test) about the viewer."""
    return {
        "VIEWER_URL": base_url + VIEWER_PATH,
        "VIEWER_USER": VIEWER_USER,
        "VIEWER_PASSWORD": password,
        "REVIEWER_URL": base_url + WORKLIST_PATH,
        "REVIEWER_USER": REVIEWER_USER,
    }


def site_env(root: Path, password: str, fail_first: int = 0) -> dict[str, str]:
    """The Django project's own variables (the stack adds WEBHOOK_SECRET, WEBHOOK_LOG, ...)."""
    return {
        "DJANGO_SETTINGS_MODULE": SETTINGS_MODULE,
        # Stable for one stack (sessions survive a worker restart), never the webhook secret itself.
        "DJANGO_SECRET_KEY": hashlib.sha256(f"local-django|{password}".encode()).hexdigest(),
        "RESULTS_DB": str(database_path(root)),
        "VIEWER_USER": VIEWER_USER,
        "REVIEWER_USER": REVIEWER_USER,
        "VIEWER_PASSWORD": password,
        "WEBHOOK_FAIL_FIRST": str(fail_first),
    }


def command(host: str, port: int, bin_dir: Path) -> list[str]:
    return [
        str(bin_dir / "gunicorn"), "--bind", f"{host}:{port}", "--workers", "1",
        "--worker-class", "gthread", "--threads", str(THREADS), "--no-control-socket",
        "--access-logfile", "-", WSGI_APP,
    ]  # fmt: skip


def prepare(env: dict[str, str], cwd: Path, timeout_s: float = 120) -> None:
    """A fresh database for this stack run (fake-gcs-server's objects do not outlive it either),
    migrated, with the staff user; raises with the command's output when that fails."""
    db = Path(env["RESULTS_DB"])
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "infra.local.viewer", "setup"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"Django setup failed:\n{done.stdout}\n{done.stderr}")


def setup() -> None:
    import django
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    django.setup()
    from django.contrib.auth.models import Group, Permission  # only once the apps are loaded

    call_command("check")  # a bad setting (e.g. WEBHOOK_TOLERANCE_S over 300) stops `make up` here
    call_command("migrate", interactive=False, verbosity=0)
    users = get_user_model()
    radiologists, _ = Group.objects.get_or_create(name=REVIEWERS_GROUP)
    radiologists.permissions.add(
        Permission.objects.get(codename="review_result", content_type__app_label="dicom_results")
    )
    for name in (os.environ["VIEWER_USER"], os.environ.get("REVIEWER_USER", REVIEWER_USER)):
        user, _ = users.objects.get_or_create(username=name)
        user.is_staff = True
        user.is_active = True
        user.set_password(os.environ["VIEWER_PASSWORD"])
        user.save()
    reviewer = users.objects.get(username=os.environ.get("REVIEWER_USER", REVIEWER_USER))
    reviewer.first_name, reviewer.last_name = "Demo", "Radiologist"  # the SR's verifying observer
    reviewer.save()
    reviewer.groups.add(radiologists)


if __name__ == "__main__":
    if sys.argv[1:] != ["setup"]:
        sys.exit("usage: python -m infra.local.viewer setup")
    setup()
