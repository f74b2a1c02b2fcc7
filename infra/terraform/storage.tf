# Buckets: uploads (DICOM in, outputs beside them), models, and the function's source archives.
# One definition serves all three, so they cannot drift apart: private (uniform access, public
# access prevention enforced), versioned, with soft delete, optionally encrypted with a
# customer-managed key. Only the name and the location differ.
locals {
  buckets = {
    uploads = { name = local.upload_bucket, location = local.bucket_location }
    models  = { name = local.models_bucket, location = local.bucket_location }
    # Cloud Build reads the function's source from the function's region.
    function_source = { name = local.source_bucket, location = var.region }
  }
}

resource "google_storage_bucket" "private" {
  # checkov:skip=CKV_GCP_62:Legacy usage logs are replaced by Cloud Audit Logs data-access logs for storage.googleapis.com (google_project_iam_audit_config.storage), which record who read or wrote each object in every one of these buckets.
  for_each = local.buckets

  name                        = each.value.name
  project                     = var.project_id
  location                    = each.value.location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }

  soft_delete_policy {
    retention_duration_seconds = var.soft_delete_retention_days * 86400
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}

# Who read or wrote which object, for every bucket in the project: the audit trail that
# patient data needs, and what legacy bucket usage logs would otherwise approximate.
resource "google_project_iam_audit_config" "storage" {
  count   = var.enable_data_access_audit_logs ? 1 : 0
  project = var.project_id
  service = "storage.googleapis.com"

  audit_log_config {
    log_type = "ADMIN_READ"
  }
  audit_log_config {
    log_type = "DATA_READ"
  }
  audit_log_config {
    log_type = "DATA_WRITE"
  }
}
