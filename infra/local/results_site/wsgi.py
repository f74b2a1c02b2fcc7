"""WSGI entry point for gunicorn (``infra.local.results_site.wsgi:application``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra.local.results_site.settings")
application = get_wsgi_application()
