"""Run inside the local stack's Django (its settings and database): record one decision on the
result of an upload, as the review form will, and send ``review_decided`` after the commit.

``python -m tests.e2e.review_decide <object name> '<json fields>'`` prints the review id.
Until the review form's POST lands this is how the end-to-end test decides (ORM + signal).
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.db import transaction

    from dicom_results.models import InferenceResult, ReviewDecision
    from dicom_results.signals import review_decided

    name, fields = sys.argv[1], json.loads(sys.argv[2])
    result = InferenceResult.objects.get(source_name=name)
    user, _ = get_user_model().objects.get_or_create(
        username="radiologist", defaults={"first_name": "Jane", "last_name": "Doe", "is_staff": True}
    )
    user.user_permissions.add(Permission.objects.get(codename="review_result"))
    with transaction.atomic():
        decision = ReviewDecision(result=result, reviewer=user, reviewer_name="Doe^Jane",
                                  reviewer_organisation="E2E Hospital", **fields)  # fmt: skip
        decision.save()
        transaction.on_commit(lambda: review_decided.send(sender=ReviewDecision, decision=decision))
    decision.refresh_from_db()
    print(json.dumps({"review_id": str(decision.review_id), "published": decision.published_at is not None}))


if __name__ == "__main__":
    main()
