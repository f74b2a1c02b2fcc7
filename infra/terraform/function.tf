# Ingest function (Cloud Run functions, 2nd gen): reads only the DICOM header of each new object
# in the upload bucket and publishes an inference request. Source: the repository's functions/.

locals {
  function_source_dir = "${path.module}/../../functions"
}

data "archive_file" "function_source" {
  type        = "zip"
  source_dir  = local.function_source_dir
  output_path = "${path.module}/.terraform/tmp/${local.function_name}.zip"
  # What functions/.gcloudignore leaves out of a `gcloud functions deploy`, so both ways of
  # deploying ship the same files. fileset() rather than glob patterns in `excludes`, which
  # older archive releases read literally.
  excludes = setunion(
    [".gcloudignore"],
    fileset(local.function_source_dir, "**/__pycache__/**"),
    fileset(local.function_source_dir, "**/*.pyc"),
    fileset(local.function_source_dir, "**/.pytest_cache/**"),
    fileset(local.function_source_dir, "**/.ruff_cache/**"),
    fileset(local.function_source_dir, ".venv/**"),
    fileset(local.function_source_dir, "**/*.md"),
  )
}

# The object name carries the archive's hash, so a change in functions/ redeploys the function
# and an unchanged tree does not.
resource "google_storage_bucket_object" "function_source" {
  name   = "${local.function_name}/${data.archive_file.function_source.output_sha256}.zip"
  bucket = google_storage_bucket.private["function_source"].name
  source = data.archive_file.function_source.output_path
}

resource "google_cloudfunctions2_function" "ingest" {
  project     = var.project_id
  name        = local.function_name
  location    = var.region
  description = "Reads the DICOM header of each upload and publishes an inference request"

  build_config {
    runtime           = var.function_runtime
    entry_point       = "ingest_dicom"
    service_account   = google_service_account.function_build.id
    docker_repository = google_artifact_registry_repository.images.id

    source {
      storage_source {
        bucket = google_storage_bucket.private["function_source"].name
        object = google_storage_bucket_object.function_source.name
      }
    }
  }

  service_config {
    available_memory                 = var.function_memory
    timeout_seconds                  = var.function_timeout_seconds
    min_instance_count               = 0
    max_instance_count               = var.function_max_instances
    max_instance_request_concurrency = 1
    # Eventarc deliveries count as internal traffic; nothing else needs to reach the function.
    ingress_settings               = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.ingest.email
    environment_variables          = local.function_env
  }

  event_trigger {
    # A bucket's events are delivered in the bucket's own location (a region or multi-region).
    trigger_region        = lower(local.bucket_location)
    event_type            = "google.cloud.storage.object.v1.finalized"
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.eventarc_trigger.email

    event_filters {
      attribute = "bucket"
      value     = google_storage_bucket.private["uploads"].name
    }
  }

  depends_on = [
    google_project_iam_member.gcs_agent_pubsub_publisher,
    google_project_iam_member.eventarc_event_receiver,
    google_project_iam_member.function_build_log_writer,
    google_artifact_registry_repository_iam_member.function_build_writer,
    google_storage_bucket_iam_member.function_build_source_reader,
    google_storage_bucket_iam_member.ingest_upload_reader,
    google_pubsub_topic_iam_member.ingest_publisher,
  ]
}
