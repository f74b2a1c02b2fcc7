# Radiologist decisions as DICOM (docs/contracts.md, "Review of a result"): Django publishes one
# dicom-review/1 message per decision to the review topic (its identity may publish there and
# nowhere else); a push subscription delivers it to the review component, a CPU Cloud Run service
# running the same image as the inference service with another entrypoint (no GPU, no model),
# which builds the assessment SR (and SEG), writes it beside the upload, stores it in the DICOM
# store and sends Django a signed receipt. What keeps failing is dead-lettered to its own topic,
# whose pull subscription keeps it for people (and `manage.py publish_reviews --unreceipted`).

resource "google_pubsub_schema" "review" {
  project    = var.project_id
  name       = "${local.prefix}-review-v1"
  type       = "PROTOCOL_BUFFER"
  definition = file("${path.module}/schemas/dicom_review.proto")
  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_topic" "review" {
  project                    = var.project_id
  name                       = "${local.prefix}-reviews"
  kms_key_name               = var.kms_key_name
  message_retention_duration = var.message_retention_duration

  # Messages name patients' studies and reviewers: stored only in the pipeline's region.
  message_storage_policy {
    allowed_persistence_regions = [var.region]
  }

  schema_settings {
    schema   = google_pubsub_schema.review.id
    encoding = "JSON"
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

resource "google_pubsub_topic" "review_dead_letter" {
  project                    = var.project_id
  name                       = "${local.prefix}-review-dead-letter"
  kms_key_name               = var.kms_key_name
  message_retention_duration = var.message_retention_duration

  message_storage_policy {
    allowed_persistence_regions = [var.region]
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

resource "google_pubsub_subscription" "review_dead_letter" {
  project                    = var.project_id
  name                       = "${local.prefix}-review-dead-letter-keep"
  topic                      = google_pubsub_topic.review_dead_letter.id
  ack_deadline_seconds       = 600
  message_retention_duration = var.message_retention_duration

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "review_push" {
  project                    = var.project_id
  name                       = "${local.prefix}-review-push"
  topic                      = google_pubsub_topic.review.id
  ack_deadline_seconds       = var.review_ack_deadline_seconds
  message_retention_duration = var.message_retention_duration

  push_config {
    push_endpoint = "${google_cloud_run_v2_service.review.uri}/review"
    oidc_token {
      service_account_email = google_service_account.review_push_invoker.email
      audience              = local.review_push_audience
    }
  }

  # A DICOM store that is down is retried with backoff for review_max_delivery_attempts
  # (100 at up to 600 s: about 16 hours) before the message is dead-lettered.
  retry_policy {
    minimum_backoff = var.push_min_backoff
    maximum_backoff = var.push_max_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.review_dead_letter.id
    max_delivery_attempts = var.review_max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [
    google_cloud_run_v2_service_iam_member.review_push_invoker,
    google_service_account_iam_member.pubsub_agent_token_creator_review,
    google_pubsub_topic_iam_member.pubsub_agent_review_dead_letter_publisher,
  ]
}

locals {
  review_concurrency   = 8 # gunicorn's threads (CONCURRENCY) and Cloud Run's requests per instance
  review_service_name  = "${local.prefix}-review"
  review_push_audience = "${local.prefix}-review-push"
  review_env = {
    for k, v in {
      GOOGLE_CLOUD_PROJECT = var.project_id
      WEBHOOK_URL          = var.review_webhook_url
      OUTPUT_BUCKET        = var.output_bucket == null ? "" : var.output_bucket
      OUTPUT_PREFIX        = var.output_prefix
      LOG_LEVEL            = var.log_level
      DICOMWEB_URL         = local.dicomweb_url == null ? "" : local.dicomweb_url
      DICOMWEB_AUTH        = local.dicomweb_url == null ? "" : "google"
      PUSH_AUDIENCE        = local.review_push_audience
      PUSH_SERVICE_ACCOUNT = google_service_account.review_push_invoker.email
      CONCURRENCY          = tostring(local.review_concurrency)
    } : k => v if v != null && v != ""
  }
}

# CPU only: no node_selector, no GPU limit; billed per request (cpu_idle).
resource "google_cloud_run_v2_service" "review" {
  project             = var.project_id
  name                = local.review_service_name
  location            = var.region
  description         = "Radiologist decisions as DICOM (assessment SR and SEG), CPU only"
  ingress             = var.service_ingress
  deletion_protection = var.deletion_protection
  custom_audiences    = [local.review_push_audience]

  template {
    service_account                  = google_service_account.review.email
    max_instance_request_concurrency = local.review_concurrency
    timeout                          = "${var.review_ack_deadline_seconds}s"
    encryption_key                   = var.kms_key_name

    scaling {
      min_instance_count = 0
      max_instance_count = var.review_max_instances
    }

    containers {
      name  = "review"
      image = local.image
      # The inference image, another entrypoint: no model is loaded, nothing touches a GPU.
      command = ["gunicorn"]
      args    = ["-c", "gpu_service/gunicorn.conf.py", "gpu_service.review_app:create_app()"]

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = "1"
          memory = var.review_memory
        }
        cpu_idle = true
      }

      dynamic "env" {
        for_each = local.review_env
        content {
          name  = env.key
          value = env.value
        }
      }

      env {
        name = "WEBHOOK_SECRET"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.webhook.secret_id
            version = var.webhook_secret_version
          }
        }
      }

      startup_probe {
        period_seconds    = 5
        timeout_seconds   = 3
        failure_threshold = 24
        http_get {
          path = "/readyz"
        }
      }

      liveness_probe {
        period_seconds    = 30
        timeout_seconds   = 5
        failure_threshold = 3
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.review_webhook_secret,
    google_storage_bucket_iam_member.review_upload_reader,
    google_storage_bucket_iam_member.review_output_writer,
  ]
}
