"""Train/serve parity: a shopper's history encoded for training (``training.data`` windows) and
for serving (``features.history`` + ``models.inputs.history_batch``), both through
``models.inputs.encode_positions``, gives the user tower the same tensors and so the same user
vector, on the embedded shop's real timelines."""

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
from models.scoring import TwoTowerRecommender
from models.two_tower import TwoTower, TwoTowerConfig
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


@pytest.mark.parametrize("encoder", ["pooling", "transformer"])
def test_training_and_serving_encode_a_history_alike(shop, encoder: str) -> None:
    """The same tensors, and the same user vector: training's at the window's last position
    (every position encoded, the newest item's vector added as the training pass adds it),
    serving's of the last position alone, as the service and the index builder get it."""
    events, vocab = shop
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=len(vocab), dim=16, history_len=L,
                                    encoder=encoder)).eval()
    assert model.cfg.newest_item   # the default: the newest item's vector is part of both
    with torch.no_grad():
        item_vectors = model.item_embed(torch.arange(len(vocab)))
    towers = TwoTowerRecommender(model, item_vectors.numpy())
    checked = 0
    for user in shoppers(events):
        mine = events[events["user_id"] == user]
        # Training: the window whose last position predicts the shopper's last event.
        win = make_windows(mine, vocab, L)
        batch = collate(win, np.array([0]))
        trained = batch.inputs
        # Serving: the history before that event, as of the moment it happened.
        target_time = mine["timestamp"].iloc[-1]
        history = build_histories(mine.iloc[:-1], vocab, max_len=L, now=target_time)
        served = history_batch(history, L).inputs
        # The same tensors, position by position (training trims the window's left padding).
        width = trained.items.shape[1]
        for name in ("items", "events", "gaps", "mask"):
            torch.testing.assert_close(getattr(served, name)[:, -width:],
                                       getattr(trained, name), equal_nan=True, msg=name)
        assert not served.mask[:, :-width].any()
        assert torch.isfinite(served.gaps[served.mask]).all()
        with torch.no_grad():
            at_training = model.with_newest_item(
                model.user_embed(*trained, all_positions=True), item_vectors[trained.items],
                trained.mask)[0, -1]
        at_serving = torch.from_numpy(towers.user_vectors(history)[0])
        torch.testing.assert_close(at_serving, at_training, rtol=1e-5, atol=1e-5)
        checked += 1
    assert checked >= 25
