# ---------------------------------------------------------------------------------------------
# Project and naming
# ---------------------------------------------------------------------------------------------
variable "project_id" {
  description = "Project that holds the whole pipeline."
  type        = string
}

variable "region" {
  description = "Region of every regional resource. Must offer Cloud Run GPUs (NVIDIA L4), e.g. us-central1, europe-west1, europe-west4, asia-southeast1."
  type        = string
  default     = "europe-west4"
}

variable "name_prefix" {
  description = "Prefix of every resource name, so two environments can share a project."
  type        = string
  default     = "dicom"

  validation {
    # Keeps the longest service account id ("<prefix>-push-invoker") within 30 characters.
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}$", var.name_prefix))
    error_message = "name_prefix: 2-15 characters, lower-case letters, digits and hyphens, starting with a letter."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes labels."
  type        = map(string)
  default     = {}
}

variable "enable_apis" {
  description = "Enable the Google APIs the pipeline needs (turn off when a platform team manages them)."
  type        = bool
  default     = true
}

variable "deletion_protection" {
  description = "Protect the Cloud Run service and job from `terraform destroy`."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------
variable "upload_bucket_name" {
  description = "Bucket that receives DICOM uploads and holds the outputs beside them. Default: <project>-<prefix>-uploads."
  type        = string
  default     = null
}

variable "bucket_location" {
  description = "Location of the buckets. Default: var.region (keeps patient data in one region). A multi-region (EU, US) also works: the storage trigger then listens in that multi-region."
  type        = string
  default     = null
}

variable "kms_key_name" {
  description = "Optional CMEK (projects/P/locations/L/keyRings/R/cryptoKeys/K) for buckets, topics, the image repository and the webhook secret. Must live in the same location as those resources. Null: Google-managed keys."
  type        = string
  default     = null
}

variable "soft_delete_retention_days" {
  description = "Days a deleted or overwritten object stays recoverable (soft delete). 0 turns soft delete off; 7-90 otherwise."
  type        = number
  default     = 7

  validation {
    condition     = var.soft_delete_retention_days == 0 || (var.soft_delete_retention_days >= 7 && var.soft_delete_retention_days <= 90)
    error_message = "soft_delete_retention_days must be 0 or between 7 and 90."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days an overwritten (noncurrent) object version is kept in the upload and model buckets before deletion."
  type        = number
  default     = 30
}

variable "output_bucket" {
  description = "Optional bucket for the service's outputs (OUTPUT_BUCKET). Null: outputs go next to each upload."
  type        = string
  default     = null
}

variable "output_prefix" {
  description = "Optional object prefix for the service's outputs (OUTPUT_PREFIX)."
  type        = string
  default     = ""
}

variable "enable_data_access_audit_logs" {
  description = "Record every read and write of objects (Cloud Audit Logs, DATA_READ/DATA_WRITE for Cloud Storage). This sets the project's audit config for storage.googleapis.com."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
variable "repository_id" {
  description = "Artifact Registry Docker repository for the service image (and the function's build)."
  type        = string
  default     = "dicom-pipeline"
}

variable "image_name" {
  description = "Image name of the inference service inside the repository."
  type        = string
  default     = "inference"
}

variable "image_tag" {
  description = "Tag of the inference image to deploy (ignored when var.image is set)."
  type        = string
  default     = "latest"
}

variable "image" {
  description = "Full image reference, best by digest (REGION-docker.pkg.dev/P/R/inference@sha256:...). Cloud Build passes the digest it just pushed. Null: <repository>/<image_name>:<image_tag>."
  type        = string
  default     = null
}

variable "image_keep_count" {
  description = "Most recent image versions kept by the repository's cleanup policy."
  type        = number
  default     = 20
}

# ---------------------------------------------------------------------------------------------
# Pub/Sub
# ---------------------------------------------------------------------------------------------
variable "enable_message_schema" {
  description = "Attach the Protocol Buffer schemas (JSON encoding) of dicom-inference-request/1 to the inference topic and of dicom-delivery/1 to the delivery topic, so Pub/Sub rejects malformed publishes. Off by default: it also rejects any field the contract does not list, so the schema must change before the function adds one."
  type        = bool
  default     = false
}

variable "push_ack_deadline_seconds" {
  description = "Seconds Pub/Sub waits for the service to answer one push (it answers after the result is stored). Max 600."
  type        = number
  default     = 600

  validation {
    condition     = var.push_ack_deadline_seconds >= 10 && var.push_ack_deadline_seconds <= 600
    error_message = "push_ack_deadline_seconds must be between 10 and 600."
  }
}

variable "push_min_backoff" {
  description = "Minimum delay before Pub/Sub redelivers a failed push."
  type        = string
  default     = "10s"
}

variable "push_max_backoff" {
  description = "Maximum delay before Pub/Sub redelivers a failed push."
  type        = string
  default     = "600s"
}

variable "max_delivery_attempts" {
  description = "Deliveries before a message goes to the dead-letter topic (5-100)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100."
  }
}

variable "delivery_retention" {
  description = "How long a computed result waits for a downstream that is down (the DICOMweb store, Django) before its delivery message expires: the outage budget. The staged result stays in the bucket after that; the backfill job delivers it."
  type        = string
  default     = "604800s"
}

variable "message_retention_duration" {
  description = "How long undelivered and dead-lettered messages are kept (max 31 days)."
  type        = string
  default     = "604800s"
}

variable "push_audience" {
  description = "OIDC audience of the push tokens (also a custom audience of the service and its PUSH_AUDIENCE). Default: <prefix>-inference-push."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------------
# Ingest function
# ---------------------------------------------------------------------------------------------
variable "function_runtime" {
  description = "Python runtime of the ingest function."
  type        = string
  default     = "python311"
}

variable "function_memory" {
  description = "Memory of one function instance."
  type        = string
  default     = "512Mi"
}

variable "function_max_instances" {
  description = "Most function instances at once (caps the upload burst rate)."
  type        = number
  default     = 20
}

variable "function_timeout_seconds" {
  description = "Timeout of one function invocation (event-driven functions: max 540)."
  type        = number
  default     = 120
}

variable "allowed_modalities" {
  description = "ALLOWED_MODALITIES of the function: comma list, empty = the function's default (all image modalities)."
  type        = string
  default     = ""
}

variable "max_pixels" {
  description = "MAX_PIXELS of the function (rows*columns*frames budget); null = the function's default."
  type        = number
  default     = null
}

variable "function_extra_env" {
  description = "More environment variables for the function (see functions/dicom_ingest/settings.py)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# GPU service
# ---------------------------------------------------------------------------------------------
variable "gpu_type" {
  description = "Cloud Run GPU accelerator."
  type        = string
  default     = "nvidia-l4"
}

variable "service_cpu" {
  description = "vCPUs of one service instance (an L4 needs at least 4)."
  type        = string
  default     = "4"

  validation {
    condition     = tonumber(var.service_cpu) >= 4
    error_message = "A Cloud Run instance with an NVIDIA L4 needs at least 4 CPUs."
  }
}

variable "service_memory" {
  description = "Memory of one service instance (an L4 needs at least 16Gi)."
  type        = string
  default     = "16Gi"

  validation {
    condition     = can(regex("^[0-9]+Gi$", var.service_memory)) && tonumber(trimsuffix(var.service_memory, "Gi")) >= 16
    error_message = "service_memory must be written in Gi and be at least 16Gi for an NVIDIA L4."
  }
}

variable "gpu_zonal_redundancy_disabled" {
  description = "Run GPUs without zonal redundancy: cheaper and easier quota, best-effort failover in a zone outage."
  type        = bool
  default     = true
}

variable "service_concurrency" {
  description = "Pushes one instance handles at once (the service batches them onto the GPU)."
  type        = number
  default     = 4
}

variable "service_min_instances" {
  description = "Instances kept warm (each one bills its GPU all the time). 0 scales to zero."
  type        = number
  default     = 0
}

variable "service_max_instances" {
  description = "Most instances (at most your 'Total Nvidia L4 GPU allocation' quota in the region)."
  type        = number
  default     = 3
}

variable "service_timeout" {
  description = "Request timeout of the service; keep it at or above the push ack deadline."
  type        = string
  default     = "600s"
}

variable "service_ingress" {
  description = "Who may reach the service. Internal-only still admits Pub/Sub push from this project."
  type        = string
  default     = "INGRESS_TRAFFIC_INTERNAL_ONLY"
}

variable "model_uri" {
  description = "MODEL_URI: gs:// URI of the Keras model (its .json sidecar beside it). Empty: the demo model bundled in the image."
  type        = string
  default     = ""
}

variable "webhook_url" {
  description = "WEBHOOK_URL of the Django application that receives results."
  type        = string
  default     = ""
}

variable "webhook_secret_version" {
  description = "Secret Manager version of the webhook signing secret the service reads (pin a number for reproducible revisions, or 'latest')."
  type        = string
  default     = "latest"
}

variable "log_level" {
  description = "LOG_LEVEL of every component."
  type        = string
  default     = "INFO"
}

variable "service_extra_env" {
  description = "More environment variables for the service and the job (LIME_TARGET_STABILITY, LIME_MAX_SAMPLES, BATCH_MAX_SIZE, WEBHOOK_TIMEOUT_S, ...; see gpu_service/settings.py)."
  type        = map(string)
  default     = {}
}

variable "latest_revision_percent" {
  description = "Share of traffic for the newest revision. Below 100 (a canary) needs pinned_revision."
  type        = number
  default     = 100

  validation {
    condition     = var.latest_revision_percent >= 0 && var.latest_revision_percent <= 100
    error_message = "latest_revision_percent must be between 0 and 100."
  }
}

variable "pinned_revision" {
  description = "Revision that keeps the remaining traffic during a canary or after a rollback (e.g. dicom-inference-00007-abc). Null: all traffic to the latest."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------------
# Backfill job
# ---------------------------------------------------------------------------------------------
variable "job_task_count" {
  description = "Tasks per execution of the backfill job."
  type        = number
  default     = 1
}

variable "job_parallelism" {
  description = "Tasks running at once (each holds one GPU)."
  type        = number
  default     = 1
}

variable "job_timeout" {
  description = "Time limit of one task of the backfill job."
  type        = string
  default     = "21600s"
}

variable "job_max_retries" {
  description = "Retries of a failed task."
  type        = number
  default     = 1
}

# ---------------------------------------------------------------------------------------------
# Results as DICOM objects in a DICOMweb store (healthcare.tf)
# ---------------------------------------------------------------------------------------------
variable "enable_dicom_store" {
  description = "Create a Cloud Healthcare API dataset and DICOM store, grant the service and the job roles/healthcare.dicomEditor on it, and send every result's SEG and SR there (STOW-RS)."
  type        = bool
  default     = false
}

variable "dicom_dataset_id" {
  description = "Healthcare dataset created when enable_dicom_store is true (in var.region)."
  type        = string
  default     = "dicom-pipeline"
}

variable "dicom_store_id" {
  description = "DICOM store created in that dataset when enable_dicom_store is true."
  type        = string
  default     = "ai-results"
}

variable "dicomweb_url" {
  description = "An existing DICOMweb store's base URL (STOW-RS with Application Default Credentials), when enable_dicom_store is false; null: no store."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------------
# Monitoring (monitoring.tf, docs/operations.md): alerts, log-based metrics, one dashboard
# ---------------------------------------------------------------------------------------------
variable "notification_channel_email" {
  description = "Email address the alerts notify (a Cloud Monitoring email channel is created). Null: the alerts still exist and open incidents in the console, but notify no one."
  type        = string
  default     = null

  validation {
    condition     = var.notification_channel_email == null || can(regex("^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$", var.notification_channel_email))
    error_message = "notification_channel_email must be one email address, or null for no channel."
  }
}

variable "alert_dead_letter_messages" {
  description = "Alert when the dead-letter subscription holds more than this many messages (0: any message)."
  type        = number
  default     = 0
}

variable "alert_delivery_oldest_unacked_age_seconds" {
  description = "Alert when a computed result has waited this long for the DICOMweb store or Django (the delivery subscription's oldest message)."
  type        = number
  default     = 1800
}

variable "alert_push_oldest_unacked_age_seconds" {
  description = "Alert when the push subscription's oldest unacknowledged message is older than this, for 5 minutes. A cold GPU instance takes minutes and a failing message is retried for up to max_delivery_attempts x push_max_backoff."
  type        = number
  default     = 1800
}

variable "alert_review_oldest_unacked_age_seconds" {
  description = "Alert when the review subscription's oldest unacknowledged decision is older than this, for 5 minutes. The review component is CPU only (no cold GPU); a failing decision is retried with backoff."
  type        = number
  default     = 1800
}

variable "alert_service_5xx_ratio" {
  description = "Alert when more than this share (0-1) of the inference service's answers are 5xx over 5 minutes, for 5 minutes. 503 is how the service asks Pub/Sub to retry, so a little is normal."
  type        = number
  default     = 0.1

  validation {
    condition     = var.alert_service_5xx_ratio > 0 && var.alert_service_5xx_ratio <= 1
    error_message = "alert_service_5xx_ratio is a share: above 0, at most 1."
  }
}

variable "alert_function_5xx_ratio" {
  description = "Alert when more than this share (0-1) of the ingest function's answers are 5xx over 5 minutes, for 5 minutes."
  type        = number
  default     = 0.05

  validation {
    condition     = var.alert_function_5xx_ratio > 0 && var.alert_function_5xx_ratio <= 1
    error_message = "alert_function_5xx_ratio is a share: above 0, at most 1."
  }
}

variable "alert_webhook_failures" {
  description = "Alert when more than this many webhook deliveries fail after all of the service's attempts within 5 minutes."
  type        = number
  default     = 0
}

variable "alert_retries_exhausted" {
  description = "Alert when more than this many retries_exhausted records are delivered within 5 minutes."
  type        = number
  default     = 0
}

variable "alert_failed_results" {
  description = "Alert when more than this many failed records (other than retries_exhausted: undecodable, too large, refused by the DICOMweb store, ...) are delivered within 5 minutes."
  type        = number
  default     = 0
}

variable "alert_dicomweb_errors" {
  description = "Alert when the DICOMweb store refuses objects, or cannot be reached, more than this many times within 5 minutes."
  type        = number
  default     = 0
}

variable "alert_gpu_memory_utilization" {
  description = "Alert when an instance's GPU memory utilisation (0-1, p99) stays above this for 5 minutes."
  type        = number
  default     = 0.9

  validation {
    condition     = var.alert_gpu_memory_utilization > 0 && var.alert_gpu_memory_utilization <= 1
    error_message = "alert_gpu_memory_utilization is a share: above 0, at most 1."
  }
}

variable "trace_exporter" {
  description = "Where the function, the service and the job send their OpenTelemetry spans (docs/contracts.md, \"Tracing\"): gcp (Cloud Trace) or none (the context is still propagated and logged)."
  type        = string
  default     = "gcp"

  validation {
    condition     = contains(["gcp", "none"], var.trace_exporter)
    error_message = "trace_exporter is gcp or none."
  }
}

variable "trace_sample_ratio" {
  description = "Share of uploads whose trace is recorded (a sampled parent is always followed)."
  type        = number
  default     = 1

  validation {
    condition     = var.trace_sample_ratio >= 0 && var.trace_sample_ratio <= 1
    error_message = "trace_sample_ratio is a share between 0 and 1."
  }
}

# ---------------------------------------------------------------------------------------------
# Review of results (review.tf; docs/contracts.md, "Review of a result")
# ---------------------------------------------------------------------------------------------
variable "django_service_account_email" {
  description = "Email of the service account Django runs as: it gets publisher rights on the review topic and nothing else. Null: no grant (Django publishes with credentials granted elsewhere)."
  type        = string
  default     = null
}

variable "review_webhook_url" {
  description = "WEBHOOK_URL of the review component: Django's review receipt endpoint (<prefix>webhook/review/)."
  type        = string
  default     = ""
}

variable "review_ack_deadline_seconds" {
  description = "Seconds Pub/Sub waits for the review component to answer one push (build, write, STOW-RS, webhook); also its request timeout."
  type        = number
  default     = 120

  validation {
    condition     = var.review_ack_deadline_seconds >= 10 && var.review_ack_deadline_seconds <= 600
    error_message = "review_ack_deadline_seconds must be between 10 and 600."
  }
}

variable "review_max_delivery_attempts" {
  description = "Pushes of one decision before it is dead-lettered (5-100): 100 at up to push_max_backoff rides out a DICOM store outage of about 16 hours."
  type        = number
  default     = 100

  validation {
    condition     = var.review_max_delivery_attempts >= 5 && var.review_max_delivery_attempts <= 100
    error_message = "review_max_delivery_attempts must be between 5 and 100."
  }
}

variable "review_max_instances" {
  description = "Most instances of the review component (CPU only)."
  type        = number
  default     = 4
}

variable "review_memory" {
  description = "Memory of one review component instance: it reads one source image and builds its SR and SEG."
  type        = string
  default     = "2Gi"
}
