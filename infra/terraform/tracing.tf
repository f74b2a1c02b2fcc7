# One trace per upload (docs/contracts.md, "Tracing"): the runtime identities that write spans
# to Cloud Trace (the function, the service, the backfill job).
locals {
  trace_writers = {
    ingest    = google_service_account.ingest.member
    inference = google_service_account.inference.member
    backfill  = google_service_account.backfill.member
  }
}

# Project level by nature: cloudtrace.traces.patch is only granted on the project.
resource "google_project_iam_member" "trace_agent" {
  for_each = local.trace_writers
  project  = var.project_id
  role     = "roles/cloudtrace.agent"
  member   = each.value
}
