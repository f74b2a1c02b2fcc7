"""Dead letters are never silent: each inference message that reaches the dead-letter topic gets a
``STEM.dead-letter.json`` beside its upload and one ERROR log line naming the object, and stays on
the hold subscription until the backfill job replays it (docs/contracts.md, "Dead letters")."""

from __future__ import annotations

import logging

from gpu_service.request import InferenceRequest
from gpu_service.results.dead_letter import dead_letter_record
from gpu_service.results.outputs import RequestOutputs
from pipeline_common import naming
from pipeline_common.jsonlog import log

logger = logging.getLogger(__name__)
ROLE = "dead_letter"


def replay_command(hold_subscription: str | None) -> str:
    return f"python -m gpu_service.job --subscription {hold_subscription or 'DEAD_LETTER_HOLD_SUBSCRIPTION'}"


def record_dead_letter(
    outputs: RequestOutputs, request: InferenceRequest, message_id: str | None, hold_subscription: str | None
) -> None:
    """Create-only: a second dead letter of the same upload keeps the first record (and logs again)."""
    replay = replay_command(hold_subscription)
    outputs.write(
        request,
        naming.DEAD_LETTER_SUFFIX,
        ROLE,
        dead_letter_record(request, message_id, replay),
        "application/json",
    )
    log(logger, logging.ERROR, "inference message dead-lettered; its upload has no result until replayed",
        message_id=message_id, replay=replay,
        record_uri=outputs.location(request, naming.DEAD_LETTER_SUFFIX).uri)  # fmt: skip
