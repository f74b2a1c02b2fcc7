"""Quality in use, per model: what the radiologists' decisions say about the AI's results.

Only the decision in force counts (the latest of each result: one no later decision
supersedes), so a result reviewed twice counts once, as last decided. The figures are computed
by pure functions over :class:`Reviewed` rows, so they can be checked on a known set; the
acceptance chart is a server-rendered SVG (no script, no library).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from html import escape

from django.utils import timezone

from dicom_results.models import InferenceResult, ReviewDecision

BUCKETS = ("week", "day")


@dataclass(frozen=True)
class Reviewed:
    """One result as last decided."""

    model: tuple[str, str, str]  # name, version, sha256
    ai_label: str
    decision: str
    reason_code: str
    corrected_label: str
    decided_on: date
    decision_ms: int | None


@dataclass
class ModelQuality:
    model: tuple[str, str, str]
    reviewed: int = 0
    accepted: int = 0
    rejected: int = 0
    corrected: int = 0
    median_decision_ms: float | None = None
    # (bucket start, accepted, reviewed), oldest first
    acceptance: list[tuple[date, int, int]] = field(default_factory=list)
    reasons: list[tuple[str, int]] = field(default_factory=list)
    # ai label -> (reviewed with a label, agreeing, {reviewed label: count})
    agreement: list[tuple[str, int, int, list[tuple[str, int]]]] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.reviewed if self.reviewed else None

    @property
    def chart(self) -> str:
        return acceptance_svg(self.acceptance)


def reviewed_label(row: Reviewed) -> str | None:
    """The label the radiologist stands behind: the AI's when accepted, the corrected one when
    corrected; a rejection names none."""
    if row.decision == ReviewDecision.Decision.ACCEPT:
        return row.ai_label
    if row.decision == ReviewDecision.Decision.CORRECT:
        return row.corrected_label
    return None


def bucket_start(day: date, bucket: str) -> date:
    return day - timedelta(days=day.weekday()) if bucket == "week" else day


def summarise(rows: list[Reviewed], bucket: str = "week") -> list[ModelQuality]:
    """The figures per model, models sorted by name, version and SHA-256."""
    by_model: dict[tuple[str, str, str], list[Reviewed]] = defaultdict(list)
    for row in rows:
        by_model[row.model].append(row)
    out = []
    for model in sorted(by_model):
        group = by_model[model]
        decisions = Counter(r.decision for r in group)
        quality = ModelQuality(
            model=model,
            reviewed=len(group),
            accepted=decisions[ReviewDecision.Decision.ACCEPT],
            rejected=decisions[ReviewDecision.Decision.REJECT],
            corrected=decisions[ReviewDecision.Decision.CORRECT],
        )
        times = [r.decision_ms for r in group if r.decision_ms is not None]
        quality.median_decision_ms = statistics.median(times) if times else None
        buckets: dict[date, list[int]] = defaultdict(lambda: [0, 0])
        for r in group:
            tally = buckets[bucket_start(r.decided_on, bucket)]
            tally[0] += r.decision == ReviewDecision.Decision.ACCEPT
            tally[1] += 1
        quality.acceptance = [(start, a, n) for start, (a, n) in sorted(buckets.items())]
        reasons = Counter(r.reason_code for r in group if r.decision == ReviewDecision.Decision.REJECT)
        quality.reasons = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        labels: dict[str, Counter] = defaultdict(Counter)
        for r in group:
            label = reviewed_label(r)
            if label is not None:
                labels[r.ai_label][label] += 1
        quality.agreement = [
            (ai, sum(seen.values()), seen[ai], sorted(seen.items())) for ai, seen in sorted(labels.items())
        ]
        out.append(quality)
    return out


def latest_reviews(since: datetime | None = None):
    """The decisions in force, with their results (completed ones: a failed result has none)."""
    rows = (
        ReviewDecision.objects.filter(
            superseded_by__isnull=True, result__status=InferenceResult.Status.COMPLETED
        )
        .select_related("result")
        .defer("result__body")
    )  # the record's fields suffice: no JSON body
    if since is not None:
        rows = rows.filter(decided_at__gte=since)
    return rows.order_by("decided_at", "id")


def as_reviewed(decision: ReviewDecision) -> Reviewed:
    result = decision.result
    return Reviewed(
        model=(result.model_name, result.model_version, result.model_sha256),
        ai_label=result.label,
        decision=decision.decision,
        reason_code=decision.reason_code,
        corrected_label=decision.corrected_label,
        decided_on=timezone.localtime(decision.decided_at).date(),
        decision_ms=decision.decision_ms,
    )


def acceptance_svg(points: list[tuple[date, int, int]], width: int = 560, height: int = 180) -> str:
    """A line of the acceptance rate per bucket (0 to 100 %), each point labelled with its count;
    read at a glance, and printable. Built here: no chart library renders SVG on the server
    without pulling a plotting stack into a Django app."""
    left, right, top, bottom = 40, 12, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><title>acceptance rate per period</title>'
    ]
    for pct in (0, 50, 100):
        y = top + plot_h * (1 - pct / 100)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{pct}%</text>')
    if not points:
        parts.append(
            f'<text x="{left + 8}" y="{top + plot_h / 2:.1f}" font-size="12">no decisions yet</text>'
        )
        return "".join(parts) + "</svg>"
    step = plot_w / max(len(points) - 1, 1)
    coords = []
    for i, (start, accepted, total) in enumerate(points):
        x = left + (step * i if len(points) > 1 else plot_w / 2)
        y = top + plot_h * (1 - accepted / total)
        coords.append(f"{x:.1f},{y:.1f}")
        rate = round(100 * accepted / total)
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#1565c0"><title>'
            f"{escape(start.isoformat())}: {accepted} of {total} accepted ({rate}%)</title></circle>"
        )
        parts.append(
            f'<text x="{x:.1f}" y="{y - 8:.1f}" text-anchor="middle" font-size="10">'
            f"{rate}% (n={total})</text>"
        )
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle" font-size="10">'
            f"{escape(start.strftime('%d %b'))}</text>"
        )
    if len(coords) > 1:
        parts.append(f'<polyline points="{" ".join(coords)}" fill="none" stroke="#1565c0" stroke-width="2"/>')
    return "".join(parts) + "</svg>"
