"""Tracing's part of infra/terraform (tracing.tf, main.tf): each runtime that writes spans (the
function, the service, the backfill job) holds roles/cloudtrace.agent under the identity it runs
as, gets TRACE_EXPORTER and TRACE_SAMPLE_RATIO with values the code accepts, and the Cloud Trace
API is enabled. A second test breaks each wiring on purpose to show each check can fail."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from pipeline_common.tracing import TraceSettings
from tests.support.terraform import DELETE, block, default, grants_of, load_config, ref, res, resolve, set_at

# The identity each runtime runs as: (resource type, name, path to its service account).
RUNTIMES = {
    "ingest": ("google_cloudfunctions2_function", "ingest", ("service_config", "service_account_email")),
    "inference": ("google_cloud_run_v2_service", "inference", ("template", "service_account")),
    "backfill": ("google_cloud_run_v2_job", "backfill", ("template", "template", "service_account")),
}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return load_config()


def _runtime_identity(cfg: dict[str, Any], key: str) -> str:
    rtype, name, path = RUNTIMES[key]
    body = res(cfg, rtype, name)
    for step in path[:-1]:
        body = block(body, step)
    return ref(body[path[-1]]).rsplit(".", 1)[0]


def check_trace_agents(cfg: dict[str, Any]) -> None:
    for key in RUNTIMES:
        account = _runtime_identity(cfg, key)
        assert account == f"google_service_account.{key}", (key, account)
        roles = [role for _, role, _ in grants_of(cfg, f"{account}.member")]
        assert "roles/cloudtrace.agent" in roles, f"{account} cannot write spans"


def check_env(cfg: dict[str, Any]) -> None:
    for local in ("inference_env", "function_env"):
        text = str(cfg["locals"][local])
        assert "TRACE_EXPORTER = var.trace_exporter," in text, local
        assert "TRACE_SAMPLE_RATIO = tostring(var.trace_sample_ratio)" in text, local
    exporter = default(cfg, "trace_exporter")
    settings = TraceSettings.from_env(
        {"TRACE_EXPORTER": exporter, "TRACE_SAMPLE_RATIO": str(default(cfg, "trace_sample_ratio"))}
    )
    assert settings.exporter == "gcp" and settings.sample_ratio == 1.0
    # Every value the variable accepts is one the code accepts (the file exporter is local only).
    condition = str(cfg["variable"]["trace_exporter"]["validation"][0]["condition"])
    for value in ("gcp", "none"):
        assert f'"{value}"' in condition
        TraceSettings.from_env({"TRACE_EXPORTER": value})
    assert '"file"' not in condition


def check_api(cfg: dict[str, Any]) -> None:
    assert "cloudtrace.googleapis.com" in str(resolve(cfg, "${local.apis}"))


CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "trace_agents": check_trace_agents,
    "env": check_env,
    "api": check_api,
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_tracing_wiring(config: dict[str, Any], name: str) -> None:
    CHECKS[name](config)


BREAKS: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    (
        "trace_agents",
        "no grant for the service",
        set_at(["resource", "google_project_iam_member", 'trace_agent["inference"]'], DELETE),
    ),
    (
        "trace_agents",
        "the job's grant given to another identity",
        set_at(
            ["resource", "google_project_iam_member", 'trace_agent["backfill"]', "member"],
            "${google_service_account.inference.member}",
        ),
    ),
    (
        "trace_agents",
        "a weaker role for the function",
        set_at(
            ["resource", "google_project_iam_member", 'trace_agent["ingest"]', "role"],
            "roles/cloudtrace.user",
        ),
    ),
    (
        "env",
        "the function not told where to export",
        lambda cfg: cfg["locals"].__setitem__(
            "function_env", cfg["locals"]["function_env"].replace("TRACE_EXPORTER = var.trace_exporter, ", "")
        ),
    ),
    ("env", "an exporter the code refuses", set_at(["variable", "trace_exporter", "default"], "zipkin")),
    ("api", "Cloud Trace API off", lambda cfg: cfg["locals"].__setitem__("apis", "${setunion([])}")),
]


@pytest.mark.parametrize(("check", "why", "mutate"), BREAKS, ids=[b[1] for b in BREAKS])
def test_tracing_checks_catch_broken_wiring(
    config: dict[str, Any], check: str, why: str, mutate: Callable[[dict[str, Any]], None]
) -> None:
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises((AssertionError, KeyError, ValueError)):
        CHECKS[check](broken)
