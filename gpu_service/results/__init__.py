"""Where a result goes: the record, the outputs beside the upload in Cloud Storage, the webhook to
Django with its Standard Webhooks signature, and the delivery that ties them together."""
