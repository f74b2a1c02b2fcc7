"""Example production settings for a host of django-dicom-results, behind an HTTPS proxy (Cloud
Run, a load balancer): ``python -m django check --deploy --settings example_project.settings``
reports nothing (tests/test_deploy.py keeps it so). Copy what you need into your own project.

Everything secret or site-specific comes from the environment: ``DJANGO_SECRET_KEY``,
``DJANGO_ALLOWED_HOSTS`` (comma-separated), ``DATABASE_URL``, ``WEBHOOK_SECRET`` (``whsec_...``),
``UPLOAD_BUCKET`` and ``GOOGLE_CLOUD_PROJECT``. Needs ``pip install
'django-dicom-results[postgres,axes]' dj-database-url``.
"""

import os
from datetime import timedelta

import dj_database_url

from dicom_results.database import tuned_for_webhooks

SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = [host.strip() for host in os.environ["DJANGO_ALLOWED_HOSTS"].split(",") if host.strip()]
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # collectstatic gathers the reading view's script and style
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
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes asks
]
ROOT_URLCONF = "example_project.urls"
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
DATABASES = {"default": tuned_for_webhooks(dj_database_url.config(conn_max_age=60, conn_health_checks=True))}
STATIC_URL = "static/"
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT") or "/var/www/dicom-results/static"  # your web server's
LOGIN_URL = "dicom_results:login"
LOGIN_REDIRECT_URL = "dicom_results:list"

# HTTPS only. The proxy ends TLS and says so in X-Forwarded-Proto; trust that header only
# when the proxy always sets it (Cloud Run and Google's load balancers do).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = True
SECURE_HSTS_SECONDS = 365 * 24 * 3600
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
CSRF_TRUSTED_ORIGINS = [f"https://{host}" for host in ALLOWED_HOSTS if not host.startswith(".")]
X_FRAME_OPTIONS = "DENY"

# Sessions that end: one idle hour (every request renews it), and the browser's closing.
SESSION_COOKIE_AGE = 3600
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True

# Login throttling (django-axes): five wrong passwords for one user from one address lock that
# pair out for 15 minutes; a correct password is refused meanwhile. Not by address alone: a
# ward's workstations often share one. Behind a proxy every client has the proxy's REMOTE_ADDR:
# install django-ipware and set AXES_IPWARE_PROXY_COUNT / AXES_IPWARE_META_PRECEDENCE_ORDER
# for your proxy (django-axes' documentation, "Configuration").
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True

DICOM_RESULTS_WEBHOOK_SECRET = os.environ["WEBHOOK_SECRET"]
DICOM_RESULTS_ALLOWED_BUCKETS = [os.environ["UPLOAD_BUCKET"]]
DICOM_RESULTS_GCS_PROJECT = os.environ["GOOGLE_CLOUD_PROJECT"]
DICOM_RESULTS_REVIEWER_ORGANISATION = os.environ.get("REVIEWER_ORGANISATION", "")
