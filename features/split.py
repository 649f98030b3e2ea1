"""Train / validation / test splits and their evaluation targets, one protocol per kind of data.

Every event gets a ``fold``: train, valid or test. The model learns from the train fold; the
history a user brings to a validation target is their train events, to a test target their
train and valid events. Targets are (user_id, item_id) pairs that exist in the train fold.

- temporal (timestamps): test = the last N days, valid = the N days before. Target users had at
  least one event before the window and carted or bought in it; targets = the distinct items
  they carted or bought there.
- leave-one-out (no time): per user with >= 3 events, the last event is test, the one before
  valid; order is file order.
- predefined (a ``split`` column): train rows of every behaviour train; test purchases are the
  test targets; other test rows are dropped. Valid = one train purchase of a seeded sample of
  users, held out for early stopping.
- all (``SERVING_SPLIT``): every event is training data and nothing is held out: the refit of
  the served model on everything in the data, after the settings were chosen on the folds above.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.config import SERVING_SPLIT, FeatureConfig
from features.infra import DataError

FOLDS = ("train", "valid", "test")
FOLD_DTYPE = pd.CategoricalDtype(list(FOLDS))
DAY = pd.Timedelta(days=1)
PREDEFINED_VALID_USERS = 2000  # enough for a stable early-stopping signal, cheap to score


@dataclass(frozen=True)
class Split:
    protocol: str
    events: pd.DataFrame          # canonical events + ``fold``, sorted by (user_id, time, seq)
    targets: pd.DataFrame         # user_id, item_id, fold ('valid' | 'test')
    valid_start: pd.Timestamp | None = None
    test_start: pd.Timestamp | None = None
    test_days: float | None = None
    dropped_rows: int = 0         # predefined test rows that are not purchases

    def fold(self, name: str) -> pd.DataFrame:
        return self.events[self.events["fold"] == name]

    def history_for(self, fold: str) -> pd.DataFrame:
        """Events a user may use as input when predicting targets of ``fold``."""
        allowed = {"valid": ["train"], "test": ["train", "valid"]}[fold]
        return self.events[self.events["fold"].isin(allowed)]

    def sizes(self) -> dict[str, int]:
        counts = self.events["fold"].value_counts()
        out = {f"{f}_events": int(counts.get(f, 0)) for f in FOLDS}
        for f in ("valid", "test"):
            t = self.targets[self.targets["fold"] == f]
            out[f"{f}_users"] = int(t["user_id"].nunique())
            out[f"{f}_targets"] = len(t)
        return out


def sort_events(events: pd.DataFrame) -> pd.DataFrame:
    """Per user, oldest first; file order breaks ties (and is the only order without time)."""
    return events.sort_values(["user_id", "timestamp", "seq"], kind="stable",
                              na_position="first").reset_index(drop=True)


def choose_protocol(events: pd.DataFrame, has_time: bool, requested: str) -> str:
    if requested != "auto":
        return requested
    if "split" in events.columns:
        return "predefined"
    return "temporal" if has_time else "leave-one-out"


def auto_window_days(events: pd.DataFrame) -> float:
    span = (events["timestamp"].max() - events["timestamp"].min()) / DAY
    return float(min(14.0, max(1.0, round(span / 5))))


def make_split(events: pd.DataFrame, has_time: bool, cfg: FeatureConfig) -> Split:
    protocol = choose_protocol(events, has_time, cfg.split)
    events = sort_events(events)
    if protocol == SERVING_SPLIT:
        return _all(events)
    if protocol == "temporal":
        if not has_time:
            raise DataError("split=temporal needs timestamps; this data has none "
                            "(use split=leave-one-out, or a split column)")
        return _temporal(events, cfg)
    if protocol == "leave-one-out":
        return _leave_one_out(events)
    if "split" not in events.columns:
        raise DataError("split=predefined needs a 'split' column (train/test)")
    return _predefined(events, cfg)


def _targets(rows: pd.DataFrame, fold: str, train_items: pd.Index) -> pd.DataFrame:
    rows = rows[rows["item_id"].isin(train_items)]
    out = rows[["user_id", "item_id"]].drop_duplicates().reset_index(drop=True)
    out["fold"] = pd.Categorical([fold] * len(out), dtype=pd.CategoricalDtype(["valid", "test"]))
    return out


def _temporal(events: pd.DataFrame, cfg: FeatureConfig) -> Split:
    test_days = cfg.test_days or auto_window_days(events)
    valid_days = cfg.valid_days or test_days
    # +1 ms: with daily dates, "the last 2 days" must mean the last two date values.
    end = events["timestamp"].max() + pd.Timedelta(milliseconds=1)
    test_start = end - test_days * DAY
    valid_start = test_start - valid_days * DAY
    ts = events["timestamp"]
    fold = np.where(ts >= test_start, "test", np.where(ts >= valid_start, "valid", "train"))
    events = events.assign(fold=pd.Categorical(fold, dtype=FOLD_DTYPE))
    train = events[events["fold"] == "train"]
    if train.empty:
        raise DataError(f"temporal split: no events before {valid_start} "
                        f"(test {test_days} days + valid {valid_days} days cover the whole log)")
    train_items = pd.Index(train["item_id"].unique())
    is_intent = events["event"].isin(["addtocart", "purchase"])
    parts = []
    for name, before in (("valid", ["train"]), ("test", ["train", "valid"])):
        seen_users = events.loc[events["fold"].isin(before), "user_id"].unique()
        rows = events[(events["fold"] == name) & is_intent & events["user_id"].isin(seen_users)]
        parts.append(_targets(rows, name, train_items))
    return Split("temporal", events, pd.concat(parts, ignore_index=True), valid_start,
                 test_start, test_days)


def _all(events: pd.DataFrame) -> Split:
    """Every event in the train fold, no targets: the data the served model is refitted on."""
    events = events.assign(fold=pd.Categorical(["train"] * len(events), dtype=FOLD_DTYPE))
    empty = _targets(events.iloc[:0], "test", pd.Index([]))
    return Split(SERVING_SPLIT, events, empty)


def _leave_one_out(events: pd.DataFrame) -> Split:
    per_user = events.groupby("user_id", sort=False, observed=True)
    from_end = per_user.cumcount(ascending=False).to_numpy()
    n_events = per_user["item_id"].transform("size").to_numpy()
    eligible = n_events >= 3
    fold = np.where(eligible & (from_end == 0), "test",
                    np.where(eligible & (from_end == 1), "valid", "train"))
    events = events.assign(fold=pd.Categorical(fold, dtype=FOLD_DTYPE))
    train_items = pd.Index(events.loc[events["fold"] == "train", "item_id"].unique())
    targets = pd.concat([_targets(events[events["fold"] == f], f, train_items)
                         for f in ("valid", "test")], ignore_index=True)
    return Split("leave-one-out", events, targets)


def _predefined(events: pd.DataFrame, cfg: FeatureConfig) -> Split:
    is_test = (events["split"] == "test").to_numpy()
    keep = ~is_test | (events["event"] == "purchase").to_numpy()
    dropped = int((~keep).sum())
    events = events[keep].reset_index(drop=True)
    is_test = (events["split"] == "test").to_numpy()
    fold = np.where(is_test, "test", "train").astype(object)
    # Valid: one train purchase for a seeded sample of users who have at least two.
    rng = np.random.default_rng(cfg.seed)
    buys = events.index[(~is_test) & (events["event"] == "purchase").to_numpy()]
    buy_users = events.loc[buys, "user_id"]
    counts = buy_users.value_counts()
    candidates = np.sort(counts.index[counts >= 2].to_numpy(dtype=object))
    chosen = set(rng.choice(candidates, size=min(PREDEFINED_VALID_USERS, len(candidates)),
                            replace=False)) if len(candidates) else set()
    pool = pd.Series(buys, index=buy_users.to_numpy())
    pool = pool[pool.index.isin(chosen)]
    # A seeded random key per row, then the first per user: vectorized "pick one at random".
    keys = rng.random(len(pool))
    picked = pd.DataFrame({"user": pool.index, "row": pool.to_numpy(), "key": keys})
    picked = picked.sort_values(["user", "key"]).drop_duplicates("user")["row"].to_numpy()
    fold[picked] = "valid"
    events = events.assign(fold=pd.Categorical(fold, dtype=FOLD_DTYPE))
    train_items = pd.Index(events.loc[events["fold"] == "train", "item_id"].unique())
    targets = pd.concat([_targets(events[events["fold"] == f], f, train_items)
                         for f in ("valid", "test")], ignore_index=True)
    return Split("predefined", events, targets, dropped_rows=dropped)
