"""The test settings of a host that does not install django-axes (the app must work there):
``tests/test_access.py`` runs the viewer and audit tests under them in a child process."""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, INSTALLED_APPS, MIDDLEWARE

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "axes"]
MIDDLEWARE = [name for name in MIDDLEWARE if not name.startswith("axes.")]
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
# Its own test database, beside the one the parent run is using on the same server or directory.
_name = DATABASES["default"].get("TEST", {}).get("NAME") or f"test_{DATABASES['default']['NAME']}"
_name = _name.replace("test-db.", "test-db-without-axes.") if "test-db." in _name else _name + "_without_axes"
DATABASES["default"]["TEST"] = {"NAME": _name}
