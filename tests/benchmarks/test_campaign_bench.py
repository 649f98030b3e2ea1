"""benchmarks/campaign.py: the resampled many-shopper bundle and one measured campaign run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.campaign import resampled, run_campaign
from models.bundle import Bundle


@pytest.mark.slow
def test_a_resampled_bundle_is_exported_whole(tiny_bundle: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_CACHE", str(tmp_path / "cache"))
    model = resampled(tiny_bundle, 700, seed=1)
    source, grown = Bundle.load(tiny_bundle), Bundle.load(model)
    assert len(grown.histories) == 700 and grown.histories.user_ids[0] == "s00000000"
    # each new shopper's history is one of the source's, event for event
    first = grown.histories.items_of(0)
    assert any(np.array_equal(first, source.histories.items_of(i))
               for i in range(len(source.histories)))
    run = run_campaign(model, k=3, explain=False)
    assert run["shoppers"] == 700 and 700 < run["rows"] <= 2100
    assert run["peak_rss_mb"] > 50 and run["seconds"] > 0
