# The Standard Webhooks secret (whsec_<base64 key>) that signs webhook calls (docs/contracts.md);
# Django verifies with the same value. Terraform creates the secret,
# never its value: a value in Terraform would also sit in the state file. Add versions with
# `gcloud secrets versions add` (README.md, "Deploy to Google Cloud").
resource "google_secret_manager_secret" "webhook" {
  project   = var.project_id
  secret_id = "${local.prefix}-webhook-secret"

  # Replicated only in the pipeline's region, optionally under the customer-managed key.
  replication {
    user_managed {
      replicas {
        location = var.region
        dynamic "customer_managed_encryption" {
          for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
          content {
            kms_key_name = customer_managed_encryption.value
          }
        }
      }
    }
  }

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents]
}
