"""Runs the app's tests with Django's own runner: ``python runtests.py [labels...]``.

SQLite by default; ``DATABASE_URL=postgres://...`` runs them on PostgreSQL. The viewer's
image tests need a Cloud Storage emulator (``STORAGE_EMULATOR_HOST``) and skip without one.
"""

import os
import sys
from pathlib import Path

import django
from django.conf import settings
from django.test.utils import get_runner

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    runner = get_runner(settings)(verbosity=2, top_level=str(here))
    failures = runner.run_tests(sys.argv[1:] or ["tests"])
    sys.exit(1 if failures else 0)
