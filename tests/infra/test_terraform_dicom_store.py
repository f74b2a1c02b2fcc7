"""The optional Cloud Healthcare API DICOM store (infra/terraform/healthcare.tf): off by default,
dicomEditor for the service and the job on that one store only, DICOMWEB_URL in both."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.terraform import default, iam_members, load_config, ref, res


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return load_config()


def test_store_is_optional_and_off_by_default(config: dict[str, Any]) -> None:
    assert default(config, "enable_dicom_store") is False
    for rtype in ("google_healthcare_dataset", "google_healthcare_dicom_store"):
        assert res(config, rtype, "results")["count"] == "${var.enable_dicom_store ? 1 : 0}"
    store = res(config, "google_healthcare_dicom_store", "results")
    assert ref(store["dataset"]) == "google_healthcare_dataset.results[0].id"


def test_editor_role_on_that_store_only_for_the_runtimes_that_store(config: dict[str, Any]) -> None:
    """The inference service, the backfill job and the review component (assessment SRs)."""
    grant = res(config, "google_healthcare_dicom_store_iam_member", "gpu_dicom_editor")
    assert grant["role"] == "roles/healthcare.dicomEditor"
    assert ref(grant["dicom_store_id"]) == "google_healthcare_dicom_store.results[0].id"
    assert "local.gpu_runtimes" in grant["for_each"] and "var.enable_dicom_store" in grant["for_each"]
    healthcare = [(name, role) for name, role, _ in iam_members(config) if "healthcare" in role]
    assert healthcare == [
        ("google_healthcare_dicom_store_iam_member.gpu_dicom_editor", "roles/healthcare.dicomEditor"),
        ("google_healthcare_dicom_store_iam_member.review_dicom_editor", "roles/healthcare.dicomEditor"),
    ]
    review = res(config, "google_healthcare_dicom_store_iam_member", "review_dicom_editor")
    assert ref(review["member"]) == "google_service_account.review.member"
    assert ref(review["dicom_store_id"]) == "google_healthcare_dicom_store.results[0].id"
    assert review["count"] == "${var.enable_dicom_store ? 1 : 0}"
