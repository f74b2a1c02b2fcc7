"""The backfill job's sharding of a listing across tasks."""

from __future__ import annotations

import pytest

from gpu_service.job import parse_gs_prefix, shard_of

# -- settings ------------------------------------------------------------------------------


def test_shards_are_stable_and_cover_everything() -> None:
    names = [f"study/{i}.dcm" for i in range(300)]
    shards = [shard_of(n, 4) for n in names]
    assert shards == [shard_of(n, 4) for n in names]
    assert set(shards) == {0, 1, 2, 3} and min(shards.count(k) for k in range(4)) > 40
    assert all(shard_of(n, 1) == 0 for n in names)
    assert parse_gs_prefix("gs://b/some/prefix") == ("b", "some/prefix")
    assert parse_gs_prefix("gs://b") == ("b", "")
    with pytest.raises(ValueError):
        parse_gs_prefix("/local/path")
