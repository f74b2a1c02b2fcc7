"""What a host project's ``DATABASES`` entry needs for this app under concurrent webhooks.

The host project builds its own entry (dj-database-url or a literal dict: that choice is the
host's, so the app does not depend on it) and passes it through :func:`tuned_for_webhooks`.
SQLite then gets a busy timeout, ``BEGIN IMMEDIATE`` (a transaction takes the write lock at
once instead of failing to upgrade a read lock under contention) and write-ahead logging so the
viewer's reads never wait for a write; PostgreSQL keeps what the host set.
"""

from __future__ import annotations

from typing import Any

SQLITE_OPTIONS = {
    "timeout": 30,
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}


def tuned_for_webhooks(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("ENGINE") == "django.db.backends.sqlite3":
        config["CONN_MAX_AGE"] = 0
        config.setdefault("OPTIONS", {}).update(SQLITE_OPTIONS)
    return config
