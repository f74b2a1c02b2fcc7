"""Settings of the local Django project, all from the environment the stack gives it
(infra/local/viewer.py): the webhook secret, the SQLite file under ``.local/``, the
webhook logs, and fake-gcs-server through ``STORAGE_EMULATOR_HOST``. Access as production
should have it (django-dicom-results/README.md, "Access"): throttled logins, sessions that end."""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url

from dicom_results.database import tuned_for_webhooks

SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "dicom_results",
]
MIDDLEWARE = [
    # Outermost: it sees every webhook attempt and the answer the app gave it.
    "infra.local.results_site.recording.WebhookRecorder",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]
# Five wrong passwords for one user from one address lock that pair out for 15 minutes. Not by
# address alone: a ward's workstations often share one, and one typo-prone user would lock all.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# A session ends after an idle hour, or when the browser closes. (Plain http here: the secure
# cookie flags are in django-dicom-results/example_project/settings.py.)
SESSION_COOKIE_AGE = 3600
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
ROOT_URLCONF = "infra.local.results_site.urls"
WSGI_APPLICATION = "infra.local.results_site.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
_SQLITE = Path(os.environ.get("RESULTS_DB", ".local/results.sqlite3")).resolve()
DATABASES = {
    "default": tuned_for_webhooks(
        dj_database_url.parse(
            os.environ.get("DATABASE_URL") or f"sqlite:///{_SQLITE}", conn_max_age=60, conn_health_checks=True
        )
    )
}
STATIC_URL = "static/"
LOGIN_URL = "dicom_results:login"
LOGIN_REDIRECT_URL = "dicom_results:list"

DICOM_RESULTS_WEBHOOK_SECRET = os.environ["WEBHOOK_SECRET"]
DICOM_RESULTS_TOLERANCE_S = int(os.environ.get("WEBHOOK_TOLERANCE_S") or 300)
DICOM_RESULTS_GCS_PROJECT = os.environ.get("GOOGLE_CLOUD_PROJECT")
# Named in each assessment SR beside the reviewer (the verifying observer's organisation).
DICOM_RESULTS_REVIEWER_ORGANISATION = os.environ.get("REVIEWER_ORGANISATION") or "Local demo hospital"
# The viewer reads the stack's upload bucket only (empty: any bucket a stored result names).
DICOM_RESULTS_ALLOWED_BUCKETS = [b for b in [os.environ.get("UPLOAD_BUCKET")] if b]

# The stand-in's test hooks (recording.py).
WEBHOOK_LOG = Path(os.environ.get("WEBHOOK_LOG", ".local/webhooks.jsonl")).resolve()
WEBHOOK_ATTEMPTS_LOG = Path(
    os.environ.get("WEBHOOK_ATTEMPTS_LOG") or WEBHOOK_LOG.with_suffix(".attempts.jsonl")
).resolve()
WEBHOOK_FAIL_FIRST = int(os.environ.get("WEBHOOK_FAIL_FIRST") or 0)
WEBHOOK_FAIL_STATUS = int(os.environ.get("WEBHOOK_FAIL_STATUS") or 503)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "pipeline_common.jsonlog.CloudLoggingFormatter"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["stdout"], "level": "INFO"},
}

# Radiologist decisions go to the stack's review topic on the Pub/Sub emulator
# (PUBSUB_EMULATOR_HOST, from the stack); the review component answers on webhook/review/.
DICOM_RESULTS_REVIEW_TOPIC = os.environ.get("REVIEW_TOPIC_PATH") or None
