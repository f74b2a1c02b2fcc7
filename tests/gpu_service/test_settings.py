"""The service's settings: typed values from the environment, refusals, the LIME parameters they ask for."""

from __future__ import annotations

import pytest

from gpu_service.settings import Settings

# -- settings ------------------------------------------------------------------------------


def test_settings_from_env_reads_typed_values() -> None:
    s = Settings.from_env(
        {
            "WEBHOOK_URL": "http://x/hook",
            "WEBHOOK_SECRET": "whsec_aHVudGVyMi1zZWNyZXQ=",  # whsec_ + base64("hunter2-secret")
            "WEBHOOK_MAX_ATTEMPTS": "3",
            "PUSH_AUDIENCE": "https://svc",
            "OUTPUT_PREFIX": "/results/",
            "LIME_NUM_SAMPLES": "64",
            "BATCH_MAX_WAIT_MS": "2.5",
            "BATCHING": "false",
        }
    )
    assert (s.webhook_max_attempts, s.push_audience, s.output_prefix) == (3, "https://svc", "results")
    assert (s.lime_num_samples, s.batch_max_wait_ms, s.batching) == (64, 2.5, False)
    assert s.push_certs_url.startswith("https://www.googleapis.com/")
    assert (
        "aHVudGVy" not in repr(s) and s.webhook_secret == "whsec_aHVudGVyMi1zZWNyZXQ="
    )  # never in a repr/log


def test_settings_pixel_budget_and_delivery_attempts() -> None:
    from dicom_ingest.settings import DEFAULT_MAX_PIXELS

    s = Settings.from_env({})
    assert s.max_pixels == DEFAULT_MAX_PIXELS  # the same budget as the ingest function
    assert (s.max_delivery_attempts, s.give_up_attempt) == (5, 4)
    s = Settings.from_env({"MAX_PIXELS": "1000", "MAX_DELIVERY_ATTEMPTS": "10"})
    assert (s.max_pixels, s.give_up_attempt) == (1000, 9)
    assert Settings(max_delivery_attempts=1).give_up_attempt == 1
    with pytest.raises(ValueError):
        Settings.from_env({"MAX_PIXELS": "0"})
    with pytest.raises(ValueError):
        Settings.from_env({"MAX_DELIVERY_ATTEMPTS": "0"})


def test_render_max_side_bounds_the_renderings_and_zero_keeps_the_source() -> None:
    assert Settings.from_env({}).render_max_side == 1024
    assert Settings.from_env({"RENDER_MAX_SIDE": "512"}).render_max_side == 512
    assert Settings.from_env({"RENDER_MAX_SIDE": "0"}).render_max_side == 0
    with pytest.raises(ValueError, match="RENDER_MAX_SIDE"):
        Settings.from_env({"RENDER_MAX_SIDE": "-1"})


def test_lime_settings_reach_the_explanation_parameters() -> None:
    from gpu_service.inference.explain import LimeParams
    from gpu_service.settings import lime_params

    assert lime_params(Settings.from_env({})) == LimeParams()  # the core's defaults, untouched
    params = lime_params(
        Settings.from_env(
            {
                "LIME_NUM_SAMPLES": "300",
                "LIME_SEGMENTATION": "quickshift",
                "LIME_BATCH_SIZE": "64",
                "LIME_SEGMENTATION_MAX_SIDE": "224",
                "LIME_SEED": "7",
            }
        )
    )
    assert (params.num_samples, params.segmentation, params.batch_size) == (300, "quickshift", 64)
    assert (params.segmentation_max_side, params.seed) == (224, 7)


def test_settings_refuse_unsigned_webhook() -> None:
    with pytest.raises(ValueError, match="WEBHOOK_SECRET"):
        Settings.from_env({"WEBHOOK_URL": "http://x/hook"})


def test_explanation_methods_default_to_lime_keep_their_order_and_refuse_unknown_or_repeated() -> None:
    assert Settings.from_env({}).explanation_methods == ("lime",)
    assert Settings.from_env({"EXPLANATION_METHODS": " LIME, gradcam "}).explanation_methods == (
        "lime",
        "gradcam",
    )
    assert Settings.from_env({"EXPLANATION_METHODS": "gradcam"}).explanation_methods == ("gradcam",)
    for bad in ("shap", "lime,lime", ",", "lime,gradcam,occlusion"):
        with pytest.raises(ValueError, match="EXPLANATION_METHODS"):
            Settings.from_env({"EXPLANATION_METHODS": bad})
