"""serving/engine.py: the per-request history fast path (numpy) builds exactly what the general
path (``session_frame`` + ``Bundle.user_histories``, pandas) builds, on the realistic request
mix of the serving benchmark."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import benchmarks.serve as bench
from benchmarks.serve_requests import build_requests
from serving.api import RecommendRequest
from serving.engine import Engine, load_engine, session_histories
from serving.recommend import recommend, session_frame


def _reference(engine: Engine, request: RecommendRequest):
    """The general path: session_frame + Bundle.user_histories."""
    session = session_frame(request.user_id, request.recent_events, engine.now)
    now = engine.now
    if session["timestamp"].notna().any():
        latest = session["timestamp"].max() + pd.Timedelta(milliseconds=1)
        now = latest if now is None else max(now, latest)
    hist = engine.bundle.user_histories([request.user_id], extra_events=session, now=now)
    return hist, engine.bundle.item_vocab.lookup(session["item_id"])


def _requests(engine: Engine) -> list[RecommendRequest]:
    cfg = bench.ServeBenchConfig(distinct=150, seed=3)
    bodies = [json.loads(b) for b in build_requests(engine, cfg)["recommend"].bodies]
    rng = np.random.default_rng(0)
    ids = engine.ids
    for i, body in enumerate(bodies):
        events = body.setdefault("recent_events", [])
        if i % 3 == 0:
            events.append({"item_id": str(ids[rng.integers(len(ids))]), "event": "purchase"})
        if i % 4 == 0:
            events.append({"item_id": "no-such-item", "event": "view"})
        if i % 5 == 0:
            body["exclude_items"] = [str(ids[rng.integers(len(ids))]), "no-such-item"]
        if i % 9 == 0:   # longer than the history: only the last L count
            events.extend([{"item_id": str(ids[1]), "event": "view"}] * 55)
    return [RecommendRequest(**body) for body in bodies]


@pytest.mark.slow
@pytest.mark.parametrize("timed", [True, False], ids=["with-time", "without-time"])
def test_fast_histories_are_the_general_paths(tiny_bundle: Path, timed: bool) -> None:
    """``session_histories`` (numpy) builds exactly what ``session_frame`` +
    ``Bundle.user_histories`` (pandas) build, with and without timestamps in the data."""
    engine = load_engine(str(tiny_bundle))
    if not timed:   # data without time (e.g. the Amazon files): every timestamp NaT
        h = engine.bundle.histories
        bundle = replace(engine.bundle, histories=h.assign(timestamp=pd.Series(
            pd.NaT, index=h.index, dtype=h["timestamp"].dtype)))
        engine = Engine(bundle, engine.index, version=engine.version)
        assert engine.now is None
    assert engine.stored is not None
    checked = 0
    for request in _requests(engine):
        fast = session_histories(engine, request.user_id, request.recent_events)
        assert fast is not None
        hist, session_items = fast
        ref, ref_items = _reference(engine, request)
        for field in ("user_ids", "offsets", "item_idx", "event_code", "age_days", "steps_back"):
            a, b = getattr(hist, field), getattr(ref, field)
            assert a.dtype == b.dtype, field
            np.testing.assert_array_equal(a, b, err_msg=field)
        np.testing.assert_array_equal(session_items, ref_items)
        checked += len(hist.item_idx) > 0
    assert checked > 100
    # Events with their own timestamps take the general path.
    stamped = RecommendRequest(user_id="x", recent_events=[
        {"item_id": str(engine.ids[0]), "event": "view", "timestamp": "2030-01-01T00:00:00Z"}])
    assert session_histories(engine, stamped.user_id, stamped.recent_events) is None
    assert recommend(engine, stamped).strategy.startswith("session")
