"""Static checks of infra/terraform that run offline: the wiring that matters, least privilege, checkov.

`terraform validate` needs the providers downloaded, which CI cannot do offline, so the
configuration is parsed with python-hcl2 and its wiring asserted here. Each check is a
function over the parsed configuration, and a second test breaks the configuration on
purpose to show that every check can fail. A resource with `for_each` over a local map is
expanded into its instances (`name["key"]`), as Terraform plans it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tests.support import REPO
from tests.support.terraform import (
    DELETE,
    TF_DIR,
    block,
    bucket,
    clean,
    default,
    grants_of,
    iam_members,
    load_config,
    ref,
    res,
    resolve,
    set_at,
)

ROOT = REPO
CHECKOV = os.environ.get("CHECKOV", str(ROOT / ".venv-checkov" / "bin" / "checkov"))

# Roles that Google only grants on a project; anything else must be granted on one resource.
PROJECT_LEVEL_ALLOWED = {
    "roles/logging.logWriter",  # build logs of the function build
    "roles/eventarc.eventReceiver",  # Eventarc trigger identity
    "roles/pubsub.publisher",  # Cloud Storage service agent for Eventarc storage triggers
    "roles/cloudtrace.agent",  # spans of the function, service and job (tracing.tf): project only
}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return load_config()


# ---------------------------------------------------------------------------------------------
# The checks (each raises AssertionError with what is wrong)
# ---------------------------------------------------------------------------------------------
def check_providers_pinned(cfg: dict[str, Any]) -> None:
    providers: dict[str, Any] = {}
    for tblock in cfg["terraform"]:
        for rp in tblock.get("required_providers", []):
            providers.update(rp)
    for name in ("google", "google-beta", "archive"):
        assert name in providers, f"provider {name} not declared"
        version = str(providers[name]["version"])
        assert version.startswith("~>") and version.count(".") == 2, f"{name} not pinned to one minor release"
    assert any(t.get("required_version") for t in cfg["terraform"]), "terraform required_version missing"


def check_buckets_private(cfg: dict[str, Any]) -> None:
    buckets = cfg["resource"]["google_storage_bucket"]
    expected = {f'private["{k}"]' for k in ("uploads", "models", "function_source")}
    assert expected <= set(buckets), f"missing buckets: {expected - set(buckets)}"
    for name, body in buckets.items():
        assert body.get("uniform_bucket_level_access") is True, f"{name}: uniform access off"
        assert body.get("public_access_prevention") == "enforced", f"{name}: public access not prevented"
        assert block(body, "versioning").get("enabled") is True, f"{name}: versioning off"
        assert block(body, "soft_delete_policy").get("retention_duration_seconds"), f"{name}: no soft delete"
        cmek = [d for d in body.get("dynamic", []) if "encryption" in d]
        assert cmek and "var.kms_key_name" in json.dumps(cmek), f"{name}: no optional CMEK"
        assert body.get("force_destroy") is not True, f"{name}: force_destroy would delete patient data"


def check_push_subscription(cfg: dict[str, Any]) -> None:
    sub = res(cfg, "google_pubsub_subscription", "inference_push")
    assert ref(sub["topic"]) == "google_pubsub_topic.inference.id"
    push = block(sub, "push_config")
    assert ref(push["push_endpoint"]) == "google_cloud_run_v2_service.inference.uri", (
        "push not to the service"
    )
    oidc = block(push, "oidc_token")
    assert ref(oidc["service_account_email"]) == "google_service_account.push_invoker.email"
    assert ref(oidc.get("audience")) == "local.push_audience", "push token audience not set"
    # The audience the tokens carry is one the service accepts and checks.
    service = res(cfg, "google_cloud_run_v2_service", "inference")
    assert "${local.push_audience}" in service.get("custom_audiences", []), (
        "service does not accept the audience"
    )
    service_env = cfg["locals"]["service_env"]
    assert "local.push_audience" in service_env and "push_invoker.email" in service_env, (
        "PUSH_AUDIENCE / PUSH_SERVICE_ACCOUNT not passed to the service"
    )
    assert 10 <= int(resolve(cfg, sub["ack_deadline_seconds"])) <= 600
    retry = block(sub, "retry_policy")
    assert retry.get("minimum_backoff") and retry.get("maximum_backoff"), "no retry backoff"
    assert block(sub, "expiration_policy").get("ttl") == "", "subscription could expire when idle"


def check_dead_letters(cfg: dict[str, Any]) -> None:
    sub = res(cfg, "google_pubsub_subscription", "inference_push")
    dlp = block(sub, "dead_letter_policy")
    assert ref(dlp["dead_letter_topic"]) == "google_pubsub_topic.dead_letter.id", "no dead-letter topic"
    attempts = default(cfg, "max_delivery_attempts")
    assert 5 <= attempts <= 100
    on_topic = [
        body
        for body in cfg["resource"]["google_pubsub_subscription"].values()
        if ref(body["topic"]) == "google_pubsub_topic.dead_letter.id"
    ]
    keepers = [body for body in on_topic if "push_config" not in body]  # held for the replay
    assert keepers, "dead letters have no pull subscription, so nothing keeps them for the replay"
    recorders = [body for body in on_topic if "push_config" in body]
    assert any(str(block(r, "push_config")["push_endpoint"]).endswith("/dead-letter") for r in recorders), (
        "dead letters are not recorded by the service"
    )
    assert all(block(k, "expiration_policy").get("ttl") == "" for k in keepers)
    # Pub/Sub's service agent must be able to forward dead letters and ack the originals.
    agent = [g for g in iam_members(cfg) if ref(g[2]["member"]) == "local.pubsub_agent"]
    assert any(
        g[1] == "roles/pubsub.publisher" and ref(g[2].get("topic")) == "google_pubsub_topic.dead_letter.name"
        for g in agent
    ), "Pub/Sub agent cannot publish dead letters"
    assert any(
        g[1] == "roles/pubsub.subscriber"
        and ref(g[2].get("subscription")) == "google_pubsub_subscription.inference_push.name"
        for g in agent
    ), "Pub/Sub agent cannot ack dead-lettered messages"


def check_delivery_handoff(cfg: dict[str, Any]) -> None:
    """A result whose downstream is down waits on its own subscription: pushed to /deliver, no
    dead-letter policy, retained for the outage budget; both runtimes may publish to it."""
    sub = res(cfg, "google_pubsub_subscription", "delivery_push")
    assert ref(sub["topic"]) == "google_pubsub_topic.delivery.id"
    assert str(block(sub, "push_config")["push_endpoint"]).endswith("/deliver")
    assert "dead_letter_policy" not in sub, "a delivery must not be dead-lettered during an outage"
    assert ref(sub["message_retention_duration"]) == "var.delivery_retention"
    assert default(cfg, "delivery_retention") == "604800s"
    assert block(sub, "expiration_policy").get("ttl") == ""
    env = cfg["locals"]["inference_env"]
    assert "google_pubsub_topic.delivery.id" in json.dumps(env), "the runtimes are not told the topic"
    publishers = {
        ref(g[2].get("topic"))
        for g in iam_members(cfg)
        if g[1] == "roles/pubsub.publisher" and g[0].startswith("google_pubsub_topic_iam_member.gpu_delivery")
    }
    assert publishers == {"google_pubsub_topic.delivery.name"}


def check_push_identity(cfg: dict[str, Any]) -> None:
    grants = grants_of(cfg, "google_service_account.push_invoker.member")
    assert [(g[1], ref(g[2].get("name"))) for g in grants] == [
        ("roles/run.invoker", "google_cloud_run_v2_service.inference.name")
    ], f"push identity must only invoke the service, has {grants}"
    token = [
        g
        for g in iam_members(cfg)
        if g[1] == "roles/iam.serviceAccountTokenCreator"
        and ref(g[2].get("service_account_id")) == "google_service_account.push_invoker.name"
    ]
    assert token and ref(token[0][2]["member"]) == "local.pubsub_agent", "Pub/Sub cannot mint push tokens"


def check_function_trigger(cfg: dict[str, Any]) -> None:
    fn = res(cfg, "google_cloudfunctions2_function", "ingest")
    build = block(fn, "build_config")
    assert build["entry_point"] == "ingest_dicom"
    assert re.fullmatch(r"python3\d+", str(default(cfg, "function_runtime")))
    source = block(block(build, "source"), "storage_source")
    assert ref(source["object"]) == "google_storage_bucket_object.function_source.name"
    archive = cfg["data"]["archive_file"]["function_source"]
    assert ref(archive["source_dir"]) == "local.function_source_dir"
    assert cfg["locals"]["function_source_dir"].endswith("/../../functions")
    assert (TF_DIR / "../../functions/requirements.txt").resolve().is_file()
    trigger = block(fn, "event_trigger")
    assert trigger["event_type"] == "google.cloud.storage.object.v1.finalized"
    assert trigger["retry_policy"] == "RETRY_POLICY_RETRY"
    filters = trigger["event_filters"]
    assert [(f["attribute"], ref(f["value"])) for f in filters] == [
        ("bucket", f"{bucket('uploads')}.name")
    ], "the trigger does not watch the upload bucket"
    trigger_sa = ref(trigger["service_account_email"])
    assert trigger_sa == "google_service_account.eventarc_trigger.email"
    roles = {
        (g[1], ref(g[2].get("name", "")))
        for g in grants_of(cfg, "google_service_account.eventarc_trigger.member")
    }
    assert ("roles/eventarc.eventReceiver", "") in roles
    assert ("roles/run.invoker", "google_cloudfunctions2_function.ingest.name") in roles
    gcs_agent = grants_of(cfg, "data.google_storage_project_service_account.gcs.member")
    assert any(g[1] == "roles/pubsub.publisher" for g in gcs_agent), "GCS agent cannot publish bucket events"
    env = cfg["locals"]["function_env"]
    assert "INFERENCE_TOPIC" in env and "google_pubsub_topic.inference.id" in env
    runtime = block(fn, "service_config")
    assert ref(runtime["service_account_email"]) == "google_service_account.ingest.email"
    assert runtime["ingress_settings"] == "ALLOW_INTERNAL_ONLY"


def _gpu_container(template: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    assert ref(block(template, "node_selector")["accelerator"]) == "var.gpu_type"
    assert default(cfg, "gpu_type") == "nvidia-l4"
    assert "gpu_zonal_redundancy_disabled" in template
    container = block(template, "containers")
    limits = block(container, "resources")["limits"]
    assert str(limits.get("nvidia.com/gpu")) == "1", "no GPU requested"
    assert int(default(cfg, "service_cpu")) >= 4, "an L4 needs at least 4 CPUs"
    assert int(str(default(cfg, "service_memory")).removesuffix("Gi")) >= 16, "an L4 needs at least 16Gi"
    assert ref(limits["cpu"]) == "var.service_cpu" and ref(limits["memory"]) == "var.service_memory"
    secrets = [e for e in container.get("env", []) if e.get("name") == "WEBHOOK_SECRET"]
    assert secrets, "WEBHOOK_SECRET not set"
    secret_ref = block(block(secrets[0], "value_source"), "secret_key_ref")
    assert ref(secret_ref["secret"]) == "google_secret_manager_secret.webhook.secret_id"
    return container


def check_service_gpu(cfg: dict[str, Any]) -> None:
    svc = res(cfg, "google_cloud_run_v2_service", "inference")
    template = block(svc, "template")
    container = _gpu_container(template, cfg)
    assert block(container, "resources").get("cpu_idle") is False, "a GPU needs CPU always allocated"
    probe = block(container, "startup_probe")
    assert block(probe, "http_get")["path"] == "/readyz"
    assert ref(template["max_instance_request_concurrency"]) == "var.service_concurrency"
    scaling = block(template, "scaling")
    assert {"min_instance_count", "max_instance_count"} <= set(scaling)
    assert ref(template["service_account"]) == "google_service_account.inference.email"
    assert default(cfg, "service_ingress") == "INGRESS_TRAFFIC_INTERNAL_ONLY"


def check_job_gpu(cfg: dict[str, Any]) -> None:
    job = res(cfg, "google_cloud_run_v2_job", "backfill")
    task = block(block(job, "template"), "template")
    container = _gpu_container(task, cfg)
    assert container["command"] == ["python", "-m", "gpu_service.job"]
    assert ref(task["service_account"]) == "google_service_account.backfill.email"


def check_least_privilege(cfg: dict[str, Any]) -> None:
    assert "google_service_account_key" not in cfg["resource"], "no key files"
    for rtype in cfg["resource"]:
        assert not rtype.endswith(("_iam_policy", "_iam_binding")), (
            f"{rtype}: authoritative IAM replaces others' grants"
        )
    for name, role, body in iam_members(cfg):
        assert role not in ("roles/owner", "roles/editor", "roles/viewer"), f"{name}: basic role {role}"
        assert "admin" not in role.lower(), f"{name}: admin role {role}"
        if name.startswith("google_project_iam_member."):
            assert role in PROJECT_LEVEL_ALLOWED, f"{name}: {role} granted on the whole project"
        assert not str(body.get("member", "")).startswith(("allUsers", "allAuthenticatedUsers"))
    # Writers may only write the names they own, never replace an uploaded DICOM file.
    for name, role, body in iam_members(cfg):
        if name.startswith("google_storage_bucket_iam_member.") and role not in (
            "roles/storage.objectViewer",
            "roles/storage.legacyBucketReader",
        ):
            cond = block(body, "condition")
            assert "endsWith" in str(resolve(cfg, cond["expression"])), f"{name}: unconditional {role}"
    # One identity per component.
    identities = {
        "function": ref(
            block(res(cfg, "google_cloudfunctions2_function", "ingest"), "service_config")[
                "service_account_email"
            ]
        ),
        "build": ref(
            block(res(cfg, "google_cloudfunctions2_function", "ingest"), "build_config")["service_account"]
        ),
        "trigger": ref(
            block(res(cfg, "google_cloudfunctions2_function", "ingest"), "event_trigger")[
                "service_account_email"
            ]
        ),
        "service": ref(
            block(res(cfg, "google_cloud_run_v2_service", "inference"), "template")["service_account"]
        ),
        "job": ref(
            block(block(res(cfg, "google_cloud_run_v2_job", "backfill"), "template"), "template")[
                "service_account"
            ]
        ),
        "push": ref(
            block(
                block(res(cfg, "google_pubsub_subscription", "inference_push"), "push_config"), "oidc_token"
            )["service_account_email"]
        ),
        "review": ref(
            block(res(cfg, "google_cloud_run_v2_service", "review"), "template")["service_account"]
        ),
        "review_push": ref(
            block(block(res(cfg, "google_pubsub_subscription", "review_push"), "push_config"), "oidc_token")[
                "service_account_email"
            ]
        ),
    }
    sa_names = {v.split(".")[1] for v in identities.values()}
    assert len(sa_names) == len(identities), f"components share a service account: {identities}"
    assert sa_names == set(cfg["resource"]["google_service_account"]), "unused or missing service accounts"


def check_grants_for_runtime(cfg: dict[str, Any]) -> None:
    """Each runtime identity can do its job: the function reads and publishes, the service reads
    and writes."""
    ingest = {
        (g[1], ref(g[2].get("bucket") or g[2].get("topic")))
        for g in grants_of(cfg, "google_service_account.ingest.member")
    }
    assert ("roles/storage.objectViewer", f"{bucket('uploads')}.name") in ingest
    assert ("roles/pubsub.publisher", "google_pubsub_topic.inference.name") in ingest
    for sa in ("inference", "backfill"):
        grants = {
            (g[1], ref(g[2].get("bucket") or g[2].get("secret_id")))
            for g in grants_of(cfg, f"google_service_account.{sa}.member")
        }
        assert ("roles/storage.objectViewer", f"{bucket('uploads')}.name") in grants, sa
        assert ("roles/storage.objectViewer", f"{bucket('models')}.name") in grants, sa
        assert ("roles/storage.objectUser", "local.output_bucket") in grants, sa
        assert (
            "roles/secretmanager.secretAccessor",
            "google_secret_manager_secret.webhook.secret_id",
        ) in grants, sa


def check_review_component(cfg: dict[str, Any]) -> None:
    """Decisions reach a CPU-only service running the same image, by an authenticated push with a
    dead-letter policy; the component writes only its outputs, stores in the DICOM store and
    reads the webhook secret; its push identity only invokes it; Django only publishes."""
    topic = res(cfg, "google_pubsub_topic", "review")
    assert ref(block(topic, "schema_settings")["schema"]) == "google_pubsub_schema.review.id"
    schema = res(cfg, "google_pubsub_schema", "review")
    assert schema["type"] == "PROTOCOL_BUFFER" and "dicom_review.proto" in schema["definition"]
    sub = res(cfg, "google_pubsub_subscription", "review_push")
    assert ref(sub["topic"]) == "google_pubsub_topic.review.id"
    push = block(sub, "push_config")
    assert push["push_endpoint"] == "${google_cloud_run_v2_service.review.uri}/review"
    oidc = block(push, "oidc_token")
    assert ref(oidc["service_account_email"]) == "google_service_account.review_push_invoker.email"
    assert ref(oidc["audience"]) == "local.review_push_audience"
    dlp = block(sub, "dead_letter_policy")
    assert ref(dlp["dead_letter_topic"]) == "google_pubsub_topic.review_dead_letter.id"
    assert default(cfg, "review_max_delivery_attempts") == 100
    subscriptions = cfg["resource"]["google_pubsub_subscription"].values()
    dead = "google_pubsub_topic.review_dead_letter.id"
    keepers = [b for b in subscriptions if ref(b["topic"]) == dead and "push_config" not in b]
    assert keepers, "review dead letters are not kept"
    service = res(cfg, "google_cloud_run_v2_service", "review")
    template = block(service, "template")
    container = block(template, "containers")
    assert "node_selector" not in template, "the review component must not take a GPU"
    assert "nvidia.com/gpu" not in block(container, "resources")["limits"]
    assert ref(container["image"]) == "local.image", "not the inference service's image"
    assert "gpu_service.review_app:create_app()" in container["args"]
    assert "${local.review_push_audience}" in service["custom_audiences"]
    env = cfg["locals"]["review_env"]
    assert (
        "var.review_webhook_url" in str(env)
        and "local.dicomweb_url" in str(env)
        and "PUSH_AUDIENCE" in str(env)
    )
    grants = {
        (g[1], ref(g[2].get("bucket") or g[2].get("secret_id") or g[2].get("dicom_store_id")))
        for g in grants_of(cfg, "google_service_account.review.member")
    }
    assert grants >= {
        ("roles/storage.objectViewer", f"{bucket('uploads')}.name"),
        ("roles/storage.objectUser", "local.output_bucket"),
        ("roles/secretmanager.secretAccessor", "google_secret_manager_secret.webhook.secret_id"),
        ("roles/healthcare.dicomEditor", "google_healthcare_dicom_store.results[0].id"),
    }, grants
    writer = res(cfg, "google_storage_bucket_iam_member", "review_output_writer")
    assert ref(block(writer, "condition")["expression"]) == "local.review_output_condition"
    assert "local.review_output_suffixes" in str(cfg["locals"]["review_output_condition"])
    allowed = cfg["locals"]["review_output_suffixes"]
    inference = str(cfg["locals"]["inference_output_condition"])
    assert "!resource.name.endsWith" in inference and "local.review_output_suffixes" in inference, (
        "the inference identity may write the review outputs"
    )
    assert sorted(allowed) == sorted([naming_suffix("REVIEW_SR_SUFFIX"), naming_suffix("REVIEW_SEG_SUFFIX"),
                                      naming_suffix("REVIEW_SUFFIX")]), allowed  # fmt: skip
    push_grants = grants_of(cfg, "google_service_account.review_push_invoker.member")
    assert [(g[1], ref(g[2].get("name"))) for g in push_grants] == [
        ("roles/run.invoker", "google_cloud_run_v2_service.review.name")
    ]
    watched = " ".join(str(p) for p in cfg["resource"].get("google_monitoring_alert_policy", {}).values())
    for subscription in ("review_dead_letter", "review_push"):
        assert f"google_pubsub_subscription.{subscription}.name" in watched, f"no alert on {subscription}"
    django = [g for g in iam_members(cfg) if "var.django_service_account_email" in str(g[2].get("member"))]
    assert [(g[1], ref(g[2].get("topic"))) for g in django] == [
        ("roles/pubsub.publisher", "google_pubsub_topic.review.name")
    ]


def naming_suffix(name: str) -> str:
    from pipeline_common import naming

    return getattr(naming, name)


CHECKS: list[Callable[[dict[str, Any]], None]] = [
    check_providers_pinned,
    check_buckets_private,
    check_push_subscription,
    check_dead_letters,
    check_delivery_handoff,
    check_push_identity,
    check_function_trigger,
    check_service_gpu,
    check_job_gpu,
    check_least_privilege,
    check_grants_for_runtime,
    check_review_component,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_wiring(config: dict[str, Any], check: Callable[[dict[str, Any]], None]) -> None:
    check(config)


# Each mutation breaks one thing the checks exist for; the matching check must notice.
_SUB = ["resource", "google_pubsub_subscription", "inference_push"]
_SVC = ["resource", "google_cloud_run_v2_service", "inference", "template", 0]
_FN = ["resource", "google_cloudfunctions2_function", "ingest"]
_JOB = ["resource", "google_cloud_run_v2_job", "backfill", "template", 0, "template", 0]

MUTATIONS = {
    "push-without-oidc": (check_push_subscription, set_at([*_SUB, "push_config", 0, "oidc_token"], DELETE)),
    "push-elsewhere": (
        check_push_subscription,
        set_at([*_SUB, "push_config", 0, "push_endpoint"], "https://example.org"),
    ),
    "no-dead-letter-policy": (check_dead_letters, set_at([*_SUB, "dead_letter_policy"], DELETE)),
    "delivery-dead-lettered": (
        check_delivery_handoff,
        set_at(
            ["resource", "google_pubsub_subscription", "delivery_push", "dead_letter_policy"],
            [{"dead_letter_topic": "${google_pubsub_topic.dead_letter.id}", "max_delivery_attempts": 5}],
        ),
    ),
    "delivery-pushed-to-inference": (
        check_delivery_handoff,
        set_at(
            ["resource", "google_pubsub_subscription", "delivery_push", "push_config"],
            [{"push_endpoint": "${google_cloud_run_v2_service.inference.uri}"}],
        ),
    ),
    "dead-letters-unrecorded": (
        check_dead_letters,
        set_at(["resource", "google_pubsub_subscription", "dead_letter_record"], DELETE),
    ),
    "dead-letters-dropped": (
        check_dead_letters,
        set_at(
            ["resource", "google_pubsub_subscription", "dead_letter", "topic"],
            "${google_pubsub_topic.inference.id}",
        ),
    ),
    "trigger-other-bucket": (
        check_function_trigger,
        set_at([*_FN, "event_trigger", 0, "event_filters", 0, "value"], f"${{{bucket('models')}.name}}"),
    ),
    "trigger-no-retry": (
        check_function_trigger,
        set_at([*_FN, "event_trigger", 0, "retry_policy"], "RETRY_POLICY_DO_NOT_RETRY"),
    ),
    "service-without-gpu": (
        check_service_gpu,
        set_at([*_SVC, "containers", 0, "resources", 0, "limits", "nvidia.com/gpu"], DELETE),
    ),
    "service-no-readyz": (
        check_service_gpu,
        set_at([*_SVC, "containers", 0, "startup_probe", 0, "http_get", 0, "path"], "/"),
    ),
    "job-without-gpu": (check_job_gpu, set_at([*_JOB, "node_selector"], DELETE)),
    "project-editor": (
        check_least_privilege,
        set_at(
            ["resource", "google_project_iam_member", "eventarc_event_receiver", "role"],
            "roles/editor",
        ),
    ),
    "key-file": (check_least_privilege, set_at(["resource", "google_service_account_key"], {"k": {}})),
    "unconditional-writer": (
        check_least_privilege,
        set_at(
            ["resource", "google_storage_bucket_iam_member", 'gpu_output_writer["inference"]', "condition"],
            DELETE,
        ),
    ),
    "shared-identity": (
        check_least_privilege,
        set_at([*_JOB, "service_account"], "${google_service_account.inference.email}"),
    ),
    "public-bucket": (
        check_buckets_private,
        set_at(
            ["resource", "google_storage_bucket", 'private["uploads"]', "public_access_prevention"],
            "inherited",
        ),
    ),
    "review-on-a-gpu": (
        check_review_component,
        set_at(
            ["resource", "google_cloud_run_v2_service", "review", "template", 0, "node_selector"],
            [{"accelerator": "nvidia-l4"}],
        ),  # fmt: skip
    ),
    "review-writes-anything": (
        check_review_component,
        set_at(
            [
                "resource",
                "google_storage_bucket_iam_member",
                "review_output_writer",
                "condition",
                0,
                "expression",
            ],
            "resource.name.endsWith('.dcm')",
        ),  # fmt: skip
    ),
    "django-publishes-inference": (
        check_review_component,
        set_at(
            ["resource", "google_pubsub_topic_iam_member", "django_review_publisher", "topic"],
            "${google_pubsub_topic.inference.name}",
        ),  # fmt: skip
    ),
    "review-not-dead-lettered": (
        check_review_component,
        set_at(["resource", "google_pubsub_subscription", "review_push", "dead_letter_policy"], DELETE),
    ),
    "unpinned-provider": (
        check_providers_pinned,
        set_at(["terraform", 0, "required_providers", 0, "google", "version"], ">= 5"),
    ),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_checks_catch_broken_wiring(config: dict[str, Any], name: str) -> None:
    check, mutate = MUTATIONS[name]
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises(AssertionError):
        check(broken)


def test_service_writer_may_write_every_service_output_and_no_upload(config: dict[str, Any]) -> None:
    """Every suffix the service writes (all of naming.OUTPUT_SUFFIXES but the ingest function's
    rejection record and the review component's outputs, ``.pending.json`` included) is in the
    write condition; an upload is not."""
    from pipeline_common import naming

    allowed = re.findall(r'"(\.[a-z.-]+)"', str(config["locals"]["inference_output_condition"]))
    assert allowed
    review = (
        naming.REVIEW_SR_SUFFIX,
        naming.REVIEW_SEG_SUFFIX,
        naming.REVIEW_SUFFIX,
    )  # the review component's
    for suffix in naming.OUTPUT_SUFFIXES:
        if suffix != naming.REJECTION_SUFFIX and suffix not in review:
            assert any(suffix.endswith(a) for a in allowed), f"the service cannot write STEM{suffix}"
    assert not any(name.endswith(a) for a in allowed for name in ("x.dcm", "x.DCM", "x"))


def test_no_owner_editor_or_key_anywhere_in_text() -> None:
    """Belt and braces over the parsed checks: no basic role or key resource in any file."""
    for path in TF_DIR.rglob("*.tf"):
        text = path.read_text()
        assert not re.search(r"roles/(owner|editor)\b", text), path
        assert "google_service_account_key" not in text, path


def test_tfvars_example_names_real_variables(config: dict[str, Any]) -> None:
    with (TF_DIR / "terraform.tfvars.example").open() as fh:
        example = clean(hcl2.load(fh))
    unknown = set(example) - set(config["variable"])
    assert not unknown, f"terraform.tfvars.example sets undeclared variables: {unknown}"
    required = {name for name, body in config["variable"].items() if "default" not in body}
    assert required <= set(example), f"required variables missing from the example: {required - set(example)}"


def test_outputs_and_locals_reference_declared_things(config: dict[str, Any]) -> None:
    """A cheap stand-in for `terraform validate`: every var./local./resource reference resolves."""
    text = "\n".join(p.read_text() for p in TF_DIR.glob("*.tf"))
    for var in set(re.findall(r"\bvar\.([a-z0-9_]+)", text)):
        assert var in config["variable"], f"var.{var} is not declared"
    for local in set(re.findall(r"\blocal\.([a-z0-9_]+)", text)):
        assert local in config["locals"], f"local.{local} is not defined"
    refs = re.findall(r"(?<![\w.\"])(google(?:_[a-z0-9]+)+)\.([a-z0-9_]+(?:\[\"[a-z0-9_]+\"\])?)\.", text)
    for rtype, name in set(refs):
        assert name in config["resource"].get(rtype, {}), f"{rtype}.{name} is referenced but not declared"
    for rtype, name in set(re.findall(r"\bdata\.([a-z0-9_]+)\.([a-z0-9_]+)", text)):
        assert name in config["data"].get(rtype, {}), f"data.{rtype}.{name} is not declared"


# ---------------------------------------------------------------------------------------------
# checkov
# ---------------------------------------------------------------------------------------------
def run_checkov(directory: Path) -> dict[str, Any]:
    if not Path(CHECKOV).exists() and shutil.which(CHECKOV) is None:
        pytest.fail(
            f"checkov not found at {CHECKOV}: run `make test` (it installs .venv-checkov) or set CHECKOV"
        )
    env = {
        **os.environ,
        "BC_SKIP_MAPPING": "TRUE",
        "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
        "LOG_LEVEL": "ERROR",
    }
    proc = subprocess.run(
        [CHECKOV, "-d", str(directory), "--framework", "terraform", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode in (0, 1), f"checkov crashed ({proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    if isinstance(report, list):  # one entry per framework
        report = next(r for r in report if r.get("check_type") == "terraform")
    return report


@pytest.mark.slow  # runs checkov, a separate program, over the whole configuration
def test_checkov_passes_with_justified_skips() -> None:
    report = run_checkov(TF_DIR)
    summary, results = report["summary"], report["results"]
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 40, "checkov did not see the configuration"
    assert summary["passed"] >= 30
    failed = results.get("failed_checks", [])
    # Offline checkov has no severities (they come from Prisma Cloud), so every failure counts.
    high = [c for c in failed if (c.get("severity") or "").upper() in ("HIGH", "CRITICAL")]
    assert not high, f"high-severity findings: {[(c['check_id'], c['resource']) for c in high]}"
    assert not failed, "\n".join(f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in failed)
    for skipped in results.get("skipped_checks", []):
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) >= 40, (
            f"{skipped['check_id']} on {skipped['resource']} skipped without a justification"
        )


@pytest.mark.slow  # runs checkov
def test_checkov_catches_a_public_bucket(tmp_path: Path) -> None:
    """The checkov gate can fail: the same configuration without public access prevention.

    Checkov reports the one bucket definition (storage.tf) that the upload bucket comes from.
    """
    copy_dir = tmp_path / "terraform"
    shutil.copytree(TF_DIR, copy_dir, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    storage = copy_dir / "storage.tf"
    text = storage.read_text()
    assert 'public_access_prevention    = "enforced"' in text
    storage.write_text(text.replace('public_access_prevention    = "enforced"', "", 1))
    report = run_checkov(copy_dir)
    failed = {(c["check_id"], c["resource"]) for c in report["results"].get("failed_checks", [])}
    assert ("CKV_GCP_114", "google_storage_bucket.private") in failed


def test_pubsub_schema_lists_exactly_the_contract_fields() -> None:
    """The optional topic schema refuses unknown fields, so it must match docs/contracts.md."""
    contracts = (ROOT / "docs" / "contracts.md").read_text()
    section = contracts[contracts.index("dicom-inference-request/1") :]
    example = json.loads(re.search(r"```json\n(.*?)\n```", section, re.S).group(1))
    proto = (TF_DIR / "schemas" / "dicom_inference_request.proto").read_text()

    def fields(message: str) -> set[str]:
        body = re.search(rf"message {message} \{{(.*?)\n  \}}", proto, re.S)
        text = body.group(1) if body else proto
        return set(re.findall(r"^\s+(?:string|int64|Source|Dicom) (\w+) = \d+;", text, re.M))

    top = set(re.findall(r"^  (?:string|Source|Dicom) (\w+) = \d+;", proto, re.M))
    assert top == set(example)
    assert fields("Source") == set(example["source"])
    assert fields("Dicom") == set(example["dicom"])


def test_delivery_schema_lists_exactly_what_the_service_publishes() -> None:
    """dicom-delivery/1's optional topic schema refuses unknown fields: it must hold every field
    the service's own publisher writes (event_time included), and no other."""
    from gpu_service.request import request_for_object
    from gpu_service.results.delivery_queue import delivery_message

    request = request_for_object("b", "a/b.dcm", "17", None)
    request = type(request)(**{**request.__dict__, "event_time": "2026-01-01T00:00:00Z"})
    body = json.loads(delivery_message(request, "webhook_failed")[0])
    proto = (TF_DIR / "schemas" / "dicom_delivery.proto").read_text()
    top = set(re.findall(r"^  (?:string|Source) (\w+) = \d+;", proto, re.M))
    source = re.search(r"message Source \{(.*?)\n  \}", proto, re.S).group(1)
    assert top == set(body)
    assert set(re.findall(r"string (\w+) = \d+;", source)) == set(body["source"])
    tf = (TF_DIR / "pubsub.tf").read_text()
    assert 'file("${path.module}/schemas/dicom_delivery.proto")' in tf
    assert "schema   = google_pubsub_schema.delivery[0].id" in tf


def test_review_schema_lists_exactly_the_contract_fields() -> None:
    """The review topic's schema refuses unknown fields: it must match docs/contracts.md's example."""
    contracts = (ROOT / "docs" / "contracts.md").read_text()
    section = contracts[contracts.index("### Pub/Sub message: `dicom-review/1`") :]
    example = json.loads(re.search(r"```json\n(.*?)\n```", section, re.S).group(1))
    proto = (TF_DIR / "schemas" / "dicom_review.proto").read_text()

    def fields(message: str) -> set[str]:
        body = re.search(rf"message {message} \{{(.*?)\n  \}}", proto, re.S)
        return set(re.findall(r"^\s+(?:repeated )?\w+ (\w+) = \d+;", body.group(1), re.M))

    top = set(re.findall(r"^  (?:string|Region|Reviewer|Result) (\w+) = \d+;", proto, re.M))
    assert top == set(example)
    assert fields("Result") == set(example["result"])
    assert fields("Source") == set(example["result"]["source"])
    assert fields("Reviewer") == set(example["reviewer"])
    assert fields("Region") == {"type", "points", "x", "y", "radius"}
    assert fields("Point") == {"x", "y"}
