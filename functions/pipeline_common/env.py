"""Typed reads of environment variables, shared by both components' settings objects so a bad
value is refused with the same message wherever it is set."""

from __future__ import annotations

from collections.abc import Mapping


class SettingsError(ValueError):
    """A deployment mistake in the environment: refused at start-up (or the first event)."""


def read_int(env: Mapping[str, str], name: str, default: int, *, minimum: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def read_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def read_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    return env.get(name, "").strip() or default


def read_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    return default if not raw else raw in ("1", "true", "yes", "on")
