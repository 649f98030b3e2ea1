"""`/recommend`, `make recommend-batch` and the MLflow pyfunc rank through one function
(``models.ranking.rank``): for the same shopper they return the same items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.pyfunc import recommend_frame
from models.ranking import MAX_K, PURCHASE
from serving.api import RecommendRequest
from serving.batch import BatchConfig, batch_recommend
from serving.engine import Engine
from serving.recommend import recommend
from tests.helpers import history_events


def shoppers(engine: Engine, n: int = 12) -> list[str]:
    """Stored shoppers, buyers first (their purchases must stay out everywhere)."""
    h = engine.bundle.histories
    bought = h.count(h.event_code == PURCHASE) > 0
    buyers, others = h.user_ids[bought], h.user_ids
    return list(dict.fromkeys([*buyers[: n // 2], *others[: n]]))[:n]


@pytest.mark.parametrize("k", [1, 10])
def test_http_batch_and_pyfunc_return_the_same_items(engine: Engine, k: int) -> None:
    users = [*shoppers(engine), "never-seen-shopper"]
    http = {u: [i.item_id for i in recommend(engine, RecommendRequest(user_id=u, k=k)).items]
            for u in users}
    frame = recommend_frame(engine, pd.DataFrame({"user_id": users, "k": [k] * len(users)}))
    pyfunc = frame.groupby("user_id", sort=False)["item_id"].agg(list).to_dict()
    # batch ranks each shopper from their events in DATA: here the bundle's stored events
    events = history_events(engine.bundle.histories, engine.ids)
    recs, _ = batch_recommend(engine, events, np.asarray(users, dtype=object),
                              BatchConfig(k=k))
    batch = recs.groupby("user_id", sort=False)["item_id"].agg(list).to_dict()
    for user in users:
        assert http[user] == pyfunc[user] == batch[user], user
        assert len(http[user]) == k


def test_pyfunc_leaves_purchases_out_and_caps_k(engine: Engine) -> None:
    user = shoppers(engine)[0]
    hist = engine.bundle.histories.of([user])
    mine = set(engine.ids[hist.item_idx[hist.event_code == PURCHASE]])
    assert mine
    frame = recommend_frame(engine, pd.DataFrame({"user_id": [user], "k": [50]}))
    assert len(frame) == 50 and not (set(frame["item_id"]) & mine)
    with pytest.raises(ValueError, match=f"1..{MAX_K}"):
        recommend_frame(engine, pd.DataFrame({"user_id": [user], "k": [MAX_K + 1]}))
