"""``python manage.py publish_reviews [--unreceipted]``: publish the decisions Pub/Sub did not take
when they were made (``published_at`` null), oldest first; with ``--unreceipted`` also those
published but never acknowledged by a receipt (a message dead-lettered while the store was down)
or acknowledged by a ``failed`` one (the store refused them: republish once that is fixed).
The review component is idempotent on the review id, so publishing twice stores one SR.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from dicom_results import review_publish
from dicom_results.models import ReviewDecision, ReviewReceipt


class Command(BaseCommand):
    help = "Publish dicom-review/1 messages for decisions not yet published (or not yet stored)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--unreceipted", action="store_true",
                            help="also republish decisions with no receipt yet, or a failed one")  # fmt: skip

    def handle(self, *args, unreceipted: bool = False, **options) -> None:
        if review_publish.topic() is None:
            raise CommandError("DICOM_RESULTS_REVIEW_TOPIC is not set")
        pending = ReviewDecision.objects.select_related("result", "supersedes")
        if unreceipted:
            pending = pending.filter(Q(receipt__isnull=True) | Q(receipt__status=ReviewReceipt.Status.FAILED))
        else:
            pending = pending.filter(published_at__isnull=True)
        sent = failed = 0
        for decision in pending.order_by("decided_at", "id").iterator():
            if review_publish.publish(decision, force=unreceipted):
                sent += 1
            else:
                failed += 1
        self.stdout.write(f"published {sent}, failed {failed}")
        if failed:
            raise CommandError(f"{failed} decisions could not be published; run it again")
