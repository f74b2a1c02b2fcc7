# Provider versions are pinned to one minor release (patch fixes only), so a plan made today and
# a plan made in a year resolve the same schema. Commit .terraform.lock.hcl after the first `terraform init`
# (it records the exact build and its checksums; see README.md, "Deploy to Google Cloud").
terraform {
  required_version = ">= 1.6, < 2.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.45.0"
    }
    # Only for resources or fields the GA provider may lack in early 7.x releases (service
    # identities, Cloud Run job GPU fields); every use says why.
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 7.45.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.7.0"
    }
  }

  # State lives in a versioned Cloud Storage bucket created once per project (README.md, "Deploy to Google Cloud").
  # Partial configuration: `terraform init -backend-config="bucket=<state bucket>"`.
  backend "gcs" {
    prefix = "dicom-pipeline"
  }
}
