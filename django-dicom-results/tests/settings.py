"""Settings for the app's own tests: SQLite by default, PostgreSQL with ``DATABASE_URL``."""

import base64
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import dj_database_url

from dicom_results.database import tuned_for_webhooks

_TMP = Path(os.environ.get("DICOM_RESULTS_TEST_DIR") or tempfile.mkdtemp(prefix="dicom-results-tests-"))

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # the reading view's script and style (the browser test serves them)
    "axes",
    "dicom_results",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]
# Login throttling as a host should configure it (README.md, "Access"): AxesStandaloneBackend
# first, so a locked-out login is refused before the password is even checked.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# Sessions that end: one idle hour, and the browser's closing.
SESSION_COOKIE_AGE = 3600
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
ROOT_URLCONF = "tests.urls"
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
DATABASES = {
    "default": tuned_for_webhooks(
        dj_database_url.parse(
            os.environ.get("DATABASE_URL") or f"sqlite:///{(_TMP / 'db.sqlite3').resolve()}",
            conn_max_age=60,
            conn_health_checks=True,
        )
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not memory: the live-server tests write from many threads at once.
    DATABASES["default"]["TEST"] = {"NAME": str(_TMP / "test-db.sqlite3")}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, tests only
LOGIN_URL = "dicom_results:login"
STATIC_URL = "static/"

DICOM_RESULTS_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"tests-only-signing-key-32-bytes!").decode()
DICOM_RESULTS_TOLERANCE_S = 300
DICOM_RESULTS_MAX_BODY_BYTES = 64 * 1024
DICOM_RESULTS_GCS_PROJECT = "test-project"
DICOM_RESULTS_REVIEWER_ORGANISATION = "Test Hospital Radiology"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {name: {"handlers": ["null"], "propagate": False} for name in ("dicom_results", "axes")},
}
