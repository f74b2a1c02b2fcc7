"""Schema ids of the documents the components exchange, and the defaults both must share."""

INFERENCE_REQUEST = "dicom-inference-request/1"  # Pub/Sub message, function -> service
REJECTION = "dicom-rejection/1"  # STEM.rejected.json, written by the function
INFERENCE_RESULT = "dicom-inference-result/1"  # STEM.result.json = webhook body, service -> Django
DEAD_LETTER = "dicom-dead-letter/1"  # STEM.dead-letter.json: the inference message was dead-lettered
DELIVERY = "dicom-delivery/1"  # Pub/Sub message, service -> service: deliver a durable result
REVIEW = "dicom-review/1"  # Pub/Sub message, Django -> review component: a radiologist's decision
REVIEW_RECORD = "dicom-review-record/1"  # STEM.review.json: the latest decision, stored
REVIEW_RECEIPT = "dicom-review-receipt/1"  # webhook body, review component -> Django

# rows x columns x frames an image may have (MAX_PIXELS of both components): the function
# rejects bigger images from the header, the service refuses them before decoding.
# A 4k x 4k x 4 tomosynthesis fits.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
