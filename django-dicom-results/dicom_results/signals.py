"""``result_received`` and ``review_decided``.

``result_received``: sent once per stored result, after its transaction commits.

Receivers get ``sender=InferenceResult`` and ``result=<the new row>``. A duplicate delivery
(same ``webhook-id``) sends nothing. Receivers run in the request that stored the row:
keep them quick and hand slow work (notifications, network calls) to a task queue, so
the webhook keeps answering in milliseconds.
"""

from django.dispatch import Signal

result_received = Signal()

# Sent once per new ``ReviewDecision``, after its transaction commits, with
# ``sender=ReviewDecision`` and ``decision=<the new row>``. The dicom-review/1 publisher
# listens to it; a host may add its own receivers (notifications).
review_decided = Signal()
