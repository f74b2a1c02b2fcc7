"""The record schema reads a LIME-only record of today's service and a record with the per-method
``explanations`` list (docs/contracts.md, "Explanation methods") alike."""

from __future__ import annotations

import copy

from django.test import SimpleTestCase

from dicom_results.schema import parse_result
from tests.support import record

GRADCAM_ENTRY = {
    "method": "gradcam",
    "label_index": 1,
    "heatmap_uri": "gs://uploads/ward3/scan.gradcam.heatmap.png",
    "heatmap_seg_uri": "gs://uploads/ward3/scan.gradcam.heatmap.seg.dcm",
    "stability": None,
    "stability_reason": "Grad-CAM is deterministic: no sampling to be stable under",
    "model_passes": 2,
    "ms": 41.3,
    "reason": None,
    "parameters": {"layer": "evidence", "layer_source": "auto"},
}
LIME_ENTRY = {
    "method": "lime",
    "label_index": 1,
    "heatmap_uri": "gs://uploads/ward3/scan.heatmap.png",
    "heatmap_seg_uri": "gs://uploads/ward3/scan.heatmap.seg.dcm",
    "stability": 0.9123,
    "stability_reason": None,
    "model_passes": 300,
    "ms": 900.1,
    "reason": None,
    "parameters": {"num_samples": 100},
}


class ExplanationMethodsSchemaTests(SimpleTestCase):
    def test_a_lime_only_record_of_todays_service_is_read_as_before(self) -> None:
        old = record()
        self.assertNotIn("explanations", old)
        fields = parse_result(old)
        self.assertEqual(fields["mask_uri"], "gs://uploads/ward3/scan.lime.png")
        self.assertEqual(fields["heatmap_uri"], "gs://uploads/ward3/scan.heatmap.png")

    def test_a_record_with_both_methods_keeps_lime_in_explanation(self) -> None:
        new = record(explanations=[LIME_ENTRY, GRADCAM_ENTRY])
        new["dicom"] = dict(new["dicom"], gradcam_heatmap_uri=GRADCAM_ENTRY["heatmap_seg_uri"])
        self.assertEqual(parse_result(new), parse_result(record()))  # the same row fields as LIME alone

    def test_a_gradcam_only_record_is_read(self) -> None:
        new = record(explanations=[GRADCAM_ENTRY])
        new["explanation"] = dict(
            copy.deepcopy(new["explanation"]),
            method="gradcam",
            heatmap_uri=GRADCAM_ENTRY["heatmap_uri"],
            top_segments=[],
            weights={},
            stability=0.0,
            samples_used=2,
        )
        fields = parse_result(new)
        self.assertEqual(fields["heatmap_uri"], GRADCAM_ENTRY["heatmap_uri"])
        self.assertEqual(fields["mask_uri"], "gs://uploads/ward3/scan.lime.png")
