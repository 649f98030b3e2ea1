"""The embedded synthetic shop: events and items in canonical form, with no download.

``generate(size, seed)`` returns an ``EventData`` like any reader; ``generate_with_truth`` also
returns the planted structure (``ShopTruth``) so tests and the demo can check that a model finds
it. What is planted:

* a category tree (``features.synthetic_catalog``) with Zipf-like item popularity;
* complement pairs (printer -> its ink, laptop -> mouse, ...): a buyer of the anchor buys its
  complement in the same session or a follow-up session days later with ``complement_prob``;
* shoppers with a few weighted leaf-category tastes, one of which may switch to another leaf
  part-way (drift); a small per-taste "interest set" of items they keep coming back to, which
  gives re-views across sessions and purchases of items seen in an earlier session;
* a view -> add-to-cart -> purchase funnel per session (carts right after the view, purchases
  at checkout at the end of the session);
* first-time visitors active only in the final 14 days, and items that go unavailable part-way.

Everything is drawn as whole numpy arrays (no per-user or per-session Python loops) so ``large``
(> 1M events, > 100k items) builds in seconds. The time window is fixed, so output depends only
on (size, seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.schema import EVENT_DTYPE, TIMESTAMP_DTYPE, EventData
from features.synthetic_catalog import LEAF_NAMES, PARENT_NAMES, build_catalog

SECOND, MINUTE, HOUR, DAY = 1_000, 60_000, 3_600_000, 86_400_000
# Part of the data fingerprint (features.pipeline): bump on any change to what is generated, so
# processed-data caches of the old generator are not reused.
VERSION = "1"
WINDOW_END = pd.Timestamp("2026-07-01", tz="UTC")  # exclusive: the last day is 2026-06-30
WINDOW_DAYS = 90
NEW_USER_DAYS = 14
SESSION_GAP = 30 * MINUTE   # a shopper's sessions are at least this far apart (usual cut-off)
TASTES = 3                  # leaf-category tastes per shopper
INTEREST_PER_TASTE = 2      # items per taste a shopper keeps returning to

# Weekly and daily rhythm of session starts (Monday first; hours in UTC).
_WEEKDAY = np.array([1.0, 0.95, 0.95, 1.0, 1.05, 1.2, 1.3])
_HOUR = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0,
                  1.1, 1.0, 0.95, 0.95, 1.0, 1.1, 1.3, 1.5, 1.6, 1.5, 1.1, 0.6])


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int
    n_items: int
    sessions_per_user: float = 5.0     # mean for returning shoppers (heavy-tailed)
    views_per_session: float = 6.0     # mean; geometric
    new_user_share: float = 0.08       # first-time visitors, active only in the final 14 days
    drift_share: float = 0.4           # returning shoppers whose one taste switches leaf
    unavailable_share: float = 0.05    # items (outside complement pairs) that go unavailable
    pair_share: float = 0.08           # share of items that are the anchor of a complement pair
    complement_prob: float = 0.65      # P(buy complement | bought anchor)
    complement_same_session: float = 0.5
    p_interest: float = 0.3            # a view re-visits the shopper's interest set
    p_explore: float = 0.08            # a view ignores tastes (popularity over the catalog)
    p_cart_interest: float = 0.055     # interest items convert better: seen before, wanted
    p_cart_fresh: float = 0.019
    p_cart_explore: float = 0.008
    p_buy_given_cart: float = 0.5
    zipf_exponent: float = 1.0


SIZES: dict[str, SyntheticConfig] = {
    "small": SyntheticConfig(n_users=2_500, n_items=1_500),
    "medium": SyntheticConfig(n_users=25_000, n_items=15_000),
    "large": SyntheticConfig(n_users=60_000, n_items=120_000),
}


@dataclass(frozen=True)
class ShopTruth:
    """The planted structure, in the same string ids as the generated tables."""

    config: SyntheticConfig
    complements: dict[str, str]                  # anchor item_id -> its complement item_id
    printer_item: str                            # a popular printer ...
    printer_ink: str                             # ... and its ink
    new_users: frozenset[str]                    # users whose first event is in the last 14 days
    unavailable_items: dict[str, pd.Timestamp]   # item_id -> when it went unavailable
    tastes: pd.DataFrame   # user_id, category_id, weight, start, end (a drifted taste: 2 rows)
    window_start: pd.Timestamp
    window_end: pd.Timestamp                     # exclusive
    new_user_cutoff: pd.Timestamp


def generate(size: str = "small", seed: int = 0) -> EventData:
    return generate_with_truth(size, seed)[0]


def _strings(names: list[str] | np.ndarray, codes: np.ndarray) -> pd.Series:
    # Take from a small array of distinct strings: far faster than formatting every row.
    return pd.Series(pd.array(list(names), dtype="string").take(codes))


def _timestamps(ms: np.ndarray) -> pd.Series:
    return pd.Series(ms.astype("datetime64[ms]")).dt.tz_localize("UTC").astype(TIMESTAMP_DTYPE)


class _Rhythm:
    """Draws session start times in [lo, hi) following the weekly and daily rhythm."""

    def __init__(self, start: pd.Timestamp, days: int) -> None:
        h = np.arange(days * 24)
        weight = _WEEKDAY[(start.weekday() + h // 24) % 7] * _HOUR[h % 24]
        self.edges = (np.arange(days * 24 + 1) * HOUR).astype(np.float64)
        self.cum = np.concatenate([[0.0], np.cumsum(weight)])

    def draw(self, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        # Inverse CDF of a piecewise-constant hourly density, restricted to [lo, hi).
        f_lo, f_hi = np.interp(lo, self.edges, self.cum), np.interp(hi, self.edges, self.cum)
        u = f_lo + rng.random(len(lo)) * (f_hi - f_lo)
        return np.interp(u, self.cum, self.edges).astype(np.int64)


def generate_with_truth(size: str = "small", seed: int = 0) -> tuple[EventData, ShopTruth]:
    if size not in SIZES:
        raise ValueError(f"synthetic size must be one of {', '.join(SIZES)}, got {size!r}")
    cfg = SIZES[size]
    rng = np.random.default_rng(seed)
    cat = build_catalog(rng, cfg.n_items, cfg.pair_share, cfg.zipf_exponent)
    # Times are ms relative to the window start until the very end.
    start = WINDOW_END - pd.Timedelta(days=WINDOW_DAYS)
    span, cutoff = WINDOW_DAYS * DAY, (WINDOW_DAYS - NEW_USER_DAYS) * DAY
    rhythm = _Rhythm(start, WINDOW_DAYS)

    # --- shoppers: tastes (distinct leaves, weighted), drift, interest sets, activity ---------
    n_users, k = cfg.n_users, TASTES
    is_new = rng.random(n_users) < cfg.new_user_share
    # Gumbel top-k draws distinct leaves per shopper in proportion to leaf weight; column k is
    # the leaf a drifting taste switches to.
    keys = np.log(cat.leaf_weight) + rng.gumbel(size=(n_users, len(cat.leaf_weight)))
    taste_leaf = np.argsort(-keys, axis=1, kind="stable")[:, : k + 1]
    taste_weight = rng.dirichlet(np.full(k, 1.5), n_users)
    taste_cum = np.cumsum(taste_weight, axis=1)
    drifts = ~is_new & (rng.random(n_users) < cfg.drift_share)
    drift_slot = rng.integers(k, size=n_users)
    switch_at = (rng.uniform(0.25, 0.75, n_users) * span).astype(np.int64)
    interest = cat.draw_in_leaf(rng, np.repeat(taste_leaf.ravel(), INTEREST_PER_TASTE))
    interest = interest.reshape(n_users, k + 1, INTEREST_PER_TASTE)
    activity = rng.gamma(1.2, (cfg.sessions_per_user - 1) / 1.2, n_users)
    n_sess = 1 + rng.poisson(np.where(is_new, 0.7, activity))

    # --- sessions: returning shoppers start before the last 3 weeks, new ones in the last 2 --
    s_user = np.repeat(np.arange(n_users), n_sess)
    lo_first = np.where(is_new, cutoff, 0)
    hi_first = np.where(is_new, span - 2 * HOUR, cutoff - 7 * DAY)
    first_t = rhythm.draw(rng, lo_first, hi_first)
    s_time = rhythm.draw(rng, first_t[s_user], np.full(len(s_user), span - 2 * HOUR))
    s_time[np.cumsum(n_sess) - n_sess] = first_t
    n_views = rng.geometric(1.0 / cfg.views_per_session, len(s_user))

    # --- views: taste (drift-aware) -> interest set / popular item of the leaf / anything ----
    v_sess = np.repeat(np.arange(len(s_user)), n_views)
    v_idx = np.arange(len(v_sess)) - np.repeat(np.cumsum(n_views) - n_views, n_views)
    v_user, v_time, n_v = s_user[v_sess], s_time[v_sess], len(v_sess)
    slot = (rng.random(n_v)[:, None] > taste_cum[v_user, : k - 1]).sum(axis=1)
    drifted = drifts[v_user] & (slot == drift_slot[v_user]) & (v_time >= switch_at[v_user])
    slot = np.where(drifted, k, slot)
    item = cat.draw_in_leaf(rng, taste_leaf[v_user, slot])
    mode = rng.random(n_v)
    from_interest, explore = mode < cfg.p_interest, mode >= 1.0 - cfg.p_explore
    pick = rng.integers(INTEREST_PER_TASTE, size=n_v)
    item[from_interest] = interest[v_user, slot, pick][from_interest]
    item[explore] = cat.draw_any(rng, int(explore.sum()))
    p_cart = np.where(from_interest, cfg.p_cart_interest,
                      np.where(explore, cfg.p_cart_explore, cfg.p_cart_fresh))
    carted = rng.random(n_v) < p_cart
    bought = carted & (rng.random(n_v) < cfg.p_buy_given_cart)

    # --- complements: same session, or a follow-up session 1 hour to 4 days later ------------
    comp = cat.complement[item]
    with_comp = bought & (comp >= 0) & (rng.random(n_v) < cfg.complement_prob)
    follow_t = v_time + rng.integers(HOUR, 4 * DAY, n_v)
    follow = with_comp & (rng.random(n_v) >= cfg.complement_same_session)
    follow &= follow_t < span - 2 * HOUR
    same = with_comp & ~follow
    n_base = len(s_user)
    f_sess = n_base + np.arange(int(follow.sum()))
    s_user = np.concatenate([s_user, v_user[follow]])
    s_time = np.concatenate([s_time, follow_t[follow]])

    # Positions order events within a session: view i at 4i, its cart 4i+1, a same-session
    # complement's view/cart at 4i+2/4i+3; purchases come at checkout, after every view.
    checkout = 4 * n_views[v_sess] + 4 * v_idx
    parts = [  # (session, position, item, event code)
        (v_sess, 4 * v_idx, item, 0),
        (v_sess[carted], 4 * v_idx[carted] + 1, item[carted], 1),
        (v_sess[bought], checkout[bought] + 1, item[bought], 2),
        (v_sess[same], 4 * v_idx[same] + 2, comp[same], 0),
        (v_sess[same], 4 * v_idx[same] + 3, comp[same], 1),
        (v_sess[same], checkout[same] + 3, comp[same], 2),
    ] + [(f_sess, np.full(len(f_sess), p), comp[follow], p) for p in range(3)]
    e_sess = np.concatenate([p[0] for p in parts])
    e_pos = np.concatenate([p[1] for p in parts])
    e_item = np.concatenate([p[2] for p in parts])
    e_type = np.concatenate([np.full(len(p[0]), p[3], np.int8) for p in parts])
    order = np.lexsort((e_pos, e_sess))
    e_sess, e_item, e_type = e_sess[order], e_item[order], e_type[order]

    # --- time within sessions: seconds to minutes between steps --------------------------
    mean_gap = np.array([40 * SECOND, 15 * SECOND, 30 * SECOND])[e_type]
    min_gap = np.array([3 * SECOND, 2 * SECOND, 5 * SECOND])[e_type]
    gap = min_gap + rng.exponential(1.0, len(e_sess)) * mean_gap
    counts = np.bincount(e_sess, minlength=len(s_user))
    first = np.cumsum(counts) - counts
    gap[first] = 0
    elapsed = np.cumsum(gap.astype(np.int64))
    offset = elapsed - np.repeat(elapsed[first], counts)
    duration = offset[first + counts - 1]

    # A shopper's sessions must not overlap: push each start to at least the previous end plus
    # SESSION_GAP. s'_j = C_j + max_{i<=j}(s_i - C_i), C = exclusive cumsum of (duration + gap)
    # per shopper; an offset per shopper makes one global running max act per shopper.
    by_user = np.lexsort((s_time, s_user))
    u_sorted, need = s_user[by_user], duration[by_user] + SESSION_GAP
    c = np.cumsum(need) - need
    user_first = np.searchsorted(u_sorted, u_sorted)
    c -= c[user_first]
    lift = u_sorted.astype(np.int64) * (4 * span)
    pushed = np.empty_like(s_time)
    pushed[by_user] = c + np.maximum.accumulate(s_time[by_user] - c + lift) - lift
    e_time = pushed[e_sess] + offset

    # --- unavailable items: no events from the moment they go (outside complement pairs) ----
    in_pair = cat.complement >= 0
    in_pair[cat.complement[cat.complement >= 0]] = True
    candidates = np.flatnonzero(~in_pair)
    n_gone = int(round(cfg.unavailable_share * cfg.n_items))
    gone = np.sort(rng.choice(candidates, size=min(n_gone, len(candidates)), replace=False))
    gone_at = np.full(cfg.n_items, np.iinfo(np.int64).max)
    gone_at[gone] = rng.integers(15 * DAY, span - 5 * DAY, len(gone))
    keep = (e_time < span) & (e_time < gone_at[e_item])
    e_sess, e_item, e_type, e_time = e_sess[keep], e_item[keep], e_type[keep], e_time[keep]
    e_user = s_user[e_sess]

    # --- canonical order (timestamp, user_id; then item, event for determinism) -------------
    # Zero-padded ids make integer order equal string order.
    order = np.lexsort((e_type, e_item, e_user, e_time))
    e_sess, e_item, e_type, e_time, e_user = (a[order] for a in (e_sess, e_item, e_type,
                                                                  e_time, e_user))
    dup = np.zeros(len(e_time), bool)
    dup[1:] = ((e_time[1:] == e_time[:-1]) & (e_user[1:] == e_user[:-1])
               & (e_item[1:] == e_item[:-1]) & (e_type[1:] == e_type[:-1]))
    e_sess, e_item, e_type, e_time, e_user = (a[~dup] for a in (e_sess, e_item, e_type,
                                                                 e_time, e_user))
    # Sessions are numbered in order of their first event.
    used, first_row = np.unique(e_sess, return_index=True)
    sess_rank = np.empty(len(s_user), np.int64)
    sess_rank[used] = np.argsort(np.argsort(first_row))
    base_ms = int(start.value // 1_000_000)
    uw, sw = max(6, len(str(n_users - 1))), max(7, len(str(len(used) - 1)))
    user_names = [f"u{u:0{uw}d}" for u in range(n_users)]
    events = pd.DataFrame({
        "user_id": _strings(user_names, e_user),
        "item_id": _strings(cat.ids, e_item),
        "event": pd.Categorical.from_codes(e_type, dtype=EVENT_DTYPE),
        "timestamp": _timestamps(e_time + base_ms),
        "seq": np.arange(len(e_time), dtype=np.int64),
        "session_id": _strings([f"s{s:0{sw}d}" for s in range(len(used))], sess_rank[e_sess]),
        "price": cat.price[e_item].astype(np.float64),
    })
    available = gone_at == np.iinfo(np.int64).max
    items = pd.DataFrame({
        "item_id": pd.array(list(cat.ids), dtype="string"),
        "category_id": _strings(list(LEAF_NAMES), cat.leaf),
        "parent_category_id": _strings(list(PARENT_NAMES), cat.leaf),
        "available": available,
        "title": pd.array(list(cat.title), dtype="string"),
        "price": cat.price.astype(np.float64),
    })

    user_seen, user_first_row = np.unique(e_user, return_index=True)
    new_users = frozenset(user_names[u] for u in user_seen[e_time[user_first_row] >= cutoff])
    anchors = np.flatnonzero(cat.complement >= 0)
    truth = ShopTruth(
        config=cfg,
        complements={cat.ids[a]: cat.ids[cat.complement[a]] for a in anchors},
        printer_item=cat.ids[cat.printer],
        printer_ink=cat.ids[cat.complement[cat.printer]],
        new_users=new_users,
        unavailable_items={cat.ids[i]: start + pd.Timedelta(milliseconds=int(gone_at[i]))
                           for i in gone},
        tastes=_tastes_frame(user_names, taste_leaf, taste_weight, drifts, drift_slot,
                             switch_at, base_ms, span),
        window_start=start,
        window_end=WINDOW_END,
        new_user_cutoff=start + pd.Timedelta(milliseconds=cutoff),
    )
    return EventData(events=events, items=items, source=f"synthetic:{size}", has_time=True), truth


def _tastes_frame(user_names: list[str], taste_leaf: np.ndarray, weight: np.ndarray,
                  drifts: np.ndarray, drift_slot: np.ndarray, switch_at: np.ndarray,
                  base_ms: int, span: int) -> pd.DataFrame:
    """One row per (user, taste, period); a drifted taste ends at the switch and its new leaf
    starts there with the same weight."""
    n_users, k = weight.shape
    user = np.repeat(np.arange(n_users), k)
    slot = np.tile(np.arange(k), n_users)
    ends_early = drifts[user] & (slot == drift_slot[user])
    late_user = np.flatnonzero(drifts)
    user_all = np.concatenate([user, late_user])
    leaf = np.concatenate([taste_leaf[user, slot], taste_leaf[late_user, k]])
    w = np.concatenate([weight[user, slot], weight[late_user, drift_slot[late_user]]])
    t0 = np.concatenate([np.zeros(len(user), np.int64), switch_at[late_user]])
    t1 = np.concatenate([np.where(ends_early, switch_at[user], span),
                         np.full(len(late_user), span)])
    order = np.lexsort((t0, user_all))
    return pd.DataFrame({
        "user_id": _strings(user_names, user_all[order]),
        "category_id": _strings(list(LEAF_NAMES), leaf[order]),
        "weight": w[order],
        "start": _timestamps(t0[order] + base_ms),
        "end": _timestamps(t1[order] + base_ms),
    })
