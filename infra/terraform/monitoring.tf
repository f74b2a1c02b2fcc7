# What operators see (docs/operations.md): log-based metrics on the structured JSON lines the
# components already write (pipeline_common/jsonlog.py), alert policies with one optional email
# channel, and one dashboard. Every threshold is a variable (variables.tf, "Monitoring").
# Without var.notification_channel_email the alerts still exist, open incidents in the console and
# notify no one; `terraform plan` needs no channel.

locals {
  alert_channels = google_monitoring_notification_channel.email[*].id

  # Log entries of each component. The function's lines are written under its Cloud Run service
  # (2nd gen functions are Cloud Run services of the same name); older projects may still show
  # them under cloud_function, so both are matched.
  function_logs = "((resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloudfunctions2_function.ingest.name}\") OR (resource.type=\"cloud_function\" AND resource.labels.function_name=\"${google_cloudfunctions2_function.ingest.name}\"))"
  # The service and the backfill job run the same delivery code and write the same lines.
  gpu_logs = "((resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloud_run_v2_service.inference.name}\") OR (resource.type=\"cloud_run_job\" AND resource.labels.job_name=\"${google_cloud_run_v2_job.backfill.name}\"))"

  # The final line of every delivered result: "request completed|failed|duplicate"
  # (gpu_service/results/delivery.py), with outcome, result_status, error_code and the numbers below.
  delivered_line = "jsonPayload.logger=\"gpu_service.results.delivery\" AND jsonPayload.message=~\"^request (completed|failed|duplicate)$\""

  log_metric_prefix = "logging.googleapis.com/user"
  # An alert condition must name one resource type: the log-based alerts have one condition per
  # place the GPU code runs (the service's revisions, the backfill job's executions).
  gpu_log_resources = {
    service = "cloud_run_revision"
    job     = "cloud_run_job"
  }
  service_metrics  = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloud_run_v2_service.inference.name}\""
  function_metrics = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=\"${google_cloudfunctions2_function.ingest.name}\""
  runbook          = "What it means and what to do: docs/operations.md in the pipeline's repository."
}

resource "google_monitoring_notification_channel" "email" {
  count        = var.notification_channel_email == null ? 0 : 1
  project      = var.project_id
  display_name = "${local.prefix} pipeline operators"
  type         = "email"
  labels = {
    email_address = var.notification_channel_email
  }
  depends_on = [google_project_service.enabled]
}

# ---------------------------------------------------------------------------------------------
# Log-based metrics (counters, and distributions of numbers the lines carry)
# ---------------------------------------------------------------------------------------------
resource "google_logging_metric" "uploads" {
  project     = var.project_id
  name        = "${local.prefix}-uploads"
  description = "Uploads the ingest function decided on: accepted (published) or rejected, by reason."
  filter      = "${local.function_logs} AND jsonPayload.logger=\"dicom_ingest\" AND jsonPayload.outcome=(\"accepted\" OR \"rejected\")"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key         = "outcome"
      value_type  = "STRING"
      description = "accepted or rejected"
    }
    labels {
      key         = "reason"
      value_type  = "STRING"
      description = "Rejection reason code (not_dicom, no_pixel_data, ...); empty when accepted"
    }
  }
  label_extractors = {
    outcome = "EXTRACT(jsonPayload.outcome)"
    reason  = "EXTRACT(jsonPayload.reason)"
  }
}

resource "google_logging_metric" "results" {
  project     = var.project_id
  name        = "${local.prefix}-results"
  description = "Results delivered to the webhook, by outcome (completed, failed, duplicate), record status and error code (retries_exhausted, decode_failed, ...)."
  filter      = "${local.gpu_logs} AND ${local.delivered_line}"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key         = "outcome"
      value_type  = "STRING"
      description = "completed, failed or duplicate"
    }
    labels {
      key         = "result_status"
      value_type  = "STRING"
      description = "Status of the delivered record: completed or failed"
    }
    labels {
      key         = "error_code"
      value_type  = "STRING"
      description = "Error code of a failed record (retries_exhausted, dicomweb_rejected, ...)"
    }
  }
  label_extractors = {
    outcome       = "EXTRACT(jsonPayload.outcome)"
    result_status = "EXTRACT(jsonPayload.result_status)"
    error_code    = "EXTRACT(jsonPayload.error_code)"
  }
}

resource "google_logging_metric" "webhook_failures" {
  project     = var.project_id
  name        = "${local.prefix}-webhook-failures"
  description = "Webhook deliveries that failed after all of the service's attempts (Pub/Sub redelivers the message)."
  filter      = "${local.gpu_logs} AND jsonPayload.logger=\"gpu_service.results.delivery\" AND jsonPayload.message=\"webhook not accepted; the message will be redelivered\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key         = "error"
      value_type  = "STRING"
      description = "Last error: HTTP status or exception name"
    }
  }
  label_extractors = {
    error = "EXTRACT(jsonPayload.error)"
  }
}

resource "google_logging_metric" "dicomweb_rejected" {
  project     = var.project_id
  name        = "${local.prefix}-dicomweb-rejected"
  description = "The DICOMweb store refused a result's DICOM objects (a permanent dicomweb_rejected failure)."
  filter      = "${local.gpu_logs} AND ((jsonPayload.message=\"permanent failure\" AND jsonPayload.error_code=\"dicomweb_rejected\") OR jsonPayload.message=\"the DICOMweb store refuses the objects\")"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
}

resource "google_logging_metric" "dicomweb_unavailable" {
  project     = var.project_id
  name        = "${local.prefix}-dicomweb-unavailable"
  description = "The DICOMweb store was down, timed out or answered 5xx/401/408/429 (StoreUnavailable): the delivery was handed off to the delivery subscription, or the message is redelivered."
  # Handed off (DELIVERY_TOPIC set): one line with the reason, no stack trace. Retried (no delivery
  # topic, or the delivery subscription's own push): the exception's stack trace.
  filter = "${local.gpu_logs} AND ((jsonPayload.message=\"downstream unavailable; delivery handed off\" AND jsonPayload.reason=\"dicomweb_unavailable\") OR jsonPayload.stack_trace:\"StoreUnavailable\")"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
}

resource "google_logging_metric" "upload_to_webhook_latency" {
  project         = var.project_id
  name            = "${local.prefix}-upload-to-webhook-latency"
  description     = "Milliseconds from the upload (its storage event time) to the webhook's acceptance of its result."
  filter          = "${local.gpu_logs} AND ${local.delivered_line} AND jsonPayload.upload_to_webhook_ms:*"
  value_extractor = "EXTRACT(jsonPayload.upload_to_webhook_ms)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "ms"
  }
  # 100 ms to about 9 hours.
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 40
      growth_factor      = 1.4
      scale              = 100
    }
  }
}

resource "google_logging_metric" "explanation_samples" {
  project         = var.project_id
  name            = "${local.prefix}-explanation-samples"
  description     = "Perturbations LIME scored per completed result (samples_used)."
  filter          = "${local.gpu_logs} AND ${local.delivered_line} AND jsonPayload.explanation_samples:*"
  value_extractor = "EXTRACT(jsonPayload.explanation_samples)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "1"
  }
  # 10 to about 50,000 samples.
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 24
      growth_factor      = 1.45
      scale              = 10
    }
  }
}

resource "google_logging_metric" "explanation_stability" {
  project         = var.project_id
  name            = "${local.prefix}-explanation-stability"
  description     = "Bootstrap stability (0-1) of each completed result's explanation."
  filter          = "${local.gpu_logs} AND ${local.delivered_line} AND jsonPayload.explanation_stability:*"
  value_extractor = "EXTRACT(jsonPayload.explanation_stability)"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "1"
  }
  bucket_options {
    linear_buckets {
      num_finite_buckets = 20
      width              = 0.05
      offset             = 0
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Alert policies
# ---------------------------------------------------------------------------------------------
resource "google_monitoring_alert_policy" "dead_letter" {
  project               = var.project_id
  display_name          = "${local.prefix}: messages in the dead-letter subscription"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.alert_channels
  user_labels           = local.labels
  depends_on            = [google_project_service.enabled]

  conditions {
    display_name = "Dead-letter subscription holds more than ${var.alert_dead_letter_messages} messages"
    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${google_pubsub_subscription.dead_letter.name}\" AND metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_dead_letter_messages
      duration        = "0s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A request failed every delivery (${var.max_delivery_attempts}) and waits in `${google_pubsub_subscription.dead_letter.name}`. Find its cause in the service's logs, fix it, then replay it with the backfill job (`--subscription`). ${local.runbook}"
  }
}

resource "google_monitoring_alert_policy" "push_backlog_age" {
  project               = var.project_id
  display_name          = "${local.prefix}: inference requests waiting too long"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.alert_channels
  user_labels           = local.labels
  depends_on            = [google_project_service.enabled]

  conditions {
    display_name = "Oldest unacknowledged push message older than ${var.alert_push_oldest_unacked_age_seconds}s"
    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${google_pubsub_subscription.inference_push.name}\" AND metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_push_oldest_unacked_age_seconds
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Uploads are not being answered: the service is failing, cannot scale (GPU quota, max instances) or is slower than the upload rate. ${local.runbook}"
  }
}

# A result computed but waiting for its downstream (the DICOMweb store or Django is down): nothing
# is lost while it waits (docs/contracts.md, "Delivery after a downstream outage"), but the
# radiologist does not see it. Fires long before the delivery message expires.
resource "google_monitoring_alert_policy" "delivery_backlog_age" {
  project               = var.project_id
  display_name          = "${local.prefix}: results waiting for the DICOMweb store or Django"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.alert_channels
  user_labels           = local.labels
  depends_on            = [google_project_service.enabled]

  conditions {
    display_name = "Oldest undelivered result older than ${var.alert_delivery_oldest_unacked_age_seconds}s"
    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${google_pubsub_subscription.delivery_push.name}\" AND metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_delivery_oldest_unacked_age_seconds
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Computed results are waiting for a downstream: the DICOMweb store or Django is down or refusing connections. They are delivered by themselves once it is back, for up to delivery_retention; past that, run the backfill job over the upload prefix. ${local.runbook}"
  }
}

resource "google_monitoring_alert_policy" "service_5xx" {
  project               = var.project_id
  display_name          = "${local.prefix}: inference service 5xx rate"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.alert_channels
  user_labels           = local.labels
  depends_on            = [google_project_service.enabled]

  conditions {
    display_name = "Share of 5xx answers above ${var.alert_service_5xx_ratio}"
    condition_threshold {
      filter             = "${local.service_metrics} AND metric.type=\"run.googleapis.com/request_count\" AND metric.labels.response_code_class=\"5xx\""
      denominator_filter = "${local.service_metrics} AND metric.type=\"run.googleapis.com/request_count\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.alert_service_5xx_ratio
      duration           = "300s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
      denominator_aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "The service answers 503 when a request must be retried (webhook or DICOMweb store down, model not ready, storage or GPU errors); Pub/Sub redelivers it. ${local.runbook}"
  }
}

resource "google_monitoring_alert_policy" "function_5xx" {
  project               = var.project_id
  display_name          = "${local.prefix}: ingest function 5xx rate"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.alert_channels
  user_labels           = local.labels
  depends_on            = [google_project_service.enabled]

  conditions {
    display_name = "Share of 5xx answers above ${var.alert_function_5xx_ratio}"
    condition_threshold {
      filter             = "${local.function_metrics} AND metric.type=\"run.googleapis.com/request_count\" AND metric.labels.response_code_class=\"5xx\""
      denominator_filter = "${local.function_metrics} AND metric.type=\"run.googleapis.com/request_count\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.alert_function_5xx_ratio
      duration           = "300s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
      denominator_aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "The ingest function fails on storage events (it cannot read the upload or publish the request); Eventarc retries them. ${local.runbook}"
  }
}

resource "google_monitoring_alert_policy" "webhook_failed" {
  project               = var.project_id
  display_name          = "${local.prefix}: webhook deliveries failing"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.alert_channels
  user_labels           = local.labels
  depends_on            = [google_project_service.enabled]

  dynamic "conditions" {
    for_each = local.gpu_log_resources
    content {
      display_name = "Webhook deliveries failed after all retries (${conditions.key}): more than ${var.alert_webhook_failures} in 5 minutes"
      condition_threshold {
        filter          = "resource.type=\"${conditions.value}\" AND metric.type=\"${local.log_metric_prefix}/${google_logging_metric.webhook_failures.name}\""
        comparison      = "COMPARISON_GT"
        threshold_value = var.alert_webhook_failures
        duration        = "0s"
        aggregations {
          alignment_period     = "300s"
          per_series_aligner   = "ALIGN_DELTA"
          cross_series_reducer = "REDUCE_SUM"
        }
      }
    }
  }

  # Log-based counters write no point while nothing matches: close the incident after a quiet half hour.
  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "The Django application did not accept results (down, 5xx, 4xx, a redirect, a wrong secret). Results are stored; Pub/Sub redelivers and the stored record is re-sent. ${local.runbook}"
  }
}

# Failed records by the record's status, not the request's outcome: a failed record whose first
# webhook was refused reaches Django later as "request duplicate".
resource "google_monitoring_alert_policy" "retries_exhausted" {
  project               = var.project_id
  display_name          = "${local.prefix}: retries_exhausted records"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.alert_channels
  user_labels           = local.labels
  depends_on            = [google_project_service.enabled]

  dynamic "conditions" {
    for_each = local.gpu_log_resources
    content {
      display_name = "retries_exhausted records (${conditions.key}): more than ${var.alert_retries_exhausted} in 5 minutes"
      condition_threshold {
        filter          = "resource.type=\"${conditions.value}\" AND metric.type=\"${local.log_metric_prefix}/${google_logging_metric.results.name}\" AND metric.labels.result_status=\"failed\" AND metric.labels.error_code=\"retries_exhausted\""
        comparison      = "COMPARISON_GT"
        threshold_value = var.alert_retries_exhausted
        duration        = "0s"
        aggregations {
          alignment_period     = "300s"
          per_series_aligner   = "ALIGN_DELTA"
          cross_series_reducer = "REDUCE_SUM"
        }
      }
    }
  }

  # Log-based counters write no point while nothing matches: close the incident after a quiet half hour.
  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "An upload kept failing for a transient reason (storage, GPU, memory, DICOMweb store) until its last useful delivery, so a failed record with error code retries_exhausted was delivered instead of a prediction. ${local.runbook}"
  }
}

resource "google_monitoring_alert_policy" "failed_results" {
  project               = var.project_id
  display_name          = "${local.prefix}: failed results"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.alert_channels
  user_labels           = local.labels
  depends_on            = [google_project_service.enabled]

  dynamic "conditions" {
    for_each = local.gpu_log_resources
    content {
      display_name = "Failed records (other than retries_exhausted) (${conditions.key}): more than ${var.alert_failed_results} in 5 minutes"
      condition_threshold {
        filter          = "resource.type=\"${conditions.value}\" AND metric.type=\"${local.log_metric_prefix}/${google_logging_metric.results.name}\" AND metric.labels.result_status=\"failed\" AND metric.labels.error_code!=\"retries_exhausted\""
        comparison      = "COMPARISON_GT"
        threshold_value = var.alert_failed_results
        duration        = "0s"
        aggregations {
          alignment_period     = "300s"
          per_series_aligner   = "ALIGN_DELTA"
          cross_series_reducer = "REDUCE_SUM"
        }
      }
    }
  }

  # Log-based counters write no point while nothing matches: close the incident after a quiet half hour.
  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Uploads got a failed record (decode_failed, image_too_large, dicomweb_rejected, ...): the record's error says why; the metric's error_code label groups them. ${local.runbook}"
  }
}

resource "google_monitoring_alert_policy" "dicomweb_store" {
  project               = var.project_id
  display_name          = "${local.prefix}: DICOMweb store refusing or unreachable"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.alert_channels
  user_labels           = local.labels
  depends_on            = [google_project_service.enabled]

  dynamic "conditions" {
    for_each = local.gpu_log_resources
    content {
      display_name = "DICOMweb store refused objects (${conditions.key}): more than ${var.alert_dicomweb_errors} in 5 minutes"
      condition_threshold {
        filter          = "resource.type=\"${conditions.value}\" AND metric.type=\"${local.log_metric_prefix}/${google_logging_metric.dicomweb_rejected.name}\""
        comparison      = "COMPARISON_GT"
        threshold_value = var.alert_dicomweb_errors
        duration        = "0s"
        aggregations {
          alignment_period     = "300s"
          per_series_aligner   = "ALIGN_DELTA"
          cross_series_reducer = "REDUCE_SUM"
        }
      }
    }
  }

  dynamic "conditions" {
    for_each = local.gpu_log_resources
    content {
      display_name = "DICOMweb store unreachable (${conditions.key}): more than ${var.alert_dicomweb_errors} in 5 minutes"
      condition_threshold {
        filter          = "resource.type=\"${conditions.value}\" AND metric.type=\"${local.log_metric_prefix}/${google_logging_metric.dicomweb_unavailable.name}\""
        comparison      = "COMPARISON_GT"
        threshold_value = var.alert_dicomweb_errors
        duration        = "0s"
        aggregations {
          alignment_period     = "300s"
          per_series_aligner   = "ALIGN_DELTA"
          cross_series_reducer = "REDUCE_SUM"
        }
      }
    }
  }

  # Log-based counters write no point while nothing matches: close the incident after a quiet half hour.
  alert_strategy {
    auto_close = "1800s"
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Refused: the store rejects the SEG/SR objects (failed records with dicomweb_rejected). Unreachable: the store is down or denies the service's identity; results are staged and redelivered. ${local.runbook}"
  }
}

resource "google_monitoring_alert_policy" "gpu_memory" {
  project               = var.project_id
  display_name          = "${local.prefix}: GPU memory near its limit"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.alert_channels
  user_labels           = local.labels
  depends_on            = [google_project_service.enabled]

  conditions {
    display_name = "GPU memory utilisation (p99 over instances) above ${var.alert_gpu_memory_utilization}"
    condition_threshold {
      filter          = "${local.service_metrics} AND metric.type=\"run.googleapis.com/container/gpu/memory_utilizations\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_gpu_memory_utilization
      duration        = "300s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_PERCENTILE_99"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = ["resource.label.revision_name"]
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "An instance's GPU memory is nearly full: the next batch or a large image may fail with an out-of-memory error (then retried, and recorded as retries_exhausted if it persists). Lower service_concurrency or BATCH_MAX_SIZE, or use a smaller model. ${local.runbook}"
  }
}

# ---------------------------------------------------------------------------------------------
# Dashboard
# ---------------------------------------------------------------------------------------------
resource "google_monitoring_dashboard" "pipeline" {
  project = var.project_id
  dashboard_json = templatefile("${path.module}/dashboards/pipeline.json.tftpl", {
    display_name             = "${local.prefix}: DICOM inference pipeline"
    service_name             = google_cloud_run_v2_service.inference.name
    function_name            = google_cloudfunctions2_function.ingest.name
    uploads_metric           = "${local.log_metric_prefix}/${google_logging_metric.uploads.name}"
    results_metric           = "${local.log_metric_prefix}/${google_logging_metric.results.name}"
    latency_metric           = "${local.log_metric_prefix}/${google_logging_metric.upload_to_webhook_latency.name}"
    samples_metric           = "${local.log_metric_prefix}/${google_logging_metric.explanation_samples.name}"
    stability_metric         = "${local.log_metric_prefix}/${google_logging_metric.explanation_stability.name}"
    dead_letter_subscription = google_pubsub_subscription.dead_letter.name
    push_subscription        = google_pubsub_subscription.inference_push.name
  })
  depends_on = [google_project_service.enabled]
}

# Radiologist decisions not yet stored as DICOM (review.tf): dead-lettered ones, and ones waiting
# (the DICOMweb store or Django down): the referring doctor does not see the verified result.
resource "google_monitoring_alert_policy" "review_dead_letter" {
  project               = var.project_id
  display_name          = "${local.prefix}: review decisions in the dead-letter subscription"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = local.alert_channels
  user_labels           = local.labels
  depends_on            = [google_project_service.enabled]

  conditions {
    display_name = "Review dead-letter subscription holds more than ${var.alert_dead_letter_messages} messages"
    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${google_pubsub_subscription.review_dead_letter.name}\" AND metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_dead_letter_messages
      duration        = "0s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A radiologist's decision failed every push (${var.review_max_delivery_attempts}) and waits in `${google_pubsub_subscription.review_dead_letter.name}`. Find the cause in the review component's logs (`review refused`, `asking for redelivery`), fix it, then run `python manage.py publish_reviews --unreceipted` in Django (the component is idempotent: one SR per decision). ${local.runbook}"
  }
}

resource "google_monitoring_alert_policy" "review_backlog_age" {
  project               = var.project_id
  display_name          = "${local.prefix}: review decisions waiting too long"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = local.alert_channels
  user_labels           = local.labels
  depends_on            = [google_project_service.enabled]

  conditions {
    display_name = "Oldest unacknowledged review decision older than ${var.alert_review_oldest_unacked_age_seconds}s"
    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${google_pubsub_subscription.review_push.name}\" AND metric.type=\"pubsub.googleapis.com/subscription/oldest_unacked_message_age\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_review_oldest_unacked_age_seconds
      duration        = "300s"
      aggregations {
        alignment_period   = "60s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Radiologists' decisions are not becoming DICOM: the DICOMweb store or Django is down, or the review component fails. Nothing is lost while Pub/Sub retries. ${local.runbook}"
  }
}
