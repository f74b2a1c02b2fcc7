"""``DATABASES["default"]`` from ``DATABASE_URL`` (dj-database-url): PostgreSQL in production,
SQLite by default.

SQLite gets what concurrent webhook deliveries need: a busy timeout, ``BEGIN IMMEDIATE``
(a transaction takes the write lock at once instead of failing to upgrade a read lock
under contention) and write-ahead logging so the viewer's reads never wait for a write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url

SQLITE_OPTIONS = {
    "timeout": 30,
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}


def database_from_env(default_sqlite: Path | str, url: str | None = None) -> dict[str, Any]:
    url = url or os.environ.get("DATABASE_URL") or f"sqlite:///{Path(default_sqlite).resolve()}"
    config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        config["CONN_MAX_AGE"] = 0
        config.setdefault("OPTIONS", {}).update(SQLITE_OPTIONS)
    return config
