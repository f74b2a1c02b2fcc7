"""The record of an inference message that reached the dead-letter topic (``STEM.dead-letter.json``,
``dicom-dead-letter/1``): written by ``POST /dead-letter`` beside the upload, so a dead letter is
never silent. The message itself stays on the hold subscription for the replay
(docs/contracts.md, "Dead letters").
"""

from __future__ import annotations

import json
from typing import Any

from gpu_service.request import InferenceRequest
from pipeline_common import contract
from pipeline_common.timefmt import rfc3339


def dead_letter_record(request: InferenceRequest, message_id: str | None, replay: str) -> bytes:
    body: dict[str, Any] = {
        "schema": contract.DEAD_LETTER,
        "correlation_id": request.correlation_id,
        "source": {"bucket": request.bucket, "name": request.name, "generation": request.generation},
        "message_id": message_id,
        "dead_lettered_at": rfc3339(),
        "replay": replay,
    }
    return json.dumps(body, ensure_ascii=False, indent=2).encode("utf-8")
