"""cloudbuild.yaml: valid YAML, the expected steps in a safe order, substitutions that resolve.

Cloud Build replaces `$NAME` / `${NAME}` in every step before running it, so a shell variable
written with a single `$` is silently blanked; these checks catch that too.
"""

from __future__ import annotations

import re
from typing import Any

import hcl2
import pytest
import yaml

from tests.support import REPO

ROOT = REPO
CLOUDBUILD = ROOT / "cloudbuild.yaml"
TF_DIR = ROOT / "infra" / "terraform"

EXPECTED_STEPS = ["tests", "build-image", "push-image", "terraform-init", "terraform-plan", "terraform-apply"]
# https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values
BUILT_INS = {
    "PROJECT_ID", "PROJECT_NUMBER", "BUILD_ID", "LOCATION", "TRIGGER_NAME", "COMMIT_SHA", "SHORT_SHA",
    "REVISION_ID", "REPO_NAME", "REPO_FULL_NAME", "BRANCH_NAME", "TAG_NAME", "REF_NAME",
    "TRIGGER_BUILD_CONFIG_PATH", "SERVICE_ACCOUNT_EMAIL", "SERVICE_ACCOUNT",
}  # fmt: skip


@pytest.fixture(scope="module")
def build() -> dict[str, Any]:
    with CLOUDBUILD.open() as fh:
        doc = yaml.safe_load(fh)
    assert isinstance(doc, dict) and isinstance(doc.get("steps"), list)
    return doc


def steps_by_id(build: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["id"]: step for step in build["steps"]}


def step_text(step: dict[str, Any]) -> str:
    return "\n".join(str(a) for a in step.get("args", []))


def substitution_refs(text: str) -> set[str]:
    """Names Cloud Build would substitute (`$$` is an escaped, literal `$`)."""
    text = text.replace("$$", "")
    return {
        m.group(1) or m.group(2)
        for m in re.finditer(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", text)
    }


def tf_variables() -> dict[str, Any]:
    with (TF_DIR / "variables.tf").open() as fh:
        doc = hcl2.load(fh)
    out = {}
    for entry in doc["variable"]:
        for name, body in entry.items():
            value = body.get("default")
            out[name.strip('"')] = value.strip('"') if isinstance(value, str) else value
    return out


def test_steps_in_order(build: dict[str, Any]) -> None:
    ids = [step.get("id") for step in build["steps"]]
    assert ids == EXPECTED_STEPS


def test_nothing_is_pushed_or_deployed_untested(build: dict[str, Any]) -> None:
    steps = steps_by_id(build)
    assert "make test" in step_text(steps["tests"])
    assert set(steps["push-image"]["waitFor"]) == {"tests", "build-image"}
    # Every later step waits (directly or through its predecessor) for the push.
    chain = ["push-image", "terraform-init", "terraform-plan", "terraform-apply"]
    for before, after in zip(chain, chain[1:], strict=False):
        assert steps[after].get("waitFor") == [before], f"{after} must wait for {before}"


def test_image_built_from_the_service_dockerfile_and_pushed_to_artifact_registry(
    build: dict[str, Any],
) -> None:
    steps = steps_by_id(build)
    args = steps["build-image"]["args"]
    assert args[0] == "build" and args[-1] == "."  # repository root is the build context
    assert "--file=gpu_service/Dockerfile" in args
    tag = next(a.removeprefix("--tag=") for a in args if a.startswith("--tag="))
    assert tag == "${_REGION}-docker.pkg.dev/${PROJECT_ID}/${_REPOSITORY}/${_IMAGE_NAME}:${_IMAGE_TAG}"
    assert build["images"] == [tag]
    push = step_text(steps["push-image"])
    assert "docker push" in push and "RepoDigests" in push and "/workspace/image_ref" in push


def test_terraform_plans_the_pushed_digest_and_applies_that_plan(build: dict[str, Any]) -> None:
    steps = steps_by_id(build)
    for sid in ("terraform-init", "terraform-plan", "terraform-apply"):
        assert steps[sid]["dir"] == "infra/terraform"
        assert steps[sid]["name"].startswith("hashicorp/terraform:")
    assert "-backend-config" in step_text(steps["terraform-init"])
    plan = step_text(steps["terraform-plan"])
    assert "terraform plan" in plan and "-out=tfplan" in plan
    assert "image=$$(cat /workspace/image_ref)" in plan
    apply = step_text(steps["terraform-apply"])
    assert "terraform apply" in apply and apply.rstrip().endswith("tfplan")
    # The -var names exist in the module.
    variables = tf_variables()
    for name in re.findall(r'-var="([a-z_]+)=', plan):
        assert name in variables, f"-var {name} is not a Terraform variable"


def test_terraform_image_meets_required_version(build: dict[str, Any]) -> None:
    with (TF_DIR / "versions.tf").open() as fh:
        required = hcl2.load(fh)["terraform"][0]["required_version"].strip('"')
    lower = re.search(r">=\s*(\d+)\.(\d+)", required)
    versions = {
        s["name"].split(":")[1] for s in build["steps"] if s["name"].startswith("hashicorp/terraform:")
    }
    assert len(versions) == 1
    major, minor = (int(x) for x in versions.pop().split(".")[:2])
    assert lower and (major, minor) >= (int(lower.group(1)), int(lower.group(2))) and major < 2


def test_substitutions_declared_used_and_consistent(build: dict[str, Any]) -> None:
    declared = build["substitutions"]
    assert {"_REGION", "_REPOSITORY", "_IMAGE_TAG", "_TF_STATE_BUCKET", "_APPLY"} <= set(declared)
    for name in declared:
        assert re.fullmatch(r"_[A-Z0-9_]+", name), (
            f"user substitutions start with _ and are upper case: {name}"
        )
    used: set[str] = set()
    for step in build["steps"]:
        used |= substitution_refs(step_text(step)) | substitution_refs(str(step.get("name", "")))
    used |= substitution_refs(" ".join(build.get("images", [])))
    unknown = {u for u in used if u not in declared and u not in BUILT_INS}
    assert not unknown, f"unescaped $ or undeclared substitutions (write $$ for shell variables): {unknown}"
    assert set(declared) <= used, f"declared but unused: {set(declared) - used}"
    # Defaults agree with the Terraform module, so a bare `gcloud builds submit` deploys one thing.
    variables = tf_variables()
    assert declared["_REGION"] == variables["region"]
    assert declared["_REPOSITORY"] == variables["repository_id"]
    assert declared["_IMAGE_NAME"] == variables["image_name"]


def test_build_options(build: dict[str, Any]) -> None:
    options = build["options"]
    # Needed with a user-managed build service account (README.md, "Deploy to Google Cloud").
    assert options["logging"] == "CLOUD_LOGGING_ONLY"
    assert int(str(build["timeout"]).removesuffix("s")) >= 3600
