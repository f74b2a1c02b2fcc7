# Identities and every grant, in one file for review. One service account per component, each
# granted on the single resource it uses. Project-level grants are limited to the three roles
# that only exist at project level (marked below). No owner/editor, no key files: Google's
# runtimes mint short-lived tokens for these accounts.

# ---------------------------------------------------------------------------------------------
# Service accounts
# ---------------------------------------------------------------------------------------------
resource "google_service_account" "ingest" {
  project      = var.project_id
  account_id   = "${local.prefix}-ingest-fn"
  display_name = "DICOM ingest function (reads headers, publishes requests)"
}

resource "google_service_account" "function_build" {
  project      = var.project_id
  account_id   = "${local.prefix}-fn-build"
  display_name = "Builds the ingest function's image"
}

resource "google_service_account" "eventarc_trigger" {
  project      = var.project_id
  account_id   = "${local.prefix}-eventarc"
  display_name = "Delivers upload events to the ingest function"
}

resource "google_service_account" "inference" {
  project      = var.project_id
  account_id   = "${local.prefix}-inference"
  display_name = "GPU inference service"
}

resource "google_service_account" "backfill" {
  project      = var.project_id
  account_id   = "${local.prefix}-backfill"
  display_name = "GPU backfill job"
}

resource "google_service_account" "push_invoker" {
  project      = var.project_id
  account_id   = "${local.prefix}-push-invoker"
  display_name = "Identity of Pub/Sub pushes to the inference service"
}

# Writers get roles/storage.objectUser (create, and delete to replace an earlier output after a
# re-upload under the same name) only on the names they write, through an IAM condition: no
# component can overwrite or delete an uploaded DICOM file. Reads and listings come from a plain
# objectViewer grant. Suffixes: functions/pipeline_common/naming.py.
locals {
  writer_role = "roles/storage.objectUser"
  # STEM.png, STEM.lime.png, STEM.overlay.png, STEM.heatmap.png, STEM.result.json, STEM.pending.json, STEM.dead-letter.json,
  # STEM.seg.dcm, STEM.sr.dcm (STEM.heatmap.seg.dcm, STEM.gradcam.heatmap.png/.seg.dcm too); the ingest function never ingests names
  # with these suffixes.
  # The review component's outputs (review.tf) also end in .sr.dcm / .seg.dcm: taken out.
  inference_output_condition = "(${join(" || ", [for s in [".png", ".result.json", ".pending.json", ".dead-letter.json", ".seg.dcm", ".sr.dcm"] : "resource.name.endsWith('${s}')"])}) && ${join(" && ", [for s in local.review_output_suffixes : "!resource.name.endsWith('${s}')"])}"
  rejection_condition        = "resource.name.endsWith('.rejected.json')"
}

# ---------------------------------------------------------------------------------------------
# Ingest function: read uploads, write rejection records, publish requests
# ---------------------------------------------------------------------------------------------
resource "google_storage_bucket_iam_member" "ingest_upload_reader" {
  bucket = google_storage_bucket.private["uploads"].name
  role   = "roles/storage.objectViewer"
  member = google_service_account.ingest.member
}

resource "google_storage_bucket_iam_member" "ingest_rejection_writer" {
  bucket = google_storage_bucket.private["uploads"].name
  role   = local.writer_role
  member = google_service_account.ingest.member

  condition {
    title       = "rejection-records-only"
    description = "Write and replace STEM.rejected.json, nothing else"
    expression  = local.rejection_condition
  }
}

resource "google_pubsub_topic_iam_member" "ingest_publisher" {
  project = var.project_id
  topic   = google_pubsub_topic.inference.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.ingest.member
}

# ---------------------------------------------------------------------------------------------
# Function build (Cloud Build, on behalf of Cloud Run functions)
# ---------------------------------------------------------------------------------------------
resource "google_storage_bucket_iam_member" "function_build_source_reader" {
  bucket = google_storage_bucket.private["function_source"].name
  role   = "roles/storage.objectViewer"
  member = google_service_account.function_build.member
}

resource "google_artifact_registry_repository_iam_member" "function_build_writer" {
  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.function_build.member
}

# Project level by nature: build logs are written to the project.
resource "google_project_iam_member" "function_build_log_writer" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.function_build.member
}

# ---------------------------------------------------------------------------------------------
# Eventarc trigger: receive storage events, invoke the function
# ---------------------------------------------------------------------------------------------
# Project level by nature: eventarc.events.receiveEvent is only granted on the project.
resource "google_project_iam_member" "eventarc_event_receiver" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.eventarc_trigger.member
}

resource "google_cloud_run_v2_service_iam_member" "eventarc_invokes_function" {
  project  = var.project_id
  location = var.region
  # A 2nd gen function runs as a Cloud Run service of the same name.
  name   = google_cloudfunctions2_function.ingest.name
  role   = "roles/run.invoker"
  member = google_service_account.eventarc_trigger.member
}

# Project level by nature: Cloud Storage's service agent publishes the bucket's events to the
# Pub/Sub topic that Eventarc creates for the trigger.
resource "google_project_iam_member" "gcs_agent_pubsub_publisher" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = data.google_storage_project_service_account.gcs.member
}

# ---------------------------------------------------------------------------------------------
# Pub/Sub push: the push identity may invoke the service and nothing else; Pub/Sub's service
# agent may mint its tokens and handle dead letters
# ---------------------------------------------------------------------------------------------
resource "google_cloud_run_v2_service_iam_member" "push_invoker" {
  project  = var.project_id
  location = google_cloud_run_v2_service.inference.location
  name     = google_cloud_run_v2_service.inference.name
  role     = "roles/run.invoker"
  member   = google_service_account.push_invoker.member
}

resource "google_service_account_iam_member" "pubsub_agent_token_creator" {
  service_account_id = google_service_account.push_invoker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
  depends_on         = [google_project_service_identity.pubsub]
}

# Eventarc's own push subscription authenticates as the trigger account the same way.
resource "google_service_account_iam_member" "pubsub_agent_token_creator_eventarc" {
  service_account_id = google_service_account.eventarc_trigger.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
  depends_on         = [google_project_service_identity.pubsub]
}

resource "google_pubsub_topic_iam_member" "pubsub_agent_dead_letter_publisher" {
  project    = var.project_id
  topic      = google_pubsub_topic.dead_letter.name
  role       = "roles/pubsub.publisher"
  member     = local.pubsub_agent
  depends_on = [google_project_service_identity.pubsub]
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_push_subscriber" {
  project      = var.project_id
  subscription = google_pubsub_subscription.inference_push.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
  depends_on   = [google_project_service_identity.pubsub]
}

# ---------------------------------------------------------------------------------------------
# Inference service and backfill job: both run gpu_service, so both hold exactly the same
# grants (one block per grant, one instance per identity): read uploads and models, write
# outputs, read the webhook secret
# ---------------------------------------------------------------------------------------------
locals {
  gpu_runtimes = {
    inference = google_service_account.inference.member
    backfill  = google_service_account.backfill.member
  }
}

resource "google_storage_bucket_iam_member" "gpu_upload_reader" {
  for_each = local.gpu_runtimes
  bucket   = google_storage_bucket.private["uploads"].name
  role     = "roles/storage.objectViewer"
  member   = each.value
}

resource "google_storage_bucket_iam_member" "gpu_output_writer" {
  for_each = local.gpu_runtimes
  bucket   = local.output_bucket
  role     = local.writer_role
  member   = each.value

  condition {
    title       = "pipeline-outputs-only"
    description = "Write and replace STEM.png, STEM.lime.png, STEM.overlay.png, STEM.heatmap.png, STEM.result.json, STEM.pending.json, STEM.dead-letter.json, STEM.seg.dcm, STEM.sr.dcm"
    expression  = local.inference_output_condition
  }

  depends_on = [google_storage_bucket.private]
}

resource "google_storage_bucket_iam_member" "gpu_model_reader" {
  for_each = local.gpu_runtimes
  bucket   = google_storage_bucket.private["models"].name
  role     = "roles/storage.objectViewer"
  member   = each.value
}

resource "google_secret_manager_secret_iam_member" "gpu_webhook_secret" {
  for_each  = local.gpu_runtimes
  project   = var.project_id
  secret_id = google_secret_manager_secret.webhook.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = each.value
}

# The backfill job also pulls (and acks) dead letters to replay them.
resource "google_pubsub_subscription_iam_member" "backfill_dead_letter_subscriber" {
  project      = var.project_id
  subscription = google_pubsub_subscription.dead_letter.name
  role         = "roles/pubsub.subscriber"
  member       = google_service_account.backfill.member
}

# ---------------------------------------------------------------------------------------------
# Customer-managed key (optional): the service agents that encrypt on the pipeline's behalf
# ---------------------------------------------------------------------------------------------
locals {
  kms_service_agents = var.kms_key_name == null ? {} : {
    storage          = data.google_storage_project_service_account.gcs.member
    pubsub           = local.pubsub_agent
    artifactregistry = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-artifactregistry.iam.gserviceaccount.com"
    secretmanager    = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-secretmanager.iam.gserviceaccount.com"
    cloudrun         = "serviceAccount:service-${data.google_project.this.number}@serverless-robot-prod.iam.gserviceaccount.com"
  }
}

resource "google_kms_crypto_key_iam_member" "service_agents" {
  for_each      = local.kms_service_agents
  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = each.value

  depends_on = [
    google_project_service_identity.pubsub,
    google_project_service_identity.artifactregistry,
    google_project_service_identity.secretmanager,
  ]
}

# Both runtimes hand a delivery off when a downstream is down: publisher on that topic only.
resource "google_pubsub_topic_iam_member" "gpu_delivery_publisher" {
  for_each = local.gpu_runtimes
  project  = var.project_id
  topic    = google_pubsub_topic.delivery.name
  role     = "roles/pubsub.publisher"
  member   = each.value
}

# ---------------------------------------------------------------------------------------------
# Review of results (review.tf): the review component reads the bucket, writes only its own
# outputs, stores in the DICOM store and reads the webhook secret; its push identity may only
# invoke it; Django's identity may only publish decisions
# ---------------------------------------------------------------------------------------------
resource "google_service_account" "review" {
  project      = var.project_id
  account_id   = "${local.prefix}-review"
  display_name = "Review component (radiologist decisions as DICOM, CPU)"
}

resource "google_service_account" "review_push_invoker" {
  project      = var.project_id
  account_id   = "${local.prefix}-review-push"
  display_name = "Identity of Pub/Sub pushes to the review component"
}

locals {
  # STEM.<review_id>.review.sr.dcm, STEM.<review_id>.review.seg.dcm, STEM.review.json
  review_output_suffixes  = [".review.sr.dcm", ".review.seg.dcm", ".review.json"]
  review_output_condition = join(" || ", [for s in local.review_output_suffixes : "resource.name.endsWith('${s}')"])
}

resource "google_storage_bucket_iam_member" "review_upload_reader" {
  bucket = google_storage_bucket.private["uploads"].name
  role   = "roles/storage.objectViewer"
  member = google_service_account.review.member
}

# The result record and the AI SR/SEG it assesses, when outputs live in their own bucket.
resource "google_storage_bucket_iam_member" "review_output_reader" {
  count  = var.output_bucket == null ? 0 : 1
  bucket = local.output_bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.review.member
}

resource "google_storage_bucket_iam_member" "review_output_writer" {
  bucket = local.output_bucket
  role   = local.writer_role
  member = google_service_account.review.member

  condition {
    title       = "review-outputs-only"
    description = "Write STEM.<review_id>.review.sr.dcm, STEM.<review_id>.review.seg.dcm and STEM.review.json, nothing else"
    expression  = local.review_output_condition
  }

  depends_on = [google_storage_bucket.private]
}

resource "google_secret_manager_secret_iam_member" "review_webhook_secret" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.webhook.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.review.member
}

resource "google_healthcare_dicom_store_iam_member" "review_dicom_editor" {
  count          = var.enable_dicom_store ? 1 : 0
  dicom_store_id = google_healthcare_dicom_store.results[0].id
  role           = "roles/healthcare.dicomEditor"
  member         = google_service_account.review.member
}

resource "google_cloud_run_v2_service_iam_member" "review_push_invoker" {
  project  = var.project_id
  location = google_cloud_run_v2_service.review.location
  name     = google_cloud_run_v2_service.review.name
  role     = "roles/run.invoker"
  member   = google_service_account.review_push_invoker.member
}

resource "google_service_account_iam_member" "pubsub_agent_token_creator_review" {
  service_account_id = google_service_account.review_push_invoker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
  depends_on         = [google_project_service_identity.pubsub]
}

resource "google_pubsub_topic_iam_member" "pubsub_agent_review_dead_letter_publisher" {
  project    = var.project_id
  topic      = google_pubsub_topic.review_dead_letter.name
  role       = "roles/pubsub.publisher"
  member     = local.pubsub_agent
  depends_on = [google_project_service_identity.pubsub]
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_review_subscriber" {
  project      = var.project_id
  subscription = google_pubsub_subscription.review_push.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
  depends_on   = [google_project_service_identity.pubsub]
}

# Django publishes decisions: on the review topic only.
resource "google_pubsub_topic_iam_member" "django_review_publisher" {
  count   = var.django_service_account_email == null ? 0 : 1
  project = var.project_id
  topic   = google_pubsub_topic.review.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${var.django_service_account_email}"
}
