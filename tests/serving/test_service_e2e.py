"""End to end: a real `bentoml serve` process on a free port, called over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from features.event_store import EventStore
from serving.api import RecommendRequest
from serving.engine import RAMEN_IMPRESSIONS, Engine, load_engine
from serving.process import free_port, served
from serving.recommend import recommend

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """What `make serve` runs, on a free port (serving/process.py starts, waits and stops it)."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with served(bundle_dir, free_port(), log) as running, \
            httpx.Client(base_url=running.url, timeout=30) as client:
        yield client


def post(client: httpx.Client, route: str, body: object) -> httpx.Response:
    return client.post(route, json=body)


@pytest.fixture(scope="module")
def reading(bundle_dir: Path, own_event_store: str) -> Iterator[Engine]:
    """The library's engine of the served bundle, reading the store the server reads and
    writes (the test session's)."""
    store = EventStore(own_event_store)
    yield load_engine(str(bundle_dir), store=store)
    store.close()


def library_answer(reading: Engine, user: str, answered: int) -> list[str]:
    """What the library answers ``user`` (5 items) reading the server's store, once the
    impressions of the ``answered`` answers the server gave them have landed: every answer's
    impression counts towards the "ramen" demotion (an item shown RAMEN_SHOWS times without a
    click drops), and the server writes them off the request path."""
    deadline = time.monotonic() + 30
    while len(reading.store.shopper(user, None, 0, shown_limit=RAMEN_IMPRESSIONS).shown) \
            < answered:
        assert time.monotonic() < deadline, "the server's impressions never reached the store"
        time.sleep(0.1)
    return [i.item_id for i in recommend(reading, RecommendRequest(user_id=user, k=5)).items]


def test_health_ready_metrics_and_openapi(server: httpx.Client) -> None:
    assert server.get("/healthz").status_code == 200
    assert server.get("/readyz").status_code == 200
    post(server, "/recommend", {"user_id": "warm-up"})
    metrics = server.get("/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text
    spec = server.get("/docs.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert {"/recommend", "/also_bought", "/similar_items", "/segments", "/model"} <= set(paths)
    schema = paths["/recommend"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["example"]["user_id"] and "k" in schema["properties"]


def test_recommend_for_returning_session_and_unknown_shoppers(server: httpx.Client,
                                                              engine: Engine) -> None:
    user = sorted(engine.known_users)[0]
    known = post(server, "/recommend", {"user_id": user, "k": 5})
    assert known.status_code == 200
    body = known.json()
    assert body["strategy"] == "history:full_scoring" and len(body["items"]) == 5
    assert body["model_version"] == str(engine.version)
    assert all({"item_id", "score", "rank"} <= set(i) for i in body["items"])
    item = engine.ids[engine.popular_rows[2]]
    session = post(server, "/recommend", {"user_id": "visitor-1", "k": 4, "recent_events": [
        {"item_id": item, "event": "view"}, {"item_id": item, "event": "addtocart"}]})
    assert session.status_code == 200 and session.json()["strategy"] == "session:full_scoring"
    unknown = post(server, "/recommend", {"user_id": "visitor-2", "k": 3, "diversity": 0})
    assert unknown.status_code == 200 and unknown.json()["strategy"] == "popular"
    assert [i["item_id"] for i in unknown.json()["items"]] == list(engine.ids[
        engine.popular_rows[:3]])


def test_also_bought_similar_items_and_model(server: httpx.Client, shop) -> None:
    _, truth = shop
    out = post(server, "/also_bought", {"item_id": truth.printer_item, "k": 5})
    assert out.status_code == 200
    items = out.json()["items"]
    assert items[0]["item_id"] == truth.printer_ink and items[0]["source"] == "bought_together"
    assert truth.printer_item not in {i["item_id"] for i in items} and len(items) == 5
    near = post(server, "/similar_items", {"item_id": truth.printer_item, "k": 3})
    assert near.status_code == 200 and near.json()["strategy"] == "embedding:index"
    same = post(server, "/similar_items", {"item_id": truth.printer_item, "k": 5,
                                           "same": ["category_id"]})
    assert same.status_code == 200, same.text
    assert {i["category_id"] for i in same.json()["items"]} == {"printers"}
    card = server.post("/model")
    assert card.status_code == 200
    assert card.json()["test_metrics"]["tailor"]["ndcg@10"] > 0
    assert card.json()["trained_at"]


def test_merchandising_cart_completion_and_explanations(server: httpx.Client, engine: Engine,
                                                        shop) -> None:
    _, truth = shop
    cart = post(server, "/complete_cart", {"cart": [truth.printer_item], "k": 5})
    assert cart.status_code == 200, cart.text
    first = cart.json()["items"][0]
    assert first["item_id"] == truth.printer_ink
    assert first["because"] == {"kind": "bought_together", "item_id": truth.printer_item,
                                "event": None, "score_drop": None, "rule": None}
    user = sorted(engine.known_users)[0]
    pin = str(engine.ids[engine.popular_rows[-1]])
    out = post(server, "/recommend", {"user_id": user, "k": 6, "diversity": 0.3,
                                      "max_per_category": 2,
                                      "pins": [{"item_id": pin, "slot": 2}]})
    assert out.status_code == 200, out.text
    items = out.json()["items"]
    assert items[1]["item_id"] == pin and items[1]["because"]["kind"] == "pinned"
    leaves = [i["category_id"] for i in items if i["item_id"] != pin]
    assert max(leaves.count(c) for c in leaves) <= 2
    assert {i["because"]["kind"] for i in items} - {"pinned"} <= {"similar_to", "viewed",
                                                                 "carted", "bought", "model"}
    assert "/complete_cart" in server.get("/docs.json").json()["paths"]


def test_posted_events_change_the_next_answer_and_forget_acts_at_once(
        server: httpx.Client, engine: Engine, reading: Engine) -> None:
    user = "e2e-live-visitor"
    before = post(server, "/recommend", {"user_id": user, "k": 5}).json()
    assert before["strategy"] == "popular"
    item = str(engine.ids[engine.popular_rows[4]])
    stored = post(server, "/events", {"events": [
        {"user_id": user, "item_id": item, "event": "view", "event_id": "e2e-1"},
        {"user_id": user, "item_id": item, "event": "addtocart", "event_id": "e2e-2"},
        {"user_id": user, "item_id": "sku-not-in-the-model", "event": "view"}]})
    assert stored.status_code == 200, stored.text
    assert stored.json()["stored"] == 3
    assert stored.json()["unknown_items"] == [{"index": 2, "item_id": "sku-not-in-the-model"}]
    after = post(server, "/recommend", {"user_id": user, "k": 5}).json()
    assert after["strategy"].startswith("events:")
    assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]
    # every worker reads the store (the events, and the impressions of the answers so far)
    for answered in range(2, 8):
        expected = library_answer(reading, user, answered)
        again = post(server, "/recommend", {"user_id": user, "k": 5}).json()
        assert [i["item_id"] for i in again["items"]] == expected
    library_answer(reading, user, 8)   # nothing of theirs is written after the forget
    gone = post(server, "/admin/forget", {"user_id": user, "by": "e2e"})
    assert gone.status_code == 200 and gone.json()["events_deleted"] == 3
    assert post(server, "/recommend", {"user_id": user, "k": 5}).json()["items"] == \
        before["items"]
    assert {"/events", "/admin/forget", "/admin/consent"} <= set(
        server.get("/docs.json").json()["paths"])


def test_segments_of_a_returning_shopper_and_a_first_visit(server: httpx.Client,
                                                           engine: Engine) -> None:
    user = sorted(engine.known_users)[0]
    out = post(server, "/segments", {"user_id": user})
    assert out.status_code == 200, out.text
    kinds = {s["name"]: s["kind"] for s in out.json()["segments"]}
    assert kinds.get("returning") == "rule" and list(kinds.values()).count("learned") == 1
    new = post(server, "/segments", {"user_id": "never-seen"}).json()["segments"]
    assert [s["name"] for s in new] == ["first-time visitor"]


@pytest.mark.parametrize(("route", "body", "status", "field"), [
    ("/recommend", b'{"user_id": "u1", "k": ', 400, None),
    ("/recommend", {"k": 5}, 400, "user_id"),
    ("/recommend", {"user_id": "u1", "k": "five"}, 400, "k"),
    ("/recommend", {"user_id": "u1", "k": 0}, 400, "k"),
    ("/recommend", {"user_id": "u1", "k": 1001}, 400, "k"),
    ("/recommend", {"user_id": "u1", "recent_events": [{"item_id": "i1", "event": "zap"}]},
     400, "event"),
    ("/recommend", {"user_id": "u1", "category": "no-such-category"}, 404, "category"),
    ("/also_bought", {"item_id": "no-such-item"}, 404, "item_id"),
    ("/similar_items", {"item_id": "no-such-item", "k": 3}, 404, "item_id"),
    ("/also_bought", {"item_id": "i000001", "k": -1}, 400, "k"),
    ("/similar_items", {"item_id": "i000001", "same": ["scent"]}, 400, "same"),
    ("/recommend", {"user_id": "u1", "same": "brand"}, 400, "same"),
    ("/segments", {"user_id": ""}, 400, "user_id"),
    ("/recommend", {"user_id": "u1", "diversity": 2}, 400, "diversity"),
    ("/recommend", {"user_id": "u1", "boosts": [{"category": "no-such", "add": 1}]}, 404,
     "boosts[0].category"),
    ("/recommend", {"user_id": "u1", "boosts": [{"category": "printers", "factor": 2}]}, 400,
     "factor"),
    ("/complete_cart", {"cart": []}, 400, "cart"),
    ("/complete_cart", {"cart": ["no-such-item"]}, 404, "cart[0]"),
    ("/events", {"events": []}, 400, "events"),
    ("/events", {"events": [{"user_id": "u", "item_id": "i", "event": "view"},
                            {"user_id": "u", "item_id": "i", "event": "zap"}]}, 400, 1),
    ("/admin/consent", {"user_id": "u", "personalized": "no"}, 400, "personalized"),
    # times pandas cannot hold were a 500 (tests/serving/test_fuzz.py found them)
    ("/events", {"events": [{"user_id": "u", "item_id": "i", "event": "view",
                             "timestamp": "9999-12-31T00:00:00"}]}, 400, "timestamp"),
    ("/recommend", {"user_id": "u1", "recent_events": [
        {"item_id": "i1", "event": "view", "timestamp": "1000-01-01T00:00:00Z"}]}, 400,
     "timestamp"),
])
def test_bad_input_is_a_4xx_naming_the_field(server: httpx.Client, route: str, body: object,
                                             status: int, field: str | None) -> None:
    if isinstance(body, bytes):
        response = server.post(route, content=body, headers={"Content-Type": "application/json"})
    else:
        response = post(server, route, body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"] and payload["detail"]
    if field is None:
        assert payload["detail"][0]["type"] == "json_invalid"
    else:
        assert field in payload["detail"][0]["loc"], payload


def test_server_keeps_answering_the_same_after_bad_input(server: httpx.Client, engine: Engine,
                                                         reading: Engine) -> None:
    user = sorted(engine.known_users)[-1]   # a shopper no other test here asks for
    answered = 0
    for _ in range(3):
        assert post(server, "/recommend", {"user_id": user, "k": "x"}).status_code == 400
        assert server.post("/recommend", content=b"\x00garbage").status_code == 400
        unknown = post(server, "/recommend", {"user_id": user, "k": 5, "recent_events": [
            {"item_id": "no-such-item", "event": "purchase"}]})
        answered += unknown.status_code == 200
    local = library_answer(reading, user, answered)
    again = post(server, "/recommend", {"user_id": user, "k": 5})
    assert again.status_code == 200
    assert [i["item_id"] for i in again.json()["items"]] == local
    assert server.get("/readyz").status_code == 200
