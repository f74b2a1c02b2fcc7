"""What operators see (infra/terraform/monitoring.tf): each alert, log-based metric and the dashboard
is wired to the resource and the log lines it is about, every threshold is a variable, and the
notification channel is optional. As in test_terraform.py, each check is a function over the parsed
configuration, and a second test breaks the configuration on purpose to show each check can fail.

The log-based metrics match text the code writes (message, logger, field names): those literals are
looked up in the source, so a reworded log line fails here instead of silencing an alert.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest

from gpu_service.dicom import dicomweb_store
from gpu_service.outcome import RequestOutcome
from gpu_service.results.delivery import delivered_fields
from tests.support import REPO
from tests.support.terraform import (
    DELETE,
    alert_conditions,
    block,
    dashboard,
    dashboard_queries,
    default,
    expand,
    load_config,
    ref,
    res,
    set_at,
)

SERVICE = "${google_cloud_run_v2_service.inference.name}"
FUNCTION = "${google_cloudfunctions2_function.ingest.name}"
JOB = "${google_cloud_run_v2_job.backfill.name}"
USER_METRIC = "logging.googleapis.com/user/"

POLICIES = {
    "dead_letter",
    "push_backlog_age",
    "delivery_backlog_age",
    "service_5xx",
    "function_5xx",
    "webhook_failed",
    "retries_exhausted",
    "failed_results",
    "dicomweb_store",
    "gpu_memory",
}
# Alerts on log-based metrics: the metrics each one watches.
LOG_ALERTS = {
    "webhook_failed": ["webhook_failures"],
    "retries_exhausted": ["results"],
    "failed_results": ["results"],
    "dicomweb_store": ["dicomweb_rejected", "dicomweb_unavailable"],
}
LOG_METRICS = {
    # metric: the component whose lines it counts
    "uploads": "function",
    "results": "gpu",
    "webhook_failures": "gpu",
    "dicomweb_rejected": "gpu",
    "dicomweb_unavailable": "gpu",
    "upload_to_webhook_latency": "gpu",
    "explanation_samples": "gpu",
    "explanation_stability": "gpu",
}
# Where each component's log lines are written from.
SOURCES = {
    "function": sorted((REPO / "functions").rglob("*.py")),
    "gpu": sorted((REPO / "gpu_service").rglob("*.py"))
    + sorted((REPO / "functions/pipeline_common").glob("*.py")),
}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return load_config()


def _metric_filter(cfg: dict[str, Any], name: str) -> str:
    return expand(cfg, res(cfg, "google_logging_metric", name)["filter"])


def _user_metric(name: str) -> str:
    return f'metric.type="{USER_METRIC}${{google_logging_metric.{name}.name}}"'


def _single(cfg: dict[str, Any], policy: str) -> dict[str, Any]:
    conditions = alert_conditions(cfg, policy)
    assert len(conditions) == 1, f"{policy}: expected one condition, found {len(conditions)}"
    return conditions[0]


def _source_text(component: str) -> str:
    return "\n".join(p.read_text() for p in SOURCES[component])


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------
def check_notification_channel_optional(cfg: dict[str, Any]) -> None:
    """No channel by default: the email channel is counted out and every policy takes the
    (then empty) list, so `terraform plan` needs no address."""
    assert default(cfg, "notification_channel_email") is None, "a notification channel must be optional"
    channel = res(cfg, "google_monitoring_notification_channel", "email")
    assert channel["count"] == "${var.notification_channel_email == null ? 0 : 1}", "channel not optional"
    assert channel["type"] == "email"
    assert ref(channel["labels"]["email_address"]) == "var.notification_channel_email"
    assert ref(cfg["locals"]["alert_channels"]) == "google_monitoring_notification_channel.email[*].id"
    policies = cfg["resource"].get("google_monitoring_alert_policy", {})
    assert set(policies) >= POLICIES, f"missing alert policies: {POLICIES - set(policies)}"
    for name, body in policies.items():
        assert ref(body.get("notification_channels")) == "local.alert_channels", f"{name}: not on the channel"
        assert block(body, "documentation").get("content"), f"{name}: no documentation for the responder"


def check_thresholds_are_variables(cfg: dict[str, Any]) -> None:
    used = set()
    for name in cfg["resource"]["google_monitoring_alert_policy"]:
        for condition in alert_conditions(cfg, name):
            match = re.fullmatch(r"\$\{var\.(alert_[a-z0-9_]+)\}", str(condition.get("threshold_value")))
            assert match, f"{name}: threshold {condition.get('threshold_value')!r} is not an alert_* variable"
            value = default(cfg, match.group(1))
            assert isinstance(value, int | float), f"var.{match.group(1)} has no numeric default"
            used.add(match.group(1))
    declared = {v for v in cfg["variable"] if v.startswith("alert_")}
    assert declared == used, f"alert variables no policy uses: {declared - used}"


def check_dead_letter_alert(cfg: dict[str, Any]) -> None:
    condition = _single(cfg, "dead_letter")
    assert (
        'resource.labels.subscription_id="${google_pubsub_subscription.dead_letter.name}"'
        in condition["filter"]
    ), "the alert does not watch the dead-letter subscription"
    assert 'metric.type="pubsub.googleapis.com/subscription/num_undelivered_messages"' in condition["filter"]
    assert condition["comparison"] == "COMPARISON_GT"
    assert default(cfg, "alert_dead_letter_messages") == 0, "any dead-lettered message must alert"


def check_delivery_backlog_alert(cfg: dict[str, Any]) -> None:
    """Results waiting for a downstream that is down: alerted long before their messages expire."""
    condition = _single(cfg, "delivery_backlog_age")
    assert (
        'resource.labels.subscription_id="${google_pubsub_subscription.delivery_push.name}"'
        in condition["filter"]
    ), "the alert does not watch the delivery subscription"
    assert (
        'metric.type="pubsub.googleapis.com/subscription/oldest_unacked_message_age"' in condition["filter"]
    )
    retention_s = int(str(default(cfg, "delivery_retention")).rstrip("s"))
    assert default(cfg, "alert_delivery_oldest_unacked_age_seconds") < retention_s / 10


def check_push_backlog_alert(cfg: dict[str, Any]) -> None:
    condition = _single(cfg, "push_backlog_age")
    assert (
        'resource.labels.subscription_id="${google_pubsub_subscription.inference_push.name}"'
        in condition["filter"]
    ), "the alert does not watch the push subscription"
    assert (
        'metric.type="pubsub.googleapis.com/subscription/oldest_unacked_message_age"' in condition["filter"]
    ), "not the age of the oldest unacknowledged message"
    assert condition["comparison"] == "COMPARISON_GT"
    # One request may legitimately take a whole ack deadline: that alone must not page anyone.
    assert default(cfg, "alert_push_oldest_unacked_age_seconds") > default(cfg, "push_ack_deadline_seconds")


def check_5xx_alerts(cfg: dict[str, Any]) -> None:
    for policy, name in (("service_5xx", SERVICE), ("function_5xx", FUNCTION)):
        condition = _single(cfg, policy)
        scope = f'resource.type="cloud_run_revision" AND resource.labels.service_name="{name}"'
        requests = 'metric.type="run.googleapis.com/request_count"'
        assert scope in condition["filter"] and requests in condition["filter"], f"{policy}: wrong requests"
        assert 'metric.labels.response_code_class="5xx"' in condition["filter"], f"{policy}: not 5xx"
        # A rate: 5xx over all answers of the same component.
        denominator = condition.get("denominator_filter", "")
        assert scope in denominator and requests in denominator and "5xx" not in denominator, (
            f"{policy}: not a share of all answers"
        )
        assert block(condition, "aggregations") == block(condition, "denominator_aggregations")
        assert 0 < default(cfg, ref(condition["threshold_value"]).removeprefix("var.")) < 1


def check_log_metrics_match_the_logs(cfg: dict[str, Any]) -> None:
    """Each log-based metric reads its component's lines, and every message, logger and field it
    names is one the code writes."""
    metrics = cfg["resource"].get("google_logging_metric", {})
    assert set(LOG_METRICS) <= set(metrics), f"missing log-based metrics: {set(LOG_METRICS) - set(metrics)}"
    for name, component in LOG_METRICS.items():
        text = _metric_filter(cfg, name)
        scopes = {
            "function": [f'resource.labels.service_name="{FUNCTION}"'],
            "gpu": [f'resource.labels.service_name="{SERVICE}"', f'resource.labels.job_name="{JOB}"'],
        }[component]
        assert all(s in text for s in scopes), f"{name}: does not read the {component}'s logs"
        source = _source_text(component)
        for message in re.findall(r'jsonPayload\.message="([^"]+)"', text):
            assert f'"{message}"' in source, f"{name}: no log line says {message!r}"
        for field, value in re.findall(r'jsonPayload\.(error_code|reason|outcome)="([^"]+)"', text):
            assert f'"{value}"' in source, f"{name}: the code never writes {field} {value!r}"
        for logger in re.findall(r'jsonPayload\.logger="([^"]+)"', text):
            module = REPO / "gpu_service" / _module_path(logger)
            assert f'getLogger("{logger}")' in source or module.is_file(), f"{name}: no logger {logger!r}"
        body = res(cfg, "google_logging_metric", name)
        fields = re.findall(r"jsonPayload\.([a-z_]+)", text + str(body.get("label_extractors", {})))
        fields += re.findall(r"jsonPayload\.([a-z_]+)", str(body.get("value_extractor", "")))
        for field in set(fields) - {"message", "logger", "stack_trace"}:
            assert re.search(rf"\b{field}=|\"{field}\"", source), f"{name}: no log line has {field!r}"
    # The final delivery line of every delivered result, and nothing else of the delivery module.
    delivered = re.search(r'jsonPayload\.message=~"([^"]+)"', _metric_filter(cfg, "results"))
    assert delivered, "results: no message pattern"
    pattern = re.compile(delivered.group(1))
    for outcome in (RequestOutcome.COMPLETED, RequestOutcome.FAILED, RequestOutcome.DUPLICATE):
        assert pattern.search(f"request {outcome.value}"), f"results: misses 'request {outcome.value}'"
    assert not pattern.search("duplicate: webhook already delivered")
    # The DICOMweb store's two ways of failing, as the adapter names them.
    rejected, unavailable = (
        _metric_filter(cfg, "dicomweb_rejected"),
        _metric_filter(cfg, "dicomweb_unavailable"),
    )
    assert f'jsonPayload.error_code="{dicomweb_store.StoreRejected.code}"' in rejected
    assert f'jsonPayload.stack_trace:"{dicomweb_store.StoreUnavailable.__name__}"' in unavailable


def _module_path(logger: str) -> str:
    """A logger named after its module: `gpu_service.results.delivery` -> `results/delivery.py`."""
    return "/".join(logger.split(".")[1:]) + ".py"


def check_distributions(cfg: dict[str, Any]) -> None:
    """Latency, samples and stability are distributions of the numbers the final delivery line
    carries (gpu_service/results/delivery.py, delivered_fields)."""
    logged = set(
        delivered_fields({"explanation": {"samples_used": 300, "stability": 0.9}}, "2000-01-01T00:00:00Z")
    )
    extracted = set()
    for name in ("upload_to_webhook_latency", "explanation_samples", "explanation_stability"):
        body = res(cfg, "google_logging_metric", name)
        descriptor = block(body, "metric_descriptor")
        assert (descriptor["metric_kind"], descriptor["value_type"]) == ("DELTA", "DISTRIBUTION"), name
        assert block(body, "bucket_options"), f"{name}: no buckets"
        field = re.fullmatch(r"EXTRACT\(jsonPayload\.([a-z_]+)\)", str(body.get("value_extractor")))
        assert field, f"{name}: no value extractor"
        assert f"jsonPayload.{field.group(1)}:*" in _metric_filter(cfg, name), (
            f"{name}: counts lines without it"
        )
        extracted.add(field.group(1))
    assert extracted == logged, f"extracted {extracted}, logged {logged}"
    assert (
        block(res(cfg, "google_logging_metric", "upload_to_webhook_latency"), "metric_descriptor")["unit"]
        == "ms"
    )


def _filters(cfg: dict[str, Any], policy: str) -> list[str]:
    return [c["filter"] for c in alert_conditions(cfg, policy)]


def check_conditions_name_one_resource_type(cfg: dict[str, Any]) -> None:
    """Cloud Monitoring refuses an alert filter without a restriction on resource.type."""
    for name in cfg["resource"]["google_monitoring_alert_policy"]:
        for condition in alert_conditions(cfg, name):
            types = re.findall(r'resource\.type="([a-z_]+)"', condition["filter"])
            assert len(types) == 1, (
                f"{name}: {condition['display_name']!r} names {types or 'no'} resource type"
            )


def check_log_alerts_cover_service_and_job(cfg: dict[str, Any]) -> None:
    """The service and the backfill job run the same code: each log-based alert watches both."""
    for policy, metrics in LOG_ALERTS.items():
        for metric in metrics:
            types = {
                kind
                for f in _filters(cfg, policy)
                if _user_metric(metric) in f
                for kind in re.findall(r'resource\.type="([a-z_]+)"', f)
            }
            assert types == {"cloud_run_revision", "cloud_run_job"}, f"{policy} on {metric} watches {types}"


def check_result_alerts(cfg: dict[str, Any]) -> None:
    assert all(_user_metric("webhook_failures") in f for f in _filters(cfg, "webhook_failed")), (
        "webhook alert not on the failures metric"
    )
    exhausted, failed = _filters(cfg, "retries_exhausted"), _filters(cfg, "failed_results")
    for text in exhausted + failed:
        assert _user_metric("results") in text and 'metric.labels.result_status="failed"' in text
    assert all('metric.labels.error_code="retries_exhausted"' in f for f in exhausted), (
        "retries_exhausted alert on any failure"
    )
    assert all('metric.labels.error_code!="retries_exhausted"' in f for f in failed), (
        "retries_exhausted would alert twice"
    )
    labels = {
        lab["key"]
        for lab in block(res(cfg, "google_logging_metric", "results"), "metric_descriptor")["labels"]
    }
    assert {"outcome", "result_status", "error_code"} <= labels


def check_dicomweb_alert(cfg: dict[str, Any]) -> None:
    filters = _filters(cfg, "dicomweb_store")
    for metric in ("dicomweb_rejected", "dicomweb_unavailable"):
        assert any(_user_metric(metric) in f for f in filters), f"no condition on {metric}"
    assert res(cfg, "google_monitoring_alert_policy", "dicomweb_store")["combiner"] == "OR"


def check_gpu_memory_alert(cfg: dict[str, Any]) -> None:
    condition = _single(cfg, "gpu_memory")
    assert f'resource.labels.service_name="{SERVICE}"' in condition["filter"]
    assert 'metric.type="run.googleapis.com/container/gpu/memory_utilizations"' in condition["filter"], (
        "not GPU memory"
    )
    assert condition["comparison"] == "COMPARISON_GT"
    assert 0.5 <= default(cfg, "alert_gpu_memory_utilization") < 1


def check_dashboard(cfg: dict[str, Any]) -> None:
    board = dashboard(cfg)
    queries = dashboard_queries(board)

    def charted(needle: str, **aggregation: Any) -> list[str]:
        return [
            title
            for title, query, _ in queries
            if needle in query["filter"]
            and all(query.get("aggregation", {}).get(k) == v for k, v in aggregation.items())
        ]

    service = f'resource.labels.service_name="{SERVICE}"'
    wanted = {
        "uploads per minute": charted(_user_metric("uploads"), alignmentPeriod="60s"),
        "results by status": charted(_user_metric("results"), groupByFields=["metric.label.result_status"]),
        "latency p50": charted(
            _user_metric("upload_to_webhook_latency"), crossSeriesReducer="REDUCE_PERCENTILE_50"
        ),
        "latency p95": charted(
            _user_metric("upload_to_webhook_latency"), crossSeriesReducer="REDUCE_PERCENTILE_95"
        ),
        "explanation samples": charted(_user_metric("explanation_samples")),
        "explanation stability": charted(_user_metric("explanation_stability")),
        "dead-letter depth": charted('subscription_id="${google_pubsub_subscription.dead_letter.name}"'),
        "instances": [
            t for t in charted("run.googleapis.com/container/instance_count") if t in charted(service)
        ],
        "GPU utilisation": [
            t for t in charted("run.googleapis.com/container/gpu/utilizations") if t in charted(service)
        ],
    }
    missing = [what for what, titles in wanted.items() if not titles]
    assert not missing, f"the dashboard does not chart: {missing}"
    for title, query, _ in queries:  # every user metric charted is one Terraform creates
        for metric in re.findall(r"google_logging_metric\.([a-z0-9_]+)\.name", query["filter"]):
            assert metric in cfg["resource"]["google_logging_metric"], f"{title}: unknown metric {metric}"
    tiles = board["mosaicLayout"]["tiles"]
    cells = [
        (x, y)
        for t in tiles
        for x in range(t["xPos"], t["xPos"] + t["width"])
        for y in range(t["yPos"], t["yPos"] + t["height"])
    ]
    assert len(cells) == len(set(cells)), "dashboard tiles overlap"
    assert all(t["xPos"] + t["width"] <= board["mosaicLayout"]["columns"] for t in tiles)


CHECKS: list[Callable[[dict[str, Any]], None]] = [
    check_notification_channel_optional,
    check_thresholds_are_variables,
    check_conditions_name_one_resource_type,
    check_log_alerts_cover_service_and_job,
    check_dead_letter_alert,
    check_push_backlog_alert,
    check_delivery_backlog_alert,
    check_5xx_alerts,
    check_log_metrics_match_the_logs,
    check_distributions,
    check_result_alerts,
    check_dicomweb_alert,
    check_gpu_memory_alert,
    check_dashboard,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_monitoring_wiring(config: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> None:
    check(config)


# ---------------------------------------------------------------------------------------------
# Each mutation breaks one thing a check exists for; that check must notice.
# ---------------------------------------------------------------------------------------------
_POLICY = ["resource", "google_monitoring_alert_policy"]
_METRIC = ["resource", "google_logging_metric"]


def _condition(policy: str, index: int = 0) -> list[Any]:
    return [*_POLICY, policy, "conditions", index, "condition_threshold", 0]


def _dynamic_condition(policy: str, index: int = 0) -> list[Any]:
    return [*_POLICY, policy, "dynamic", index, "conditions", "content", 0, "condition_threshold", 0]


def _replace(path: list[Any], old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(cfg: dict[str, Any]) -> None:
        node = cfg
        for key in path[:-1]:
            node = node[key]
        assert old in node[path[-1]], f"mutation does not apply: {old!r} not in {path}"
        node[path[-1]] = node[path[-1]].replace(old, new)

    return mutate


def _keep_first_condition(policy: str) -> Callable[[dict[str, Any]], None]:
    def mutate(cfg: dict[str, Any]) -> None:
        body = cfg["resource"]["google_monitoring_alert_policy"][policy]
        body["dynamic"] = body["dynamic"][:1]

    return mutate


MUTATIONS = {
    "channel-required": (
        check_notification_channel_optional,
        set_at(["variable", "notification_channel_email", "default"], "ops@example.org"),
    ),
    "channel-always-created": (
        check_notification_channel_optional,
        set_at(["resource", "google_monitoring_notification_channel", "email", "count"], 1),
    ),
    "policy-without-channel": (
        check_notification_channel_optional,
        set_at([*_POLICY, "gpu_memory", "notification_channels"], DELETE),
    ),
    "alert-missing": (check_notification_channel_optional, set_at([*_POLICY, "dead_letter"], DELETE)),
    "hardcoded-threshold": (
        check_thresholds_are_variables,
        set_at([*_condition("service_5xx"), "threshold_value"], 0.5),
    ),
    "unused-threshold-variable": (
        check_thresholds_are_variables,
        set_at(["variable", "alert_unused"], {"type": "number", "default": 1}),
    ),
    "dead-letter-alert-on-push": (
        check_dead_letter_alert,
        _replace([*_condition("dead_letter"), "filter"], "dead_letter.name", "inference_push.name"),
    ),
    "dead-letter-tolerated": (
        check_dead_letter_alert,
        set_at(["variable", "alert_dead_letter_messages", "default"], 10),
    ),
    "delivery-backlog-watches-inference": (
        check_delivery_backlog_alert,
        _replace(
            [*_condition("delivery_backlog_age"), "filter"],
            "google_pubsub_subscription.delivery_push.name",
            "google_pubsub_subscription.inference_push.name",
        ),
    ),
    "backlog-on-wrong-metric": (
        check_push_backlog_alert,
        _replace(
            [*_condition("push_backlog_age"), "filter"],
            "oldest_unacked_message_age",
            "num_undelivered_messages",
        ),
    ),
    "function-5xx-watches-service": (
        check_5xx_alerts,
        _replace(
            [*_condition("function_5xx"), "filter"], "${local.function_metrics}", "${local.service_metrics}"
        ),
    ),
    "5xx-count-not-rate": (
        check_5xx_alerts,
        set_at([*_condition("service_5xx"), "denominator_filter"], DELETE),
    ),
    "alert-without-resource-type": (
        check_conditions_name_one_resource_type,
        _replace([*_condition("gpu_memory"), "filter"], "${local.service_metrics} AND ", ""),
    ),
    "log-alert-on-service-only": (
        check_log_alerts_cover_service_and_job,
        set_at(["locals", "gpu_log_resources"], {"service": "cloud_run_revision"}),
    ),
    "log-value-drift": (
        check_log_metrics_match_the_logs,
        _replace(
            [*_METRIC, "dicomweb_unavailable", "filter"],
            'reason=\\"dicomweb_unavailable',
            'reason=\\"store_down',
        ),
    ),
    "log-message-reworded": (
        check_log_metrics_match_the_logs,
        _replace([*_METRIC, "webhook_failures", "filter"], "webhook not accepted", "webhook failed"),
    ),
    "uploads-from-the-service": (
        check_log_metrics_match_the_logs,
        _replace([*_METRIC, "uploads", "filter"], "${local.function_logs}", "${local.gpu_logs}"),
    ),
    "results-miss-failed": (
        check_log_metrics_match_the_logs,
        _replace(["locals", "delivered_line"], "completed|failed|duplicate", "completed|duplicate"),
    ),
    "unknown-field": (
        check_log_metrics_match_the_logs,
        set_at([*_METRIC, "results", "label_extractors", "error_code"], "EXTRACT(jsonPayload.error_kind)"),
    ),
    "latency-as-counter": (
        check_distributions,
        set_at([*_METRIC, "upload_to_webhook_latency", "metric_descriptor", 0, "value_type"], "INT64"),
    ),
    "latency-field-renamed": (
        check_distributions,
        set_at([*_METRIC, "upload_to_webhook_latency", "value_extractor"], "EXTRACT(jsonPayload.latency_ms)"),
    ),
    "retries-exhausted-on-any-failure": (
        check_result_alerts,
        _replace(
            [*_dynamic_condition("retries_exhausted"), "filter"],
            ' AND metric.labels.error_code=\\"retries_exhausted\\"',
            "",
        ),
    ),
    "webhook-alert-on-results": (
        check_result_alerts,
        _replace([*_dynamic_condition("webhook_failed"), "filter"], "webhook_failures", "results"),
    ),
    "dicomweb-unreachable-not-watched": (
        check_dicomweb_alert,
        _keep_first_condition("dicomweb_store"),
    ),
    "gpu-alert-on-cpu": (
        check_gpu_memory_alert,
        _replace([*_condition("gpu_memory"), "filter"], "gpu/memory_utilizations", "cpu/utilizations"),
    ),
    "dashboard-p95-on-uploads": (
        check_dashboard,
        _replace(
            ["resource", "google_monitoring_dashboard", "pipeline", "dashboard_json"],
            "google_logging_metric.upload_to_webhook_latency.name",
            "google_logging_metric.uploads.name",
        ),
    ),
    "dashboard-value-missing": (
        check_dashboard,
        _replace(
            ["resource", "google_monitoring_dashboard", "pipeline", "dashboard_json"],
            "dead_letter_subscription = google_pubsub_subscription.dead_letter.name, ",
            "",
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_monitoring_checks_catch_broken_wiring(config: dict[str, Any], name: str) -> None:
    check, mutate = MUTATIONS[name]
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises(AssertionError):
        check(broken)


def test_dashboard_template_is_json_terraform_can_render(config: dict[str, Any]) -> None:
    """Only `${name}` interpolations (no `%{` directives, no escaped `$${`), each given a value
    (tests.support.terraform.dashboard asserts that), and the result is JSON."""
    text = (REPO / "infra/terraform/dashboards/pipeline.json.tftpl").read_text()
    assert "%{" not in text and "$${" not in text
    board = dashboard(config)
    assert board["displayName"] and board["mosaicLayout"]["tiles"]
    assert "${local." not in str(board), "a local was left unexpanded"
