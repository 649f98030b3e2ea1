"""Merchandising through the endpoint logic and the batch, on the session's tiny bundle: request
rules, the rules file (checked at start, reloaded on change), and each item's ``because``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from features.infra import DataError
from features.schema import EVENT_TYPES
from models.explain import without_each
from serving import merchandise
from serving.api import RecommendRequest, RequestError
from serving.batch import BatchConfig, batch_recommend
from serving.engine import Engine
from serving.merchandise import RulesFile
from serving.recommend import recommend


def shopper(engine: Engine, rank: int = 0) -> str:
    """A stored shopper with one of the longest histories."""
    order = np.argsort(-engine.bundle.histories.lengths, kind="stable")
    return str(engine.bundle.histories.user_ids[order[rank]])


def items(response) -> list[str]:
    return [item.item_id for item in response.items]


def test_diversity_and_the_category_cap_change_the_list(engine: Engine) -> None:
    user = shopper(engine)
    plain = recommend(engine, RecommendRequest(user_id=user, k=10))
    leaves = [item.category_id for item in plain.items]
    assert max(leaves.count(c) for c in leaves) > 1, "the plain list repeats a category"
    capped = recommend(engine, RecommendRequest(user_id=user, k=10, max_per_category=1))
    capped_leaves = [item.category_id for item in capped.items]
    assert len(capped_leaves) == len(set(capped_leaves)) == 10
    diverse = recommend(engine, RecommendRequest(user_id=user, k=10, diversity=0.7))
    assert items(diverse)[0] == items(plain)[0]   # MMR's first pick is the most relevant

    def spread(response) -> float:
        rows = engine.rows_of(items(response))
        vectors = engine.catalog.unit[rows]
        sims = vectors @ vectors.T
        return float(1 - sims[np.triu_indices(len(rows), 1)].mean())
    assert spread(diverse) > spread(plain)


def test_boosts_pins_and_filters_from_the_request(engine: Engine) -> None:
    user = shopper(engine, 1)
    plain = recommend(engine, RecommendRequest(user_id=user, k=10))
    # Boost the category of the plain list's last item: its items climb, flagged "boosted".
    last = plain.items[-1]
    boosted = recommend(engine, RecommendRequest(
        user_id=user, k=10, boosts=[{"category": last.category_id, "multiply": 5.0}]))
    assert items(boosted).index(last.item_id) < 9
    assert all((item.because.kind == "boosted") == (item.category_id == last.category_id)
               for item in boosted.items)
    # A pin sits at its slot; an excluded category is gone.
    pin = str(engine.ids[engine.popular_rows[-1]])
    pinned = recommend(engine, RecommendRequest(user_id=user, k=10,
                                                pins=[{"item_id": pin, "slot": 3}]))
    assert items(pinned)[2] == pin and pinned.items[2].because.kind == "pinned"
    gone = plain.items[0].category_id
    filtered = recommend(engine, RecommendRequest(user_id=user, k=10, exclude_categories=[gone]))
    assert gone not in [item.category_id for item in filtered.items]
    assert len(filtered.items) == 10


def test_bad_merchandising_is_a_4xx_naming_the_field(engine: Engine) -> None:
    user = shopper(engine)
    with pytest.raises(ValidationError, match="diversity"):
        RecommendRequest(user_id=user, diversity=2)
    with pytest.raises(ValidationError, match="either item_id or category"):
        RecommendRequest(user_id=user, boosts=[{"multiply": 2}])
    for body, field, status in (
            ({"boosts": [{"category": "no-such-category", "add": 1}]}, "boosts[0].category", 404),
            ({"pins": [{"item_id": "no-such-item", "slot": 1}]}, "pins[0].item_id", 404),
            ({"exclude_categories": ["nope"]}, "exclude_categories", 404),
            ({"price_min": 9, "price_max": 1}, "price_min", 400)):
        with pytest.raises(RequestError) as err:
            recommend(engine, RecommendRequest(user_id=user, **body))
        assert (err.value.status, err.value.field) == (status, field)


def test_because_names_a_history_item_whose_removal_lowers_the_score(engine: Engine) -> None:
    user = shopper(engine, 2)
    response = recommend(engine, RecommendRequest(user_id=user, k=10, exclude_purchased=False))
    history = engine.bundle.histories.of([user])
    recommender = engine.recommender
    base = recommender.score(history)[0]
    named = 0
    for item in response.items:
        because = item.because
        assert because.kind in ("similar_to", "viewed", "carted", "bought", "model")
        if because.item_id is None:
            continue
        named += 1
        row, cause = engine.item_rows[item.item_id], engine.item_rows[because.item_id]
        assert cause in history.item_idx
        without = without_each(history, np.array([cause]))
        assert recommender.score(without)[0, row] < base[row]
        assert (because.kind == "similar_to") == (row != cause)
        if because.event is not None:
            assert because.event in EVENT_TYPES
    assert named >= 5
    # The popular fallback says so.
    first = recommend(engine, RecommendRequest(user_id="never-seen", k=3))
    assert {item.because.kind for item in first.items} == {"popular"}
    quiet = recommend(engine, RecommendRequest(user_id=user, k=3, explain=False))
    assert all(item.because is None for item in quiet.items)


# --- the rules file ---------------------------------------------------------------------------

def test_the_rules_file_applies_and_reloads_without_a_restart(engine: Engine, tmp_path: Path,
                                                             monkeypatch) -> None:
    monkeypatch.setattr(merchandise, "CHECK_SECONDS", 0.0)
    user = shopper(engine)
    plain = recommend(engine, RecommendRequest(user_id=user, k=10))
    gone = plain.items[0].category_id
    path = tmp_path / "rules.toml"
    path.write_text(f'[filter]\nexclude_categories = ["{gone}"]\n')
    rules_file = RulesFile(engine.catalog, path)
    monkeypatch.setattr(engine, "rules", rules_file)
    assert gone not in [i.category_id for i in recommend(engine, RecommendRequest(user_id=user,
                                                                                  k=10)).items]
    pin = str(engine.ids[engine.popular_rows[-1]])
    path.write_text(f'[[pin]]\nitem_id = "{pin}"\nslot = 1\n')
    _touch_later(path)
    assert items(recommend(engine, RecommendRequest(user_id=user, k=10)))[0] == pin
    # An edit that breaks the file keeps the last good rules in force.
    path.write_text('[[pin]]\nitem_id = "no-such-item"\nslot = 1\n')
    _touch_later(path)
    assert items(recommend(engine, RecommendRequest(user_id=user, k=10)))[0] == pin
    # Deleting the file drops the rules.
    path.unlink()
    assert items(recommend(engine, RecommendRequest(user_id=user, k=10))) == items(plain)


def _touch_later(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_a_wrong_rules_file_stops_the_start_naming_line_and_field(engine: Engine,
                                                                 tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[feed]\ndiversity = 0.1\n\n[[boost]]\ncategory = "no-such"\nadd = 1\n')
    with pytest.raises(DataError) as err:
        RulesFile(engine.catalog, path)
    assert "row 5" in str(err.value) and "category" in str(err.value)
    with pytest.raises(DataError, match="no such rules file"):
        RulesFile(engine.catalog, tmp_path / "missing.toml")


def test_the_batch_applies_the_same_rules(engine: Engine, synthetic_events, tmp_path: Path,
                                         monkeypatch) -> None:
    users = np.array([shopper(engine, r) for r in range(3)], dtype=object)
    events = synthetic_events.events
    events = events[events["user_id"].isin(users)]
    pin = str(engine.ids[engine.popular_rows[-1]])
    path = tmp_path / "rules.toml"
    path.write_text(f'[feed]\nmax_per_category = 2\n[[pin]]\nitem_id = "{pin}"\nslot = 1\n')
    monkeypatch.setattr(engine, "rules", RulesFile(engine.catalog, path))
    frame, _ = batch_recommend(engine, events, users, BatchConfig(k=10))
    for _user, recs in frame.groupby("user_id"):
        recs = recs.sort_values("rank")
        assert recs["item_id"].iloc[0] == pin
        leaves = engine.categories[engine.rows_of(list(recs["item_id"]))]
        assert max(list(leaves).count(c) for c in set(leaves)) <= 2
    # The batch's own setting goes on top of the file's: no cap, the pin stays.
    uncapped, _ = batch_recommend(engine, events, users, BatchConfig(k=10, max_per_category=0))
    assert len(uncapped) == 30
    assert (uncapped[uncapped["rank"] == 1]["item_id"] == pin).all()

