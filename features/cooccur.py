""""Bought together" statistics for the also-bought endpoint.

Two items are bought together when the same shopper carted or bought both at most
``cooccur_days`` apart (and at most ``cooccur_neighbors`` cart/purchase events apart, which
bounds the work on heavy buyers; without timestamps only the second bound applies). A pair counts
once per shopper. The score is the cosine of the two items' buyer sets,
``c_ij / sqrt(c_i * c_j)``: a bestseller co-occurs with everything by chance, and the
denominator takes that back, so a printer's ink outranks the shop's top seller.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.config import FeatureConfig

INTENT_EVENTS = ("addtocart", "purchase")
COLUMNS = ("item_id", "other_item_id", "score", "pair_users", "rank")


def bought_together(events: pd.DataFrame, cfg: FeatureConfig) -> pd.DataFrame:
    """Top-M bought-together neighbours per item: item_id, other_item_id, score, pair_users, rank.

    ``events`` must be sorted per user oldest first. Rank starts at 1.
    """
    intent = events[events["event"].isin(INTENT_EVENTS)]
    if intent.empty:
        return _empty()
    user_code, _ = pd.factorize(intent["user_id"])
    item_code, item_ids = pd.factorize(intent["item_id"])
    ts = intent["timestamp"]
    has_time = bool(ts.notna().any())
    ts_ms = ts.astype("int64").to_numpy() if has_time else None
    window_ms = cfg.cooccur_days * 86_400_000

    left, right, owner = [], [], []
    n = len(intent)
    for d in range(1, min(cfg.cooccur_neighbors, n - 1) + 1):
        a = np.arange(n - d)
        b = a + d
        mask = (user_code[a] == user_code[b]) & (item_code[a] != item_code[b])
        if ts_ms is not None:
            mask &= (ts_ms[b] - ts_ms[a]) <= window_ms
        left.append(item_code[a][mask])
        right.append(item_code[b][mask])
        owner.append(user_code[a][mask])
    if not left or not sum(len(x) for x in left):
        return _empty()
    i = np.concatenate(left + right)
    j = np.concatenate(right + left)  # both directions: the statistic is symmetric
    u = np.concatenate(owner + owner)
    pairs = pd.DataFrame({"u": u, "i": i, "j": j}).drop_duplicates()
    pair_users = pairs.groupby(["i", "j"], sort=False).size().rename("pair_users").reset_index()
    pair_users = pair_users[pair_users["pair_users"] >= cfg.cooccur_min_count]
    if pair_users.empty:
        return _empty()
    buyers = pd.DataFrame({"u": user_code, "i": item_code}).drop_duplicates()
    item_users = np.bincount(buyers["i"].to_numpy(), minlength=len(item_ids)).astype(np.float64)
    ci = item_users[pair_users["i"].to_numpy()]
    cj = item_users[pair_users["j"].to_numpy()]
    pair_users["score"] = pair_users["pair_users"] / np.sqrt(ci * cj)
    pair_users["item_id"] = pd.array(np.asarray(item_ids)[pair_users["i"].to_numpy()],
                                     dtype="string")
    pair_users["other_item_id"] = pd.array(np.asarray(item_ids)[pair_users["j"].to_numpy()],
                                           dtype="string")
    ranked = pair_users.sort_values(["item_id", "score", "pair_users", "other_item_id"],
                                    ascending=[True, False, False, True], kind="stable")
    ranked["rank"] = ranked.groupby("item_id", sort=False).cumcount() + 1
    ranked = ranked[ranked["rank"] <= cfg.cooccur_top_m]
    out = ranked[list(COLUMNS)].reset_index(drop=True)
    out["pair_users"] = out["pair_users"].astype(np.int64)
    out["rank"] = out["rank"].astype(np.int64)
    return out


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"item_id": pd.Series([], dtype="string"),
                         "other_item_id": pd.Series([], dtype="string"),
                         "score": pd.Series([], dtype="float64"),
                         "pair_users": pd.Series([], dtype="int64"),
                         "rank": pd.Series([], dtype="int64")})
