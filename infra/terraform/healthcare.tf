# Optional (var.enable_dicom_store): a Cloud Healthcare API DICOM store that receives every result
# as DICOM objects (a Segmentation and a TID 1500 SR, STOW-RS by the service and the job), where
# a PACS or viewer reads them (DICOMweb) or to which the store forwards them (README).

resource "google_healthcare_dataset" "results" {
  count     = var.enable_dicom_store ? 1 : 0
  project   = var.project_id
  name      = var.dicom_dataset_id
  location  = var.region
  time_zone = "UTC"

  depends_on = [google_project_service.enabled]
}

resource "google_healthcare_dicom_store" "results" {
  count   = var.enable_dicom_store ? 1 : 0
  name    = var.dicom_store_id
  dataset = google_healthcare_dataset.results[0].id
  labels  = local.labels
}

# The service and the job store (and may re-store) objects on this one store only.
resource "google_healthcare_dicom_store_iam_member" "gpu_dicom_editor" {
  for_each       = var.enable_dicom_store ? local.gpu_runtimes : {}
  dicom_store_id = google_healthcare_dicom_store.results[0].id
  role           = "roles/healthcare.dicomEditor"
  member         = each.value
}
