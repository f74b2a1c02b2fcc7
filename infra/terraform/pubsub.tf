# Inference requests: the function publishes one message per accepted upload; a push
# subscription delivers it to the GPU service with an OIDC token; what keeps failing ends in
# a dead-letter topic whose subscription keeps it for inspection and replay (the backfill job
# can drain it with --subscription).

# Optional: Pub/Sub schemas know Avro and Protocol Buffers, not JSON Schema. Avro's JSON encoding
# wraps nullable values ({"string": "CR"}), so only Protocol Buffers (proto3 JSON mapping)
# validate the contract's plain JSON as published. See var.enable_message_schema for why it is off.
resource "google_pubsub_schema" "inference_request" {
  count      = var.enable_message_schema ? 1 : 0
  project    = var.project_id
  name       = "${local.prefix}-inference-request-v1"
  type       = "PROTOCOL_BUFFER"
  definition = file("${path.module}/schemas/dicom_inference_request.proto")
  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic" "inference" {
  project                    = var.project_id
  name                       = "${local.prefix}-inference-requests"
  kms_key_name               = var.kms_key_name
  message_retention_duration = var.message_retention_duration

  # Messages carry DICOM header fields (patient data): store them only in the pipeline's region.
  message_storage_policy {
    allowed_persistence_regions = [var.region]
  }

  dynamic "schema_settings" {
    for_each = var.enable_message_schema ? [1] : []
    content {
      schema   = google_pubsub_schema.inference_request[0].id
      encoding = "JSON"
    }
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

resource "google_pubsub_topic" "dead_letter" {
  project                    = var.project_id
  name                       = "${local.prefix}-inference-dead-letter"
  kms_key_name               = var.kms_key_name
  message_retention_duration = var.message_retention_duration

  message_storage_policy {
    allowed_persistence_regions = [var.region]
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

# Without a subscription, messages published to the dead-letter topic would be dropped.
resource "google_pubsub_subscription" "dead_letter" {
  project                    = var.project_id
  name                       = "${local.prefix}-inference-dead-letter-keep"
  topic                      = google_pubsub_topic.dead_letter.id
  ack_deadline_seconds       = 600
  message_retention_duration = var.message_retention_duration
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "inference_push" {
  project                    = var.project_id
  name                       = "${local.prefix}-inference-push"
  topic                      = google_pubsub_topic.inference.id
  ack_deadline_seconds       = var.push_ack_deadline_seconds
  message_retention_duration = var.message_retention_duration

  push_config {
    push_endpoint = google_cloud_run_v2_service.inference.uri

    # The service checks this token (PUSH_AUDIENCE, PUSH_SERVICE_ACCOUNT) and Cloud Run checks
    # run.invoker for the same account before the request reaches the container.
    oidc_token {
      service_account_email = google_service_account.push_invoker.email
      audience              = local.push_audience
    }
  }

  retry_policy {
    minimum_backoff = var.push_min_backoff
    maximum_backoff = var.push_max_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [
    google_cloud_run_v2_service_iam_member.push_invoker,
    google_service_account_iam_member.pubsub_agent_token_creator,
    google_pubsub_topic_iam_member.pubsub_agent_dead_letter_publisher,
  ]
}

# Results whose downstream (the DICOMweb store, Django) is down: the service stages them in the
# bucket, publishes one dicom-delivery/1 message here and acknowledges the inference message;
# this subscription retries the delivery for as long as the messages are retained, with no
# dead-letter policy (docs/contracts.md, "Delivery after a downstream outage").
resource "google_pubsub_schema" "delivery" {
  count      = var.enable_message_schema ? 1 : 0
  project    = var.project_id
  name       = "${local.prefix}-delivery-v1"
  type       = "PROTOCOL_BUFFER"
  definition = file("${path.module}/schemas/dicom_delivery.proto")
  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic" "delivery" {
  project                    = var.project_id
  name                       = "${local.prefix}-delivery"
  kms_key_name               = var.kms_key_name
  message_retention_duration = var.delivery_retention

  message_storage_policy {
    allowed_persistence_regions = [var.region]
  }

  dynamic "schema_settings" {
    for_each = var.enable_message_schema ? [1] : []
    content {
      schema   = google_pubsub_schema.delivery[0].id
      encoding = "JSON"
    }
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

resource "google_pubsub_subscription" "delivery_push" {
  project                    = var.project_id
  name                       = "${local.prefix}-delivery-push"
  topic                      = google_pubsub_topic.delivery.id
  ack_deadline_seconds       = var.push_ack_deadline_seconds
  message_retention_duration = var.delivery_retention

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.inference.uri}/deliver"
    oidc_token {
      service_account_email = google_service_account.push_invoker.email
      audience              = local.push_audience
    }
  }

  retry_policy {
    minimum_backoff = var.push_min_backoff
    maximum_backoff = var.push_max_backoff
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [
    google_cloud_run_v2_service_iam_member.push_invoker,
    google_service_account_iam_member.pubsub_agent_token_creator,
  ]
}

# Every dead letter is recorded by the service (STEM.dead-letter.json and an ERROR log line);
# the -keep subscription above still holds the message itself for the replay.
resource "google_pubsub_subscription" "dead_letter_record" {
  project                    = var.project_id
  name                       = "${local.prefix}-inference-dead-letter-record"
  topic                      = google_pubsub_topic.dead_letter.id
  ack_deadline_seconds       = 60
  message_retention_duration = var.message_retention_duration

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.inference.uri}/dead-letter"
    oidc_token {
      service_account_email = google_service_account.push_invoker.email
      audience              = local.push_audience
    }
  }

  retry_policy {
    minimum_backoff = var.push_min_backoff
    maximum_backoff = var.push_max_backoff
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [
    google_cloud_run_v2_service_iam_member.push_invoker,
    google_service_account_iam_member.pubsub_agent_token_creator,
  ]
}
