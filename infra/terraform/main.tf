# DICOM upload -> ingest function -> Pub/Sub push -> GPU inference service -> webhook.
# One file per concern: storage.tf, registry.tf, pubsub.tf, function.tf, service.tf, job.tf,
# secrets.tf, iam.tf (every grant, in one place for review), outputs.tf.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  prefix          = var.name_prefix
  bucket_location = coalesce(var.bucket_location, var.region)
  upload_bucket   = coalesce(var.upload_bucket_name, "${var.project_id}-${var.name_prefix}-uploads")
  models_bucket   = "${var.project_id}-${var.name_prefix}-models"
  source_bucket   = "${var.project_id}-${var.name_prefix}-fn-source"
  output_bucket   = coalesce(var.output_bucket, local.upload_bucket)

  function_name = "${local.prefix}-ingest"
  service_name  = "${local.prefix}-inference"
  job_name      = "${local.prefix}-backfill"
  push_audience = coalesce(var.push_audience, "${local.prefix}-inference-push")

  image = coalesce(
    var.image,
    "${var.region}-docker.pkg.dev/${var.project_id}/${var.repository_id}/${var.image_name}:${var.image_tag}",
  )

  labels = merge({ app = "dicom-pipeline", managed-by = "terraform" }, var.labels)

  # Pub/Sub's service agent mints push tokens and forwards dead letters; its grants depend on
  # google_project_service_identity.pubsub so they come after the agent exists.
  pubsub_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # Plain settings of the inference service and the backfill job (gpu_service/settings.py).
  # Empty values are left out so the code's own defaults apply.
  inference_env = {
    for k, v in merge({
      GOOGLE_CLOUD_PROJECT = var.project_id
      MODEL_URI            = var.model_uri
      WEBHOOK_URL          = var.webhook_url
      OUTPUT_BUCKET        = var.output_bucket == null ? "" : var.output_bucket
      OUTPUT_PREFIX        = var.output_prefix
      LOG_LEVEL            = var.log_level
      # Same pixel budget as the function, so a backfill cannot decode what ingest would reject.
      MAX_PIXELS = var.max_pixels == null ? "" : tostring(var.max_pixels)
      # The service records `retries_exhausted` one delivery before Pub/Sub dead-letters the message.
      MAX_DELIVERY_ATTEMPTS = tostring(var.max_delivery_attempts)
      # A result whose downstream is down is handed to the delivery subscription (pubsub.tf).
      DELIVERY_TOPIC           = google_pubsub_topic.delivery.id
      DEAD_LETTER_SUBSCRIPTION = google_pubsub_subscription.dead_letter.name
      # Results as DICOM objects, STOW-RS with the runtime's own identity (healthcare.tf).
      DICOMWEB_URL  = local.dicomweb_url == null ? "" : local.dicomweb_url
      DICOMWEB_AUTH = local.dicomweb_url == null ? "" : "google"
      # Spans to Cloud Trace as the runtime identity (tracing.tf).
      TRACE_EXPORTER     = var.trace_exporter
      TRACE_SAMPLE_RATIO = tostring(var.trace_sample_ratio)
    }, var.service_extra_env) : k => v if v != null && v != ""
  }
  dicomweb_url = var.enable_dicom_store ? "https://healthcare.googleapis.com/v1/${google_healthcare_dicom_store.results[0].id}/dicomWeb" : var.dicomweb_url

  # Only the push endpoint verifies Pub/Sub's OIDC token; the job has no HTTP surface.
  # CONCURRENCY sizes the server's worker threads to the requests Cloud Run sends at once.
  service_env = merge(local.inference_env, {
    PUSH_AUDIENCE        = local.push_audience
    PUSH_SERVICE_ACCOUNT = google_service_account.push_invoker.email
    CONCURRENCY          = tostring(var.service_concurrency)
  })

  # Settings of the ingest function (functions/dicom_ingest/settings.py).
  function_env = {
    for k, v in merge({
      GOOGLE_CLOUD_PROJECT = var.project_id
      INFERENCE_TOPIC      = google_pubsub_topic.inference.id
      ALLOWED_MODALITIES   = var.allowed_modalities
      MAX_PIXELS           = var.max_pixels == null ? "" : tostring(var.max_pixels)
      LOG_LEVEL            = var.log_level
      TRACE_EXPORTER       = var.trace_exporter
      TRACE_SAMPLE_RATIO   = tostring(var.trace_sample_ratio)
    }, var.function_extra_env) : k => v if v != null && v != ""
  }

  apis = setunion(
    [
      "artifactregistry.googleapis.com",
      "cloudbuild.googleapis.com",
      "cloudfunctions.googleapis.com",
      "cloudtrace.googleapis.com",
      "eventarc.googleapis.com",
      "iam.googleapis.com",
      "logging.googleapis.com",
      "monitoring.googleapis.com",
      "pubsub.googleapis.com",
      "run.googleapis.com",
      "secretmanager.googleapis.com",
      "storage.googleapis.com",
    ],
    var.kms_key_name == null ? [] : ["cloudkms.googleapis.com"],
    var.enable_dicom_store ? ["healthcare.googleapis.com"] : [],
  )
}

resource "google_project_service" "enabled" {
  for_each = var.enable_apis ? local.apis : toset([])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# Google-managed service agents that need grants (iam.tf). These resources make sure each agent
# exists before it is granted anything; the grants name the agents by their documented address,
# because generateServiceIdentity does not return the email for every service.
# google-beta: the GA provider has no google_project_service_identity resource.
resource "google_project_service_identity" "pubsub" {
  provider   = google-beta
  project    = var.project_id
  service    = "pubsub.googleapis.com"
  depends_on = [google_project_service.enabled]
}

resource "google_project_service_identity" "secretmanager" {
  provider   = google-beta
  project    = var.project_id
  service    = "secretmanager.googleapis.com"
  depends_on = [google_project_service.enabled]
}

resource "google_project_service_identity" "artifactregistry" {
  provider   = google-beta
  project    = var.project_id
  service    = "artifactregistry.googleapis.com"
  depends_on = [google_project_service.enabled]
}

data "google_storage_project_service_account" "gcs" {
  project    = var.project_id
  depends_on = [google_project_service.enabled]
}
