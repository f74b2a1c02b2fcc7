output "upload_bucket" {
  description = "Upload DICOM files here: gcloud storage cp file.dcm gs://<bucket>/<path>."
  value       = google_storage_bucket.private["uploads"].name
}

output "models_bucket" {
  description = "Bucket for model versions (model.keras with its model.json sidecar)."
  value       = google_storage_bucket.private["models"].name
}

output "image_repository" {
  description = "Docker repository for the inference image."
  value       = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "deployed_image" {
  description = "Image the service and the job run."
  value       = local.image
}

output "inference_topic" {
  description = "Topic the function publishes inference requests to."
  value       = google_pubsub_topic.inference.id
}

output "push_subscription" {
  description = "Push subscription that feeds the service."
  value       = google_pubsub_subscription.inference_push.id
}

output "dead_letter_subscription" {
  description = "Subscription keeping requests that failed every delivery; replay with the backfill job (--subscription)."
  value       = google_pubsub_subscription.dead_letter.id
}

output "function_name" {
  description = "Ingest function."
  value       = google_cloudfunctions2_function.ingest.name
}

output "service_name" {
  description = "GPU inference service."
  value       = google_cloud_run_v2_service.inference.name
}

output "service_uri" {
  description = "URL of the service (internal ingress by default)."
  value       = google_cloud_run_v2_service.inference.uri
}

output "latest_ready_revision" {
  description = "Newest serving revision: the one to pin before a canary."
  value       = google_cloud_run_v2_service.inference.latest_ready_revision
}

output "job_name" {
  description = "Backfill job."
  value       = google_cloud_run_v2_job.backfill.name
}

output "webhook_secret" {
  description = "Secret Manager secret that holds the webhook signing key."
  value       = google_secret_manager_secret.webhook.id
}

output "service_accounts" {
  description = "One identity per component."
  value = {
    ingest_function  = google_service_account.ingest.email
    function_build   = google_service_account.function_build.email
    eventarc_trigger = google_service_account.eventarc_trigger.email
    inference        = google_service_account.inference.email
    backfill         = google_service_account.backfill.email
    push_invoker     = google_service_account.push_invoker.email
    review           = google_service_account.review.email
    review_push      = google_service_account.review_push_invoker.email
  }
}

output "review_topic" {
  description = "Topic Django publishes dicom-review/1 decisions to (DICOM_RESULTS_REVIEW_TOPIC)."
  value       = google_pubsub_topic.review.id
}

output "review_service_uri" {
  description = "URL of the review component (CPU Cloud Run)."
  value       = google_cloud_run_v2_service.review.uri
}

output "dicomweb_url" {
  description = "DICOMweb base URL the service and the job store results to (null: none)."
  value       = local.dicomweb_url
}

output "monitoring_dashboard" {
  description = "The pipeline's dashboard (Monitoring -> Dashboards); what its alerts mean: docs/operations.md."
  value       = google_monitoring_dashboard.pipeline.id
}

output "alert_notification_channel" {
  description = "Email channel the alerts notify, or null when notification_channel_email is unset."
  value       = one(google_monitoring_notification_channel.email[*].id)
}
