# Docker repository for the inference image and for the function's build (build_config.docker_repository),
# so every image of the pipeline lives in one place under one cleanup policy.
resource "google_artifact_registry_repository" "images" {
  project       = var.project_id
  location      = var.region
  repository_id = var.repository_id
  description   = "Images of the DICOM inference pipeline"
  format        = "DOCKER"
  kms_key_name  = var.kms_key_name

  docker_config {
    # Mutable: the function build moves its own tags on every deploy. The service is deployed
    # by digest (Cloud Build sets var.image), so a moved tag never changes a running revision.
    immutable_tags = false
  }

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = var.image_keep_count
    }
  }
  cleanup_policies {
    id     = "delete-old-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}
