"""What the service answers, as plain functions over a loaded ``serving.engine.Engine`` (no HTTP
in here): "recommended for you", "also bought", similar items and the model card.

Ranking is ``models.ranking.rank``, the one path that batch recommendations and the MLflow
pyfunc call too (fallback to popular items, exclusions, availability and category filters, index
or full scoring). Request and response models are in ``serving/api.py``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from models.ranking import exclusions, rank
from serving.api import (
    ItemNeighbours,
    ItemRequest,
    ModelCard,
    Recommendations,
    RecommendRequest,
    SimilarRequest,
)
from serving.engine import Engine, empty_history, session_history
from serving.merchandise import reasons, request_plan

# --- the endpoints ----------------------------------------------------------------------------


def recommend(engine: Engine, request: RecommendRequest, *, personal: bool = True
              ) -> Recommendations:
    """ "Recommended for you": see the module docstring for the strategy. ``personal`` False:
    the non-personalized answer (an experiment's bestseller variants), whatever is known."""
    user = request.user_id
    allowed = engine.available
    if request.category is not None:
        allowed = allowed & engine.category_mask(request.category)
    shopper = session_history(engine, user, request.recent_events)
    if not personal:
        shopper = replace(shopper, histories=empty_history(user, engine), stored=False, live=0,
                          session_items=shopper.session_items[:0])
    histories = shopper.histories
    if request.same:
        allowed = allowed & engine.same_mask(request.same, histories.item_idx, whose="shopper")
    exclude = exclusions(histories, purchased=request.exclude_purchased,
                         explicit=[engine.rows_of(request.exclude_items)])
    rules, plan = request_plan(engine.rules, request)
    ranked = rank(engine, histories, request.k, exclude, allowed, plan,
                  demote=[shopper.demoted])
    in_session = bool((shopper.session_items >= 0).any())
    if ranked.personal[0]:
        source = "+".join(name for name, used in (("history", shopper.stored),
                                                  ("events", shopper.live > 0),
                                                  ("session", in_session)) if used)
        strategy = f"{source}:{engine.method}"
    else:
        strategy = "popular:category" if request.category is not None else "popular"
        if shopper.opted_out:
            strategy += ":opted_out"
    items = engine.scored(ranked.rows[0], ranked.scores[0])
    if request.explain:
        listed = ranked.rows[0] >= 0
        flags = None if ranked.flags is None else ranked.flags[0][listed]
        for item, because in zip(items, reasons(engine, histories, ranked.rows[0][listed], flags,
                                                rules, bool(ranked.personal[0]),
                                                request.category), strict=True):
            item.because = because
    return Recommendations(user_id=user, strategy=strategy, model_version=engine.version,
                           items=items)


def also_bought(engine: Engine, request: ItemRequest) -> ItemNeighbours:
    """Bought-together neighbours first, then embedding neighbours up to k; never the item."""
    row = engine.item_row(request.item_id)
    allowed = engine.available.copy()
    allowed[row] = False
    start, end = engine.bt_offsets[row], engine.bt_offsets[row + 1]
    pair_rows, pair_scores = engine.bt_rows[start:end], engine.bt_scores[start:end]
    keep = allowed[pair_rows]
    pair_rows, pair_scores = pair_rows[keep][:request.k], pair_scores[keep][:request.k]
    rows, scores = pair_rows, pair_scores.astype(np.float32)
    missing = request.k - len(rows)
    if missing > 0:
        near, near_scores = engine.index.search(engine.bundle.item_vectors[row:row + 1], missing,
                                                exclude=[pair_rows], allowed=allowed)
        keep = near[0] >= 0
        rows = np.concatenate([rows, near[0][keep]])
        scores = np.concatenate([scores, near_scores[0][keep]])
    sources = ["bought_together"] * len(pair_rows) + ["embedding"] * (len(rows) - len(pair_rows))
    parts = [name for name in ("bought_together", "embedding") if name in sources]
    return ItemNeighbours(item_id=request.item_id, strategy="+".join(parts) or "none",
                          model_version=engine.version,
                          items=engine.scored(rows, scores, sources))


def similar_items(engine: Engine, request: SimilarRequest) -> ItemNeighbours:
    """Nearest available items by item-vector cosine (the FAISS index); never the item. With
    ``same``, only items that share those attributes' values with it."""
    row = engine.item_row(request.item_id)
    allowed = engine.available
    if request.same:
        allowed = allowed & engine.same_mask(request.same, np.array([row]), whose="item")
    rows, scores = engine.index.search(engine.bundle.item_vectors[row:row + 1], request.k,
                                       exclude=[np.array([row])], allowed=allowed)
    strategy = "embedding:index" + (f":same={'+'.join(request.same)}" if request.same else "")
    return ItemNeighbours(item_id=request.item_id, strategy=strategy,
                          model_version=engine.version, items=engine.scored(rows[0], scores[0]))


def model_card(engine: Engine) -> ModelCard:
    # No bundle path: an HTTP answer must not reveal the host's file layout.
    info = engine.bundle.info
    data = info.get("data", {})
    test = info.get("metrics", {}).get("test", {})
    return ModelCard(
        model_version=engine.version, model_ref=engine.ref,
        trained_at=info.get("created_at"),
        data={key: data.get(key) for key in ("spec", "name", "data_hash", "protocol", "events",
                                             "users", "train_items", "last_event")},
        ranking=f"{type(engine.recommender).__name__} ({engine.method})",
        items=len(engine.ids), known_shoppers=engine.shoppers,
        index={key: engine.index.info.get(key) for key in ("factory", "exact", "recall",
                                                           "recall_k", "search_params")}
        | {"source": engine.index_source},
        fit={key: value for key, value in info.get("fit", {}).items() if key != "history"},
        test_metrics={method: {name: float(value) for name, value in row.items()
                               if isinstance(value, int | float) and np.isfinite(value)}
                      for method, row in test.items()})
