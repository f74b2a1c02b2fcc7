"""Rows, reviewers and form fields for the review tests."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission

from dicom_results.models import InferenceResult
from dicom_results.schema import parse_result
from tests.support import record, webhook_id_for

# The source's size as the record's image block gives it (docs/contracts.md): 1024 x 768.
IMAGE = {"rows": 768, "columns": 1024, "frame_index": 0, "n_frames": 1, "photometric": "MONOCHROME2"}
_generation = iter(range(1000, 100000))


def result_row(**overrides: Any) -> InferenceResult:
    """A stored completed result (with the image block unless ``image=None``), unique source."""
    rec = record(image=IMAGE)
    rec["source"] = {**rec["source"], "generation": str(next(_generation))}
    rec.update(overrides)
    return InferenceResult.objects.create(webhook_id=webhook_id_for(rec), body=rec, **parse_result(rec))


def radiologists() -> Group:
    group, _ = Group.objects.get_or_create(name="radiologists")
    group.permissions.add(
        Permission.objects.get(codename="review_result", content_type__app_label="dicom_results")
    )
    return group


def reviewer(username: str = "dr-house", **fields: Any):
    user = get_user_model().objects.create_user(username, password=f"pw-{username}", is_staff=True, **fields)
    user.groups.add(radiologists())
    return user


def hidden_fields(html: str) -> dict[str, str]:
    """The review form's hidden tokens and the CSRF token, as a browser would send them."""
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))
