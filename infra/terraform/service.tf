# GPU inference service (Cloud Run, NVIDIA L4): receives Pub/Sub pushes on POST /, predicts,
# explains with LIME, writes the outputs next to the upload and calls the webhook.

resource "google_cloud_run_v2_service" "inference" {
  project             = var.project_id
  name                = local.service_name
  location            = var.region
  description         = "DICOM inference with LIME explanations on an NVIDIA L4"
  ingress             = var.service_ingress
  deletion_protection = var.deletion_protection
  # Pushes carry tokens for this audience (pubsub.tf). A fixed custom audience avoids a cycle:
  # the service URL is only known after the service exists, and PUSH_AUDIENCE must be set in it.
  custom_audiences = [local.push_audience]

  template {
    service_account                  = google_service_account.inference.email
    max_instance_request_concurrency = var.service_concurrency
    timeout                          = var.service_timeout
    gpu_zonal_redundancy_disabled    = var.gpu_zonal_redundancy_disabled
    encryption_key                   = var.kms_key_name

    scaling {
      min_instance_count = var.service_min_instances
      max_instance_count = var.service_max_instances
    }

    node_selector {
      accelerator = var.gpu_type
    }

    containers {
      name  = "inference"
      image = local.image

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu              = var.service_cpu
          memory           = var.service_memory
          "nvidia.com/gpu" = "1"
        }
        # GPU instances must keep their CPU allocated (instance-based billing).
        cpu_idle          = false
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.service_env
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

      # Ready only once the model is loaded and warmed up on the GPU: up to 5 minutes.
      startup_probe {
        initial_delay_seconds = 0
        period_seconds        = 10
        timeout_seconds       = 5
        failure_threshold     = 30
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

  # Newest revision takes all traffic, or var.latest_revision_percent of it during a canary,
  # the rest staying on var.pinned_revision (README.md, "Deploy to Google Cloud", "Roll out a new model version").
  traffic {
    type    = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
    percent = var.latest_revision_percent
  }

  dynamic "traffic" {
    for_each = var.pinned_revision == null ? [] : [var.pinned_revision]
    content {
      type     = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
      revision = traffic.value
      percent  = 100 - var.latest_revision_percent
    }
  }

  lifecycle {
    precondition {
      condition     = var.latest_revision_percent == 100 || var.pinned_revision != null
      error_message = "latest_revision_percent below 100 needs pinned_revision to take the rest of the traffic."
    }
    precondition {
      condition     = tonumber(trimsuffix(var.service_timeout, "s")) >= var.push_ack_deadline_seconds
      error_message = "service_timeout must be at least push_ack_deadline_seconds, or Cloud Run cuts a push Pub/Sub still waits for."
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.gpu_webhook_secret,
    google_storage_bucket_iam_member.gpu_upload_reader,
    google_storage_bucket_iam_member.gpu_output_writer,
    google_storage_bucket_iam_member.gpu_model_reader,
  ]
}
