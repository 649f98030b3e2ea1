"""serving/engine.py: a request's history (the stored history with the session events appended,
``features.history.append_events``) is exactly what ``build_histories`` builds from the stored
events plus the session's events as rows, on the realistic request mix of the serving benchmark,
with and without time in the data and with session events that carry their own timestamps."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import benchmarks.serve as bench
from benchmarks.serve_requests import build_requests
from features.history import NAT_MS, build_histories
from features.schema import EVENT_DTYPE, TIMESTAMP_DTYPE
from features.split import sort_events
from serving.api import RecommendRequest
from serving.engine import Engine, load_engine, session_history
from serving.recommend import recommend
from tests.helpers import history_events


def _reference(engine: Engine, request: RecommendRequest):
    """The pandas way: stored events plus the session as rows (events without a timestamp 1 ms
    apart from the end of the data, in list order), through ``build_histories``."""
    bundle, now = engine.bundle, engine.bundle.now
    stamps = []
    for i, event in enumerate(request.recent_events):
        if event.timestamp is not None:
            ts = pd.Timestamp(event.timestamp)
            stamps.append(ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC))
        else:
            stamps.append(now + pd.Timedelta(milliseconds=i) if now is not None else pd.NaT)
    session = pd.DataFrame({
        "user_id": pd.array([request.user_id] * len(stamps), dtype="string"),
        "item_id": pd.array([e.item_id for e in request.recent_events], dtype="string"),
        "event": pd.Categorical([e.event for e in request.recent_events], dtype=EVENT_DTYPE),
        "timestamp": pd.Series(pd.to_datetime(stamps, utc=True), dtype=TIMESTAMP_DTYPE)})
    stored = history_events(bundle.histories.of([request.user_id]), bundle.item_vocab.ids)
    events = pd.concat([stored.drop(columns="seq"), session], ignore_index=True)
    events = sort_events(events.assign(seq=np.arange(len(events))))
    if session["timestamp"].notna().any():
        latest = session["timestamp"].max() + pd.Timedelta(milliseconds=1)
        now = latest if now is None else max(now, latest)
    hist = build_histories(events, bundle.item_vocab, max_len=bundle.model.cfg.history_len,
                           users=np.array([request.user_id], dtype=object), now=now)
    return hist, bundle.item_vocab.lookup(session["item_id"])


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
        if i % 7 == 0:   # own timestamps: one long ago (merged into the stored events), one later
            events.append({"item_id": str(ids[2]), "event": "view",
                           "timestamp": "2001-02-03T04:05:06Z"})
            events.append({"item_id": str(ids[3]), "event": "addtocart",
                           "timestamp": "2031-01-01T00:00:00.250"})
        if i % 9 == 0:   # longer than the history: only the last L count
            events.extend([{"item_id": str(ids[1]), "event": "view"}] * 55)
    return [RecommendRequest(**body) for body in bodies]


@pytest.mark.slow
@pytest.mark.parametrize("timed", [True, False], ids=["with-time", "without-time"])
def test_request_history_is_what_build_histories_builds(tiny_bundle: Path, timed: bool) -> None:
    engine = load_engine(str(tiny_bundle))
    if not timed:   # data without time (e.g. the Amazon files): every timestamp NaT
        h = engine.bundle.histories
        stored = replace(h, ts_ms=np.full_like(h.ts_ms, NAT_MS),
                         age_days=np.full_like(h.age_days, np.nan))
        engine = Engine(replace(engine.bundle, histories=stored, now_ms=None), engine.index,
                        version=engine.version)
        assert engine.now_ms is None
    checked = stamped = 0
    for request in _requests(engine):
        shopper = session_history(engine, request.user_id, request.recent_events)
        hist, session_items = shopper.histories, shopper.session_items
        ref, ref_items = _reference(engine, request)
        for field in ("user_ids", "offsets", "item_idx", "event_code", "age_days", "steps_back",
                      "ts_ms"):
            a, b = getattr(hist, field), getattr(ref, field)
            assert a.dtype == b.dtype, field
            np.testing.assert_array_equal(a, b, err_msg=field)
        np.testing.assert_array_equal(session_items, ref_items)
        checked += len(hist.item_idx) > 0
        stamped += any(e.timestamp is not None for e in request.recent_events)
    assert checked > 100 and stamped > 10
    # A first visit with a timestamped event is ranked from it.
    first = RecommendRequest(user_id="x", recent_events=[
        {"item_id": str(engine.ids[0]), "event": "view", "timestamp": "2030-01-01T00:00:00Z"}])
    assert recommend(engine, first).strategy.startswith("session")
