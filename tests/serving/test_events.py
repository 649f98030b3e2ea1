"""Live events through the endpoint logic (serving/events.py) on the tiny bundle with a real
SQLite event store: posted events change the next answer, privacy (forget, opt out) acts at
once, and training leaves forgotten shoppers out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from features.event_store import URL_ENV, EventStore, now_ms, user_hash
from features.readers import read_events
from features.spec import parse_spec
from serving.api import (
    ConsentRequest,
    EventsRequest,
    ForgetRequest,
    RecommendRequest,
    RequestError,
)
from serving.engine import Engine, session_history
from serving.events import consent, forget, post_events
from serving.recommend import recommend


@pytest.fixture
def live(engine: Engine, tmp_path: Path) -> Iterator[Engine]:
    """The session's engine with an event store of its own (the bundle is shared, read-only)."""
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    yield Engine(engine.bundle, engine.index, version=engine.version, store=store)
    store.close()


def ids(response) -> list[str]:
    return [item.item_id for item in response.items]


def posted(engine: Engine, *events: dict) -> object:
    return post_events(engine, EventsRequest(events=list(events)))


def test_posted_events_change_the_very_next_answer(live: Engine) -> None:
    user = "visitor-live"
    before = recommend(live, RecommendRequest(user_id=user, k=5))
    assert before.strategy == "popular"
    printer = str(live.ids[live.popular_rows[3]])
    out = posted(live, {"user_id": user, "item_id": printer, "event": "view", "event_id": "e1"},
                 {"user_id": user, "item_id": printer, "event": "addtocart", "event_id": "e2"})
    assert (out.stored, out.duplicates, out.unknown_items) == (2, 0, [])
    after = recommend(live, RecommendRequest(user_id=user, k=5))
    assert after.strategy == f"events:{live.method}" and ids(after) != ids(before)
    # the same as sending those events as the request's session
    session = recommend(live, RecommendRequest(user_id="someone-else", k=5, recent_events=[
        {"item_id": printer, "event": "view"}, {"item_id": printer, "event": "addtocart"}]))
    assert ids(after) == ids(session)
    # a retried post is stored once
    again = posted(live, {"user_id": user, "item_id": printer, "event": "view",
                          "event_id": "e1"})
    assert (again.stored, again.duplicates) == (0, 1)


def test_a_returning_shopper_gets_history_plus_events(live: Engine) -> None:
    user = str(live.bundle.histories.user_ids[0])
    plain = recommend(live, RecommendRequest(user_id=user, k=5))
    assert plain.strategy.startswith("history:")
    item = str(live.ids[live.popular_rows[-1]])
    posted(live, {"user_id": user, "item_id": item, "event": "addtocart"})
    assert recommend(live, RecommendRequest(user_id=user, k=5)).strategy.startswith(
        "history+events:")


def test_unknown_items_are_stored_and_flagged(live: Engine) -> None:
    out = posted(live, {"user_id": "u", "item_id": "brand-new-sku", "event": "view"},
                 {"user_id": "u", "item_id": str(live.ids[0]), "event": "view"})
    assert out.stored == 2
    assert [(u.index, u.item_id) for u in out.unknown_items] == [(0, "brand-new-sku")]


def test_a_batch_with_a_bad_event_is_refused_whole(live: Engine) -> None:
    good = {"user_id": "u", "item_id": "i1", "event": "view"}
    with pytest.raises(ValidationError) as err:
        EventsRequest(events=[good, good, {"user_id": "u", "item_id": "i1", "event": "zap"},
                              {"user_id": "", "item_id": "i1", "event": "view"}])
    locs = [e["loc"] for e in err.value.errors()]
    assert ("events", 2, "event") in locs and ("events", 3, "user_id") in locs
    with pytest.raises(ValidationError):
        EventsRequest(events=[])
    with pytest.raises(ValidationError):
        EventsRequest(events=[good] * 1001)
    assert live.store.count() == 0


def test_forget_a_shopper(live: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, live.store.url)   # what `make train` reads from now on
    user = str(live.bundle.histories.user_ids[np.argmax(live.bundle.histories.lengths)])
    posted(live, {"user_id": user, "item_id": str(live.ids[0]), "event": "view"})
    assert recommend(live, RecommendRequest(user_id=user, k=5)).strategy.startswith("history")
    assert user in set(read_events(parse_spec("synthetic")).events["user_id"])
    done = forget(live, ForgetRequest(user_id=user, by="test"))
    assert done.events_deleted == 1
    # 1. their events are gone; 2. their stored history is not used any more: the first-time
    # visitor's answer; 3. the audit names the hash, the time and who; 4. training leaves them out
    assert live.store.shopper(user, None, 200).item_ids == []
    first_time = recommend(live, RecommendRequest(user_id="never-seen", k=5))
    now = recommend(live, RecommendRequest(user_id=user, k=5))
    assert now.strategy == "popular" and ids(now) == ids(first_time)
    audit = live.store.audit()
    assert list(audit["user_hash"]) == [user_hash(user)] and audit["forgotten_by"][0] == "test"
    assert user not in set(read_events(parse_spec("synthetic")).events["user_id"])


def test_opting_out_and_back_in(live: Engine) -> None:
    user = str(live.bundle.histories.user_ids[1])
    personal = recommend(live, RecommendRequest(user_id=user, k=5))
    consent(live, ConsentRequest(user_id=user, personalized=False))
    out = recommend(live, RecommendRequest(user_id=user, k=5, recent_events=[
        {"item_id": str(live.ids[0]), "event": "view"}]))
    assert out.strategy == "popular:opted_out"
    skipped = posted(live, {"user_id": user, "item_id": str(live.ids[0]), "event": "view"})
    assert (skipped.stored, skipped.skipped_opted_out) == (0, 1)
    consent(live, ConsentRequest(user_id=user, personalized=True))
    assert ids(recommend(live, RecommendRequest(user_id=user, k=5))) == ids(personal)


def test_without_a_store_the_event_apis_say_so(engine: Engine) -> None:
    with pytest.raises(RequestError) as err:
        posted(engine, {"user_id": "u", "item_id": "i", "event": "view"})
    assert err.value.status == 503


def test_items_shown_again_and_again_without_interaction_are_demoted(live: Engine) -> None:
    user = "ramen-shopper"
    start = str(live.ids[live.popular_rows[2]])
    posted(live, {"user_id": user, "item_id": start, "event": "view"})
    before = recommend(live, RecommendRequest(user_id=user, k=5, explain=False,
                                              exclude_items=[start]))
    top = before.items[0].item_id   # not the viewed item: that one was interacted with

    def shown(times: int, first: int = 0) -> None:
        live.store.add_impressions([
            {"request_id": f"{user}-{first + n}", "experiment": None, "variant": None,
             "user_id": user, "endpoint": "recommend", "items": [top], "ts_ms": now_ms()}
            for n in range(times)])

    shown(2)   # twice is not yet a loop
    again = RecommendRequest(user_id=user, k=5, explain=False, exclude_items=[start])
    assert recommend(live, again).items[0].item_id == top
    shown(1, first=2)
    after = recommend(live, again)
    assert after.items[0].item_id != top
    assert live.item_rows[top] in session_history(live, user, []).demoted
    # once the shopper looks at it, it is not ignored any more
    posted(live, {"user_id": user, "item_id": top, "event": "view"})
    assert live.item_rows[top] not in session_history(live, user, []).demoted
