# Backfill job (Cloud Run job, NVIDIA L4): the service's image run as `python -m gpu_service.job`
# over existing uploads (--prefix gs://bucket/prefix) or a subscription (--subscription ...,
# e.g. the dead-letter one after a fix). Arguments are given per execution:
#   gcloud run jobs execute <job> --region <region> --args=--prefix,gs://bucket/2024/

resource "google_cloud_run_v2_job" "backfill" {
  # google-beta: the task template's node_selector and gpu_zonal_redundancy_disabled reached the
  # GA provider later than the service's; the beta provider has them in every 7.x release.
  provider            = google-beta
  project             = var.project_id
  name                = local.job_name
  location            = var.region
  deletion_protection = var.deletion_protection

  template {
    task_count  = var.job_task_count
    parallelism = var.job_parallelism

    template {
      service_account               = google_service_account.backfill.email
      timeout                       = var.job_timeout
      max_retries                   = var.job_max_retries
      gpu_zonal_redundancy_disabled = var.gpu_zonal_redundancy_disabled
      encryption_key                = var.kms_key_name

      node_selector {
        accelerator = var.gpu_type
      }

      containers {
        name    = "backfill"
        image   = local.image
        command = ["python", "-m", "gpu_service.job"]

        resources {
          limits = {
            cpu              = var.service_cpu
            memory           = var.service_memory
            "nvidia.com/gpu" = "1"
          }
        }

        dynamic "env" {
          for_each = local.inference_env
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
      }
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.gpu_webhook_secret,
    google_storage_bucket_iam_member.gpu_upload_reader,
    google_storage_bucket_iam_member.gpu_output_writer,
    google_storage_bucket_iam_member.gpu_model_reader,
  ]
}
