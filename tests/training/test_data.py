"""Training windows: next-item targets, right alignment, batching and per-epoch samples."""

from __future__ import annotations

import numpy as np

from features.vocab import Vocabulary
from tests.helpers import make_events
from training.data import (
    collate,
    length_bucketed_batches,
    make_windows,
    sample_windows,
    window_lengths,
)


def timeline():
    rows = [("u1", "a", "view", "2024-01-01 10:00"), ("u1", "b", "addtocart", "2024-01-01 12:00"),
            ("u1", "c", "purchase", "2024-01-02 12:00"), ("u2", "c", "view", "2024-01-03 00:00"),
            ("u2", "a", "view", "2024-01-03 01:00"), ("u3", "b", "view", "2024-01-04 00:00")]
    events = make_events(rows)
    return events, Vocabulary.fit(events["item_id"])


def test_next_item_targets_right_aligned() -> None:
    events, vocab = timeline()
    a, b, c = vocab.lookup(["a", "b", "c"])
    win = make_windows(events, vocab, history_len=3)
    assert len(win) == 2  # u3 has one event: nothing to predict
    # u1: inputs a, b -> targets b, c, right-aligned in a window of 3.
    assert win.inputs[0].tolist() == [-1, a, b] and win.targets[0].tolist() == [-1, b, c]
    assert win.target_events[0, 1:].tolist() == [1, 2]
    gaps = collate(win, np.array([0])).inputs.gaps[0]   # trimmed to the 2 real positions
    assert np.allclose(gaps, [2.0, 24.0])  # hours from each input to its target
    assert win.inputs[1].tolist() == [-1, -1, c] and win.targets[1].tolist() == [-1, -1, a]
    assert win.n_examples == 3


def test_long_timelines_split_into_windows() -> None:
    rows = [("u1", f"i{i}", "view", f"2024-01-01 {i:02d}:00") for i in range(7)]
    events = make_events(rows)
    vocab = Vocabulary.fit(events["item_id"])
    win = make_windows(events, vocab, history_len=4)
    assert len(win) == 2 and win.n_examples == 6
    # The newest targets fill the user's first window; the older ones the next, right-aligned.
    newest = vocab.lookup([f"i{i}" for i in range(3, 7)])
    assert win.targets[0].tolist() == newest.tolist()
    assert win.inputs[0].tolist() == vocab.lookup([f"i{i}" for i in range(2, 6)]).tolist()
    assert win.targets[1].tolist() == [-1, -1, *vocab.lookup(["i1", "i2"]).tolist()]


def test_collate_trims_padding_and_pairs_see_only_the_past() -> None:
    events, vocab = timeline()
    win = make_windows(events, vocab, history_len=10)
    batch = collate(win, np.array([0, 1]))
    assert batch.inputs.items.shape == (2, 2)  # trimmed to the longest real window
    assert batch.targets.numel() == 3
    # Interest pairs: each target position with the inputs at or before it, same window only.
    assert batch.pair_steps.min() >= 0
    assert len(batch.pair_query) == 3 + 1 - 0  # u1: (p1,j1),(p2,j1),(p2,j2); u2: (p1,j1)


def test_bucketed_batches_cover_every_window_once() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for u in range(60):
        for i in range(1 + u % 13):
            rows.append((f"u{u}", f"i{(u + i) % 17}", "view", f"2024-01-01 {i:02d}:00"))
    events = make_events(rows)
    vocab = Vocabulary.fit(events["item_id"])
    win = make_windows(events, vocab, history_len=8)
    batches = length_bucketed_batches(win, 32, rng)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(win)))
    lengths = window_lengths(win)
    for idx in batches:
        assert len(idx) == 1 or len(idx) * lengths[idx].max() <= 32


def test_sample_windows_bounds_examples_per_epoch() -> None:
    rows = [(f"u{u}", f"i{(7 * u + i) % 41}", "view", f"2024-01-01 {i:02d}:00")
            for u in range(50) for i in range(5)]
    events = make_events(rows)
    vocab = Vocabulary.fit(events["item_id"])
    win = make_windows(events, vocab, history_len=5)
    assert win.n_examples == 200
    assert sample_windows(win, 0, np.random.default_rng(0)) is win
    assert sample_windows(win, 500, np.random.default_rng(0)) is win
    part = sample_windows(win, 60, np.random.default_rng(0))
    assert 60 <= part.n_examples <= 64  # whole windows of 4 targets
    other = sample_windows(win, 60, np.random.default_rng(1))
    assert not np.array_equal(part.inputs, other.inputs)  # a fresh sample per seed
