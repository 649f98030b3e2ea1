"""Cart completion (``POST /complete_cart``): items that complete a basket.

Each candidate's score is its relevance in the shopper's own ranking (``models.ranking.rank``,
the one path, with the cart as add-to-cart events on top of their history; the model's score
rescaled to 0..1 among its top ``pool_size(k)``) plus ``BOUGHT_TOGETHER_WEIGHT`` times the sum of
its bought-together scores with **every** cart item (``features/cooccur.py``: buyer-set cosines),
so an item that goes with two cart items beats one that goes with one, and a strong complement
(a printer's ink) beats the model's favourite. Items bought together with the cart join the
candidates even when the model ranks them lower. **Substitutes** come after every other item:
items of a cart item's leaf category (a printer in the cart: its ink before another printer).

Never the cart's own items, never an unavailable or filtered-out item (the rules file's filters
apply as on ``/recommend``), and, as on ``/recommend``, nothing the shopper bought unless
``exclude_purchased`` is false.

The weight was measured on Tmall and the embedded shop (benchmarks/merchandising.py): on Tmall's
carts HR@10 is 0.264 / 0.262 / 0.259 / 0.243 at weights 0 / 1 / 2 / 4 (1,500
shoppers: 0..2 within noise); on the embedded shop 0 loses the planted complements, and a
returning shopper's cart of a planted anchor gets its complement first for 13, 39 and 40 of 40
anchors at weights 1, 2 and 3. Hence 2.
"""

from __future__ import annotations

import numpy as np

from models.merchandising import pool_size
from models.ranking import MAX_K, exclusions, rank
from serving.api import Because, CartCompletion, CartRequest, SessionEvent
from serving.engine import Engine, session_history
from serving.merchandise import reasons

CART_EVENT = "addtocart"


BOUGHT_TOGETHER_WEIGHT = 2.0   # see the module docstring


def complete_cart(engine: Engine, request: CartRequest,
                  weight: float = BOUGHT_TOGETHER_WEIGHT) -> CartCompletion:
    cart = np.array([engine.item_row(item, f"cart[{i}]") for i, item in enumerate(request.cart)])
    cart = np.unique(cart)
    rules, plan = engine.rules.current()
    allowed = engine.available.copy()
    if plan.allowed is not None:
        allowed &= plan.allowed
    allowed[cart] = False
    substitute = _substitutes(engine, cart)

    together, partner = bought_together_scores(engine, cart)
    user = request.user_id or ""
    events = [SessionEvent(item_id=engine.ids[row], event=CART_EVENT) for row in cart]
    histories = session_history(engine, user, events).histories
    # The shopper's ranking gives the candidates and their relevance (0..1 within them); items
    # bought together with the cart join them at relevance 0 and every item gains
    # BOUGHT_TOGETHER_WEIGHT x its summed bought-together score.
    # What the shopper bought does not come back (as on /recommend, unless asked).
    bought = exclusions(histories, purchased=request.exclude_purchased, explicit=[cart])
    ranked = rank(engine, histories, min(MAX_K, pool_size(request.k)), exclude=bought,
                  allowed=allowed)
    got = ranked.rows[0] >= 0
    pool_rows, pool_scores = ranked.rows[0][got], ranked.scores[0][got].astype(np.float64)
    relevance = np.zeros(len(engine.ids), dtype=np.float64)
    if len(pool_rows):
        low, high = pool_scores.min(), pool_scores.max()
        relevance[pool_rows] = (pool_scores - low) / (high - low) if high > low else 1.0
    joining = np.flatnonzero((together > 0) & allowed)
    candidates = np.union1d(pool_rows, joining[~np.isin(joining, bought[0])])
    combined = relevance[candidates] + weight * together[candidates]
    # Complements first, then substitutes; each by the combined score (ties: row order).
    order = np.lexsort((candidates, -combined, substitute[candidates]))
    ordered = candidates[order][:request.k]
    rows = ordered.tolist()
    scores = (relevance[ordered] + weight * together[ordered]).tolist()
    sources = ["substitute" if substitute[r] else "bought_together" if together[r] > 0
               else "model" for r in ordered]
    rows_arr = np.array(rows, dtype=np.int64)
    items = engine.scored(rows_arr, np.array(scores, dtype=np.float32), sources)
    if request.explain and len(rows_arr):
        for item, row in zip(items, rows_arr, strict=True):
            if partner[row] >= 0:
                item.because = Because(kind="bought_together", item_id=engine.ids[partner[row]])
        todo = [i for i, item in enumerate(items) if item.because is None]
        for i, because in zip(todo, reasons(engine, histories, rows_arr[todo], None, rules,
                                            True, None), strict=True):
            items[i].because = because
    used = [name for name in ("bought_together", "model", "substitute") if name in sources]
    return CartCompletion(user_id=request.user_id, cart=[engine.ids[r] for r in cart],
                          strategy="+".join(used) or "none", model_version=engine.version,
                          items=items)


def bought_together_scores(engine: Engine, cart: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item row: the sum of its bought-together scores with the cart's items, and the cart
    item that contributes most (-1: none)."""
    together = np.zeros(len(engine.ids), dtype=np.float64)
    best = np.zeros(len(engine.ids), dtype=np.float64)
    partner = np.full(len(engine.ids), -1, dtype=np.int64)
    for row in cart:
        start, end = engine.bt_offsets[row], engine.bt_offsets[row + 1]
        others, scores = engine.bt_rows[start:end], engine.bt_scores[start:end]
        together[others] += scores
        stronger = scores > best[others]
        best[others[stronger]] = scores[stronger]
        partner[others[stronger]] = row
    return together, partner


def _substitutes(engine: Engine, cart: np.ndarray) -> np.ndarray:
    """Items of a cart item's leaf category (none without categories)."""
    codes = engine.catalog.leaf_code
    cart_codes = codes[cart]
    cart_codes = cart_codes[cart_codes >= 0]
    return np.isin(codes, cart_codes) if len(cart_codes) else np.zeros(len(codes), dtype=bool)

