"""``result_received``: sent once per stored result, after its transaction commits.

Receivers get ``sender=InferenceResult`` and ``result=<the new row>``. A duplicate delivery
(same ``webhook-id``) sends nothing.
"""

from django.dispatch import Signal

result_received = Signal()
