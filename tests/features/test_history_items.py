import numpy as np
import pandas as pd

from features.history import NAT_MS, append_events, build_histories, histories_from_rows
from features.item_features import item_features
from features.split import sort_events
from features.vocab import Vocabulary
from tests.helpers import make_events


def _events():
    rows = [
        ("u1", "a", "view", "2024-01-01 00:00"), ("u1", "b", "addtocart", "2024-01-02 00:00"),
        ("u1", "zz", "view", "2024-01-03 00:00"),  # unknown to the vocabulary: dropped
        ("u1", "c", "purchase", "2024-01-04 00:00"),
        ("u1", "a", "view", "2024-01-09 00:00"),  # after the cut below
        ("u2", "c", "view", "2024-01-05 00:00"),
    ]
    return sort_events(make_events(rows))


def test_history_keeps_the_last_L_known_events_before_the_cut():
    vocab = Vocabulary.fit(["a", "b", "c"])
    cut = pd.Timestamp("2024-01-05 00:00", tz="UTC")
    hist = build_histories(_events(), vocab, max_len=2, cut=cut)
    pos = hist.positions
    u1 = pos["u1"]
    assert list(vocab.id_of(hist.items_of(u1))) == ["b", "c"]  # oldest first, L = 2
    start, end = hist.offsets[u1], hist.offsets[u1 + 1]
    assert list(hist.event_code[start:end]) == [1, 2]
    np.testing.assert_allclose(hist.age_days[start:end], [3.0, 1.0])
    assert list(hist.steps_back[start:end]) == [1, 0]
    assert "u2" not in pos  # u2's only event is at the cut


def test_history_order_follows_users_and_unknown_users_are_empty():
    vocab = Vocabulary.fit(["a", "b", "c"])
    hist = build_histories(_events(), vocab, max_len=10, users=np.array(["u2", "ghost", "u1"]))
    assert list(hist.user_ids) == ["u2", "ghost", "u1"]
    assert list(hist.lengths) == [1, 0, 4]
    picked = hist.select(np.array([2, 0]))
    assert list(picked.user_ids) == ["u1", "u2"]
    assert list(vocab.id_of(picked.items_of(1))) == ["c"]


def test_history_without_time_has_nan_ages_and_positions():
    events = make_events([("u1", "a", "purchase"), ("u1", "b", "purchase")], with_time=False)
    hist = build_histories(events, Vocabulary.fit(["a", "b"]), max_len=5)
    assert np.isnan(hist.age_days).all()
    assert list(hist.steps_back) == [1, 0]


def _ms(text: str) -> int:
    return pd.Timestamp(text, tz="UTC").value // 1_000_000


def test_append_events_merges_by_time_and_keeps_the_last_L_known():
    vocab = Vocabulary.fit(["a", "b", "c"])
    a, b, c = vocab.lookup(["a", "b", "c"])
    stored = build_histories(_events(), vocab, max_len=3, cut=pd.Timestamp("2024-01-05", tz="UTC"))
    now = _ms("2024-01-05 00:00")
    # a cart of c later than everything, an unknown item, and a view of b older than all stored
    hist = append_events(stored, "u1", np.array([c, -1, b]), np.array([1, 0, 0]),
                         np.array([now, now + 1, _ms("2023-12-31 00:00")]), max_len=3,
                         now_ms=now)
    assert hist.user_ids.tolist() == ["u1"] and hist.lengths.tolist() == [3]
    # stored a(01-01) b(01-02) c(01-04) + b(12-31) c(01-05): the last three known, oldest first
    assert hist.item_idx.tolist() == [b, c, c] and hist.event_code.tolist() == [1, 2, 1]
    assert hist.steps_back.tolist() == [2, 1, 0]
    # ages from 1 ms after the newest appended event (later than now)
    np.testing.assert_allclose(hist.age_days, [3.0, 1.0, 0.0], atol=1e-6)
    # a shopper nobody stored: only the appended events; without any time, ages are NaN
    new = append_events(stored, "nobody", np.array([a]), np.array([0]),
                        np.array([NAT_MS]), max_len=3, now_ms=None)
    assert new.item_idx.tolist() == [a] and np.isnan(new.age_days).all()


def test_item_features_popularity_categories_and_availability():
    events = _events()
    vocab = Vocabulary.fit(["a", "b", "c", "d"])
    items = pd.DataFrame({"item_id": pd.array(["a", "b", "c"], dtype="string"),
                          "category_id": pd.array(["x", "y", "x"], dtype="string"),
                          "available": [True, False, True]})
    feats = item_features(events, items, vocab, popularity_days=7,
                          cut=pd.Timestamp("2024-01-10", tz="UTC"))
    f = feats.set_index("item_id")
    assert list(feats["item_idx"]) == [0, 1, 2, 3]
    assert f.loc["a", "category_idx"] == f.loc["c", "category_idx"] != f.loc["b", "category_idx"]
    assert f.loc["d", "category_idx"] == -1 and pd.isna(f.loc["d", "category_id"])
    assert list(f["available"]) == [True, False, True, True]  # no metadata: available
    # window = Jan 3..Jan 10: a (Jan 9 view), c (Jan 4 purchase, Jan 5 view)
    assert f.loc["a", "popularity"] == 1 and f.loc["b", "popularity"] == 0
    assert f.loc["c", "recent_purchases"] == 1 and f.loc["c", "recent_views"] == 1
    assert f.loc["a", "total_events"] == 2


def test_keep_drops_events_and_counts_steps_back_anew() -> None:
    hist = histories_from_rows(np.array(["a", "a", "a", "b", "b"], dtype=object),
                               np.array([1, 2, 3, 4, 5]), np.array([0, 1, 2, 0, 0], dtype=np.int8),
                               np.array([10, 20, 30, 40, 50]), now_ms=100)
    kept = hist.keep(np.array([True, False, True, False, False]))
    assert kept.user_ids.tolist() == ["a", "b"] and kept.offsets.tolist() == [0, 2, 2]
    assert kept.item_idx.tolist() == [1, 3] and kept.event_code.tolist() == [0, 2]
    assert kept.steps_back.tolist() == [1, 0] and kept.ts_ms.tolist() == [10, 30]
