"""The LIME parameters the service's settings ask for (unset settings keep the inference core's defaults)."""

from __future__ import annotations

from dataclasses import replace

from gpu_service.explain import LimeParams
from gpu_service.settings import Settings


def lime_params(settings: Settings) -> LimeParams:
    params = LimeParams(
        num_samples=settings.lime_num_samples,
        num_features=settings.lime_num_features,
        seed=settings.lime_seed,
    )
    if settings.lime_segmentation:
        params = replace(params, segmentation=settings.lime_segmentation)
    if settings.lime_batch_size:
        params = replace(params, batch_size=settings.lime_batch_size)
    if settings.lime_segmentation_max_side:
        params = replace(params, segmentation_max_side=settings.lime_segmentation_max_side)
    if settings.lime_min_relative_weight is not None:
        params = replace(params, min_relative_weight=settings.lime_min_relative_weight)
    if settings.lime_target_stability is not None:  # 0: lime's fixed sampling
        params = replace(params, target_stability=settings.lime_target_stability or None)
    if params.target_stability is not None and settings.lime_max_samples:
        params = replace(params, num_samples=settings.lime_max_samples)
    return params
