"""``/complete_cart``'s logic on the session's tiny bundle of the embedded shop, whose planted
complement pairs (printer -> its ink) are the known answer."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from serving.api import CartRequest, RecommendRequest, RequestError
from serving.cart import bought_together_scores, complete_cart
from serving.engine import Engine
from serving.recommend import recommend
from tests.serving.conftest import variant


def known_pairs(engine: Engine, truth) -> list[tuple[str, str]]:
    """Planted (anchor, complement) pairs the bundle's bought-together statistics hold."""
    pairs = []
    for anchor, complement in truth.complements.items():
        a, c = engine.item_rows.get(anchor, -1), engine.item_rows.get(complement, -1)
        if a < 0 or c < 0 or not engine.available[c]:
            continue
        together, _ = bought_together_scores(engine, np.array([a]))
        if together[c] > 0:
            pairs.append((anchor, complement))
    return pairs


def test_planted_complements_come_first(engine: Engine, shop) -> None:
    _, truth = shop
    pairs = known_pairs(engine, truth)
    assert len(pairs) >= 20
    for anchor, complement in pairs:
        got = complete_cart(engine, CartRequest(cart=[anchor], k=5))
        assert got.items[0].item_id == complement, anchor
        assert got.items[0].source == "bought_together"
        assert got.items[0].because.kind == "bought_together"
        assert got.items[0].because.item_id == anchor


def test_the_whole_cart_counts_and_its_items_never_come_back(engine: Engine, shop) -> None:
    _, truth = shop
    pairs = known_pairs(engine, truth)[:3]
    cart = [anchor for anchor, _ in pairs]
    got = complete_cart(engine, CartRequest(cart=cart, k=10))
    ids = [item.item_id for item in got.items]
    assert not set(ids) & set(cart)
    assert {complement for _, complement in pairs} <= set(ids[:3])   # every anchor's complement
    assert len(ids) == 10 and len(set(ids)) == 10


def test_substitutes_rank_below_complements(engine: Engine, shop) -> None:
    _, truth = shop
    printer = engine.item_rows[truth.printer_item]
    printers = engine.categories == engine.categories[printer]
    # The model alone puts other printers high for a shopper who carted one ...
    session = [{"item_id": truth.printer_item, "event": "addtocart"}]
    plain = recommend(engine, RecommendRequest(user_id="someone", k=5, recent_events=session))
    assert any(item.category_id == engine.categories[printer] for item in plain.items)
    # ... and some printers are even bought together with it; cart completion lists the
    # complements first and the substitutes after every other item.
    together, _ = bought_together_scores(engine, np.array([printer]))
    assert (together[printers] > 0).sum() >= 1
    got = complete_cart(engine, CartRequest(cart=[truth.printer_item], k=20))
    assert got.items[0].item_id == truth.printer_ink
    assert not any(item.category_id == engine.categories[printer] for item in got.items)
    # In a shop of the printers and ten other items, the printers fill the end of the list.
    others = np.flatnonzero(engine.available & ~printers)[:10]
    items = engine.bundle.items.copy()
    items["available"] = printers.copy()
    items.loc[others, "available"] = True
    small = variant(engine, items=items)
    listed = 10 + int(printers.sum()) - 1   # the cart's printer never comes back
    tail = complete_cart(small, CartRequest(cart=[truth.printer_item], k=listed + 5))
    sources = [item.source for item in tail.items]
    assert len(sources) == listed
    assert sources[10:] == ["substitute"] * (len(sources) - 10)
    assert "substitute" not in sources[:10]


def test_a_shopper_orders_what_the_statistics_leave_open(engine: Engine, shop) -> None:
    _, truth = shop
    user = str(engine.bundle.histories.user_ids[np.argmax(engine.bundle.histories.lengths)])
    anonymous = complete_cart(engine, CartRequest(cart=[truth.printer_item], k=10))
    theirs = complete_cart(engine, CartRequest(user_id=user, cart=[truth.printer_item], k=10))
    assert theirs.items[0].item_id == anonymous.items[0].item_id == truth.printer_ink
    assert [i.item_id for i in theirs.items] != [i.item_id for i in anonymous.items]


def test_bad_carts_are_refused_naming_the_field(engine: Engine) -> None:
    with pytest.raises(ValidationError, match="cart"):
        CartRequest(cart=[])
    known = str(engine.ids[0])
    with pytest.raises(RequestError) as err:
        complete_cart(engine, CartRequest(cart=[known, "no-such-item"]))
    assert (err.value.status, err.value.field) == (404, "cart[1]")
