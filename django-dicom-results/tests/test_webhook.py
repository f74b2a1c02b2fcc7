"""The webhook view: signatures, replay window, schema, size limit, dedup and the signal."""

from __future__ import annotations

import base64
import sys
import time
from unittest import mock

from django.test import TestCase, override_settings
from django.urls import reverse

from dicom_results import tracing
from dicom_results.models import InferenceResult
from dicom_results.signals import result_received
from tests.support import encode, failed_record, record, sign, webhook_id_for

OTHER_SECRET = "whsec_" + base64.b64encode(b"another-key-that-is-not-the-one").decode()


class SignalCounter:
    def __init__(self) -> None:
        self.results: list[InferenceResult] = []

    def __call__(self, sender, result, **kwargs) -> None:
        self.results.append(result)


class WebhookTests(TestCase):
    url = reverse("dicom_results:webhook")

    def setUp(self) -> None:
        self.received = SignalCounter()
        result_received.connect(self.received)
        self.addCleanup(result_received.disconnect, self.received)

    def post(self, body: bytes, headers: dict[str, str]):
        with self.captureOnCommitCallbacks(execute=True):
            return self.client.post(self.url, data=body, content_type="application/json", headers=headers)

    def test_valid_delivery_is_stored_with_every_field_and_signalled_once(self) -> None:
        rec = record()
        body = encode(rec)
        response = self.post(body, sign(body, webhook_id=webhook_id_for(rec)))
        self.assertEqual(response.status_code, 201, response.content)
        row = InferenceResult.objects.get()
        self.assertEqual(response.json(), {"id": row.pk, "duplicate": False})
        self.assertEqual((row.status, row.label, row.score), ("completed", "nodule", 0.93))
        self.assertEqual(row.scores, {"normal": 0.07, "nodule": 0.93})
        self.assertEqual((row.source_uri, row.source_generation), ("gs://uploads/ward3/scan.dcm", "17"))
        self.assertEqual((row.model_name, row.model_version, row.model_sha256), ("demo-cnn", "1", "ab" * 32))
        self.assertEqual(row.overlay_uri, "gs://uploads/ward3/scan.overlay.png")
        self.assertEqual(row.mask_uri, "gs://uploads/ward3/scan.lime.png")
        self.assertEqual(row.image_uri, "gs://uploads/ward3/scan.png")
        self.assertEqual(row.heatmap_uri, "gs://uploads/ward3/scan.heatmap.png")
        self.assertEqual(
            (row.seg_uri, row.sr_uri), ("gs://uploads/ward3/scan.seg.dcm", "gs://uploads/ward3/scan.sr.dcm")
        )
        self.assertEqual(row.study_instance_uid, "1.2.3.4")
        self.assertEqual(row.dicom_series_instance_uids, ["1.2.3.4.7", "1.2.3.4.8"])
        self.assertEqual(row.dicom_sop_instance_uids, ["1.2.3.4.7.1", "1.2.3.4.8.1"])
        self.assertEqual((row.modality, row.correlation_id), ("DX", "c" * 32))
        self.assertEqual(row.timings_ms["explain"], 900.1)
        self.assertEqual(row.body, rec)
        self.assertEqual(row.webhook_id, webhook_id_for(rec))
        self.assertEqual([r.pk for r in self.received.results], [row.pk])

    def test_failed_record_keeps_its_error(self) -> None:
        body = encode(failed_record())
        self.assertEqual(self.post(body, sign(body)).status_code, 201)
        row = InferenceResult.objects.get()
        self.assertEqual((row.status, row.label, row.score), ("failed", "", None))
        self.assertEqual(
            (row.error_code, row.error_message), ("decode_error", "pixel data could not be decoded")
        )

    def test_result_without_optional_sections(self) -> None:
        rec = record(dicom=None)
        rec["explanation"].pop("heatmap_uri")
        body = encode(rec)
        self.assertEqual(self.post(body, sign(body)).status_code, 201)
        row = InferenceResult.objects.get()
        self.assertEqual((row.heatmap_uri, row.seg_uri, row.dicom_sop_instance_uids), ("", "", []))

    def test_duplicates_store_one_row_and_send_one_signal(self) -> None:
        body = encode(record())
        key = webhook_id_for(record())
        statuses = [self.post(body, sign(body, webhook_id=key)).status_code for _ in range(3)]
        self.assertEqual(statuses, [201, 200, 200])
        self.assertEqual(InferenceResult.objects.count(), 1)
        self.assertEqual(len(self.received.results), 1)

    def test_wrong_secret_is_refused(self) -> None:
        body = encode(record())
        response = self.post(body, sign(body, secret=OTHER_SECRET))
        self.assertEqual(response.status_code, 401)
        self.assertEqual(response.json()["error"], "bad_signature")
        self.assert_nothing_stored()

    def test_missing_or_malformed_headers_are_refused(self) -> None:
        body = encode(record())
        good = sign(body)
        for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
            with self.subTest(missing=missing):
                headers = {k: v for k, v in good.items() if k != missing}
                self.assertEqual(self.post(body, headers).status_code, 401)
        for signature in ("v1,not-base64!!", "garbage", "v1=" + "0" * 64, ""):
            with self.subTest(signature=signature):
                self.assertEqual(self.post(body, {**good, "webhook-signature": signature}).status_code, 401)
        self.assertEqual(self.post(body, {**good, "webhook-timestamp": "soon"}).status_code, 401)
        self.assert_nothing_stored()

    def test_stale_and_future_timestamps_are_refused(self) -> None:
        body = encode(record())
        for offset in (-301, -3600, 301, 3600):
            with self.subTest(offset=offset):
                response = self.post(body, sign(body, timestamp=time.time() + offset))
                self.assertEqual(response.status_code, 401)
        self.assert_nothing_stored()
        self.assertEqual(self.post(body, sign(body, timestamp=time.time() - 200)).status_code, 201)

    @override_settings(DICOM_RESULTS_TOLERANCE_S=60)
    def test_a_narrower_replay_window_is_honoured(self) -> None:
        body = encode(record())
        self.assertEqual(self.post(body, sign(body, timestamp=time.time() - 120)).status_code, 401)
        self.assertEqual(self.post(body, sign(body, timestamp=time.time() + 120)).status_code, 401)
        self.assertEqual(self.post(body, sign(body, timestamp=time.time() - 30)).status_code, 201)

    def test_replay_under_another_webhook_id_is_refused(self) -> None:
        body = encode(record())
        captured = sign(body, webhook_id="original-id")
        self.assertEqual(self.post(body, captured).status_code, 201)
        replay = {**captured, "webhook-id": "fresh-id-to-dodge-dedup"}
        self.assertEqual(self.post(body, replay).status_code, 401)
        self.assertEqual(InferenceResult.objects.count(), 1)
        self.assertEqual(len(self.received.results), 1)

    def test_tampered_body_is_refused(self) -> None:
        body = encode(record())
        headers = sign(body)
        tampered = body.replace(b'"nodule"', b'"normal"', 1)
        self.assertEqual(self.post(tampered, headers).status_code, 401)
        self.assert_nothing_stored()

    @override_settings(DICOM_RESULTS_MAX_BODY_BYTES=2048)
    def test_oversize_body_is_refused_before_it_is_read(self) -> None:
        rec = record()
        rec["explanation"]["top_segments"] = list(range(2000))
        body = encode(rec)
        self.assertGreater(len(body), 2048)
        response = self.post(body, sign(body))
        self.assertEqual(response.status_code, 413)
        self.assertEqual(response.json()["error"], "too_large")
        self.assert_nothing_stored()

    def test_malformed_bodies_are_refused_with_a_reason(self) -> None:
        cases = {
            b"not json at all": "not_json",
            encode(record()).replace(b'"score":0.93', b'"score":NaN'): "not_json",
            b"\xff\xfe": None,  # not UTF-8: cannot even be signed as text by the spec, 401 or 400
            encode(["a", "list"]): "bad_schema",
            encode(record(schema="dicom-inference-result/2")): "bad_schema",
            encode(record(status="maybe")): "bad_schema",
            encode(record(prediction=None)): "bad_schema",
            encode(record(source={"bucket": "uploads"})): "bad_schema",
            encode(record(timings_ms={"predict": "fast"})): "bad_schema",
            encode(record(completed_at="yesterday")): "bad_schema",
        }
        for body, error in cases.items():
            with self.subTest(body=body[:40]):
                if error is None:
                    response = self.client.post(self.url, data=body, content_type="application/json",
                                                headers=sign(b"x"))  # fmt: skip
                    self.assertIn(response.status_code, (400, 401))
                    continue
                response = self.post(body, sign(body))
                self.assertEqual(response.status_code, 400, response.content)
                self.assertEqual(response.json()["error"], error)
                self.assertTrue(response.json()["detail"])
        self.assert_nothing_stored()

    def test_schema_error_names_the_field(self) -> None:
        body = encode(record(prediction={"label": "nodule"}))
        response = self.post(body, sign(body))
        self.assertEqual(response.status_code, 400)
        self.assertIn("prediction.score", response.json()["detail"])

    def test_bad_settings_fail_the_system_check(self) -> None:
        from django.core import checks

        self.assertEqual(checks.run_checks(tags=None), [])
        for bad in ({"DICOM_RESULTS_TOLERANCE_S": 600}, {"DICOM_RESULTS_WEBHOOK_SECRET": "hunter2"}):
            with self.subTest(bad=bad), override_settings(**bad):
                self.assertEqual([m.id for m in checks.run_checks()], ["dicom_results.E001"])

    def test_only_post(self) -> None:
        self.assertEqual(self.client.get(self.url).status_code, 405)

    def assert_nothing_stored(self) -> None:
        self.assertEqual(InferenceResult.objects.count(), 0)
        self.assertEqual(self.received.results, [])


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@override_settings(DICOM_RESULTS_TRACE_PROJECT="hospital-proj")
class TraceparentTests(TestCase):
    """The webhook logs the service's traceparent with Cloud Logging's trace fields; a bad one or
    a missing opentelemetry package never refuses a delivery."""

    url = reverse("dicom_results:webhook")

    def _post(self, traceparent: str | None):
        rec = record()
        body = encode(rec)
        headers = sign(body, webhook_id=webhook_id_for(rec))
        if traceparent is not None:
            headers["traceparent"] = traceparent
        with self.assertLogs("dicom_results.webhook", "INFO") as logs:
            response = self.client.post(self.url, data=body, content_type="application/json", headers=headers)
        self.assertEqual(response.status_code, 201, response.content)
        (line,) = [r for r in logs.records if r.getMessage() == "webhook stored"]
        return line.fields

    def test_stored_line_carries_the_trace_fields(self) -> None:
        fields = self._post(TRACEPARENT)
        self.assertEqual(
            fields["logging.googleapis.com/trace"],
            "projects/hospital-proj/traces/4bf92f3577b34da6a3ce929d0e0e4736",
        )
        self.assertEqual(fields["logging.googleapis.com/spanId"], "00f067aa0ba902b7")
        self.assertEqual(fields["traceparent"], TRACEPARENT)

    def test_malformed_traceparent_is_logged_as_such_and_stored_anyway(self) -> None:
        fields = self._post("00-not-a-trace-01")
        self.assertTrue(fields["traceparent_malformed"])
        self.assertNotIn("logging.googleapis.com/trace", fields)

    def test_all_zero_trace_id_is_malformed(self) -> None:
        self.assertIsNone(tracing.parse("00-" + "0" * 32 + "-00f067aa0ba902b7-01"))

    def test_no_traceparent_no_trace_fields(self) -> None:
        self.assertNotIn("traceparent", self._post(None))

    def test_works_without_opentelemetry_installed(self) -> None:
        blocked = {name: None for name in ("opentelemetry", "opentelemetry.trace")}
        blocked["opentelemetry.trace.propagation.tracecontext"] = None
        with mock.patch.dict(sys.modules, blocked):
            with self.assertRaises(ImportError):
                import opentelemetry.trace  # noqa: F401
            fields = self._post(TRACEPARENT)
        self.assertEqual(fields["logging.googleapis.com/spanId"], "00f067aa0ba902b7")
