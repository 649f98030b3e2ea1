"""Train/serve parity: a shopper's history encoded for training (``training.data`` windows) and
for serving (``features.history`` + ``models.inputs``) gives the user tower the same inputs and
so the same user vector, on the embedded shop's real timelines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from features.history import build_histories
from features.readers import read_events
from features.spec import parse_spec
from features.split import sort_events
from features.vocab import Vocabulary
from models.inputs import history_batch
from models.two_tower import GAP_BUCKETS, TwoTower, TwoTowerConfig, log_bucket
from training.data import collate, make_windows

L = 8


@pytest.fixture(scope="module")
def shop() -> tuple[pd.DataFrame, Vocabulary]:
    events = sort_events(read_events(parse_spec("synthetic")).events)
    return events, Vocabulary.fit(events["item_id"])


def shoppers(events: pd.DataFrame, n: int = 25) -> list[str]:
    """Shoppers with more events than L (windows wrap) and a few with fewer."""
    sizes = events.groupby("user_id", observed=True).size()
    long_ = sizes[sizes > L + 3].index[:n].tolist()
    short = sizes[(sizes >= 2) & (sizes <= L)].index[:5].tolist()
    return [str(u) for u in long_ + short]


def test_training_and_serving_encode_a_history_alike(shop) -> None:
    events, vocab = shop
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=len(vocab), dim=16, history_len=L)).eval()
    checked = 0
    for user in shoppers(events):
        mine = events[events["user_id"] == user]
        # Training: the window whose last position predicts the shopper's last event.
        win = make_windows(mine, vocab, L)
        batch = collate(win, np.array([0]))
        trained_items = batch.items[0][batch.mask[0]]
        # Serving: the history before that event, as of the moment it happened.
        target_time = mine["timestamp"].iloc[-1]
        history = build_histories(mine.iloc[:-1], vocab, max_len=L, now=target_time)
        served = history_batch(history, L)
        served_items = served.items[0][served.mask[0]]
        assert served_items.tolist() == trained_items.tolist(), user
        assert served.events[0][served.mask[0]].tolist() == \
            batch.events[0][batch.mask[0]].tolist(), user
        # gaps: hours to the next event (to the predicted one for the newest), same buckets
        trained_gaps = batch.gaps[0][batch.mask[0]]
        served_gaps = served.gaps[0][served.mask[0]]
        np.testing.assert_allclose(served_gaps.numpy(), trained_gaps.numpy(), rtol=1e-4,
                                   atol=1e-3)
        assert log_bucket(served_gaps, GAP_BUCKETS).tolist() == \
            log_bucket(trained_gaps, GAP_BUCKETS).tolist(), user
        with torch.no_grad():
            at_training = model.user_embed(batch.items, batch.events, batch.gaps, batch.mask,
                                           all_positions=True)[0, -1]
            at_serving = model.user_embed(served.items, served.events, served.gaps,
                                          served.mask)[0]
        torch.testing.assert_close(at_serving, at_training, rtol=1e-5, atol=1e-5)
        checked += 1
    assert checked >= 25
