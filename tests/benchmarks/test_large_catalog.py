"""`make bench-large`'s pieces on the tiny bundle: a grown catalog keeps every item distinct and
ranks through both paths, and the grown bundle answers over HTTP from a real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import large_catalog
from models.bundle import Bundle
from serving.engine import Engine
from serving.recommend import recommend


@pytest.mark.slow
def test_a_grown_catalog_is_served_and_timed_over_http(tiny_bundle: Path,
                                                        tmp_path: Path) -> None:
    base = Bundle.load(tiny_bundle)
    size = len(base.item_vocab) + 500
    big, index = large_catalog.grown(base, size, seed=0)
    assert len(big.item_vocab) == index.n_items == size
    assert len(np.unique(big.item_vectors.round(5), axis=0)) == size   # no two the same point
    asks = large_catalog.requests(big, 12, seed=0)
    for threshold in (large_catalog.NEVER, 0):   # full scoring, two-stage
        answer = recommend(Engine(big, index, two_stage_from=threshold), asks[0])
        assert len(answer.items) == 10
    timed = large_catalog.http_latency(big, asks, tmp_path)
    assert timed["requests"] == len(asks) and timed["workers"] >= 1
    assert 0 < timed["p50_ms"] <= timed["p99_ms"]
    assert Bundle.load(tmp_path / "bundle").item_vocab == big.item_vocab   # what was served
