"""``python manage.py export_reviews --since YYYY-MM-DD [--output FILE] [--vertex]``: the
reviewed results as JSONL for retraining (the shape: dicom_results/export.py)."""

from __future__ import annotations

import json
import sys
from datetime import date, datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from dicom_results import export, quality


class Command(BaseCommand):
    help = "Write the reviewed results (latest decision each) as JSONL for a Vertex AI import."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--since", required=True, help="first day of decisions, YYYY-MM-DD")
        parser.add_argument("--output", help="file to write (default: standard output)")
        parser.add_argument("--vertex", action="store_true",
                            help="leave out the 'review' key: only the keys Vertex AI imports")  # fmt: skip

    def handle(self, *args, since: str, output: str | None, vertex: bool, **options) -> None:
        try:
            day = date.fromisoformat(since)
        except ValueError:
            raise CommandError(f"--since must be YYYY-MM-DD, got {since!r}") from None
        start = timezone.make_aware(datetime.combine(day, time.min))
        decisions = quality.latest_reviews(start).select_related("receipt")
        out = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
        written = 0
        try:
            for decision in decisions.iterator(chunk_size=500):
                line = export.export_line(decision, vertex_only=vertex)
                if line is not None:
                    out.write(json.dumps(line, sort_keys=True) + "\n")
                    written += 1
        finally:
            if output:
                out.close()
        self.stderr.write(f"{written} reviewed results written")
