"""The HTTP API's request and response models and its errors (the OpenAPI page shows their
examples). Unknown fields are errors; numeric ids become strings. The catalog's
(``POST /admin/items``) are in ``serving/catalog.py``, beside the endpoint."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)

from models.ranking import MAX_K

DEFAULT_K = 10
MAX_SESSION_EVENTS = 1000   # only the last history_len count; the bound keeps requests cheap
MAX_EXCLUDE = 10_000
MAX_SAME = 16
MAX_CART = 100
MAX_EVENTS_POSTED = 1000
MAX_RULES = 100   # boosts or excluded categories in one request

# --- request and response models (the OpenAPI page shows their examples) ---------------------

Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
K = Annotated[StrictInt, Field(ge=1, le=MAX_K, description=f"how many items, 1..{MAX_K}")]
# Event times become pandas timestamps (int64 nanoseconds: up to 2262) and the store's epoch
# milliseconds; one outside 1970..2261 is the client's mistake, a 400 naming the field, where
# it failed the conversion with a 500 (found by tests/serving/test_fuzz.py).
EVENT_TIMES = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2262, 1, 1, tzinfo=UTC))


def _event_time(value: datetime) -> datetime:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EVENT_TIMES[0] <= aware < EVENT_TIMES[1]:
        raise ValueError("must be between 1970 and 2261")
    return value


EventTime = Annotated[datetime, AfterValidator(_event_time)]


class ApiModel(BaseModel):
    # Unknown fields are errors (a typo must not be ignored); numeric ids become strings.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class SessionEvent(ApiModel):
    item_id: Id
    event: Literal["view", "addtocart", "purchase"]
    timestamp: EventTime | None = Field(
        None, description="ISO 8601 or epoch seconds (1970..2261); default: after the stored "
                          "history, in list order")


class BoostRule(ApiModel):
    item_id: Id | None = None
    category: Id | None = Field(None, description="a leaf or parent category id")
    multiply: float = Field(1.0, ge=0, le=1000, description="multiplies the item's relevance "
                                                             "(0..1 within the candidates)")
    add: float = Field(0.0, ge=-1000, le=1000, description="added to the relevance")

    @model_validator(mode="after")
    def _one_target(self) -> BoostRule:
        if (self.item_id is None) == (self.category is None):
            raise ValueError("a boost names either item_id or category")
        if self.multiply == 1 and self.add == 0:
            raise ValueError("a boost needs multiply (not 1) or add (not 0)")
        return self


class PinRule(ApiModel):
    item_id: Id
    slot: StrictInt = Field(ge=1, le=MAX_K, description="1 is the top of the list")


class Merchandising(ApiModel):
    """Per-request merchandising, on top of the rules file (rules.toml or $TAILOR_RULES)."""

    diversity: float | None = Field(
        None, ge=0, le=1, description="0..1: re-rank the top candidates by maximal marginal "
                                      "relevance on the item vectors (0: the model's order); "
                                      "default: the rules file's, else the measured default")
    max_per_category: StrictInt | None = Field(
        None, ge=0, le=MAX_K, description="at most this many items of one leaf category "
                                          "(0: no cap)")
    exclude_categories: list[Id] = Field(default_factory=list, max_length=MAX_RULES,
                                         description="leaf or parent categories left out")
    price_min: float | None = Field(None, ge=0, description="only items priced at least this")
    price_max: float | None = Field(None, ge=0, description="only items priced at most this")
    boosts: list[BoostRule] = Field(default_factory=list, max_length=MAX_RULES)
    max_boosted: StrictInt | None = Field(None, ge=0, le=MAX_K,
                                          description="at most this many boosted items "
                                                      "(0: no cap)")
    pins: list[PinRule] = Field(default_factory=list, max_length=20,
                                description="items at fixed slots (a promotion)")
    explain: StrictBool = Field(True, description="give each item its `because`")


class RecommendRequest(Merchandising):
    # One "example" (BentoML's OpenAPI schema has no "examples"): a returning shopper's session.
    model_config = ConfigDict(json_schema_extra={"example": {
        "user_id": "u000042", "k": 5,
        "recent_events": [{"item_id": "i000123", "event": "view"},
                          {"item_id": "i000123", "event": "addtocart"}],
        "exclude_items": [], "exclude_purchased": True, "category": None,
        "diversity": 0.3, "max_per_category": 3,
        "boosts": [{"category": "c01", "multiply": 1.5}],
        "pins": [{"item_id": "i000042", "slot": 1}]}})

    user_id: Id = Field(description="the shopper; unknown ids are served from the session or "
                                    "by popularity")
    k: K = DEFAULT_K
    recent_events: list[SessionEvent] = Field(
        default_factory=list, max_length=MAX_SESSION_EVENTS,
        description="the current session's events, oldest first, applied on top of the stored "
                    "history for this request only")
    exclude_items: list[Id] = Field(default_factory=list, max_length=MAX_EXCLUDE,
                                    description="item ids that must not come back")
    exclude_purchased: StrictBool = Field(True, description="leave out items the shopper "
                                                            "bought (stored history + session)")
    category: Id | None = Field(None, description="only items of this category (leaf or "
                                                  "parent category id)")
    same: list[Id] = Field(
        default_factory=list, max_length=MAX_SAME,
        description="item attributes (metadata columns, e.g. brand) whose value must be one "
                    "that an item of the shopper's history (stored + session) has: 'more from "
                    "the brands this shopper buys'; without such a history nothing matches")


class ItemRequest(ApiModel):
    model_config = ConfigDict(json_schema_extra={"example": {"item_id": "i000123", "k": 5}})

    item_id: Id
    k: K = DEFAULT_K
    user_id: Id | None = Field(None, description="the shopper looking, when known: assigns them "
                                                 "to a running experiment on /also_bought")


class SimilarRequest(ItemRequest):
    model_config = ConfigDict(json_schema_extra={"example": {"item_id": "i000123", "k": 5,
                                                             "same": ["brand"]}})

    same: list[Id] = Field(
        default_factory=list, max_length=MAX_SAME,
        description="item attributes (metadata columns, e.g. brand, scent) whose value the "
                    "answers must share with this item")


class CartRequest(ApiModel):
    model_config = ConfigDict(json_schema_extra={"example": {
        "user_id": "u000042", "cart": ["i000123", "i000456"], "k": 5}})

    user_id: Id | None = Field(None, description="the shopper, when known: their history "
                                                 "orders what the cart statistics leave open")
    cart: list[Id] = Field(min_length=1, max_length=MAX_CART, description="the items in the "
                                                                           "cart")
    k: K = DEFAULT_K
    exclude_purchased: StrictBool = Field(True, description="leave out items the shopper bought")
    explain: StrictBool = Field(True, description="give each item its `because`")


class EventIn(ApiModel):
    user_id: Id
    item_id: Id
    event: Literal["view", "addtocart", "purchase"]
    timestamp: EventTime | None = Field(None, description="ISO 8601 or epoch seconds "
                                                          "(1970..2261); default: when the "
                                                          "server receives it")
    event_id: Id | None = Field(None, description="the client's id of the event: a retried post "
                                                  "is stored once")
    request_id: Id | None = Field(None, description="the response that led to it "
                                                    "(experiments)")


class EventsRequest(ApiModel):
    model_config = ConfigDict(json_schema_extra={"example": {"events": [
        {"user_id": "u000042", "item_id": "i000123", "event": "view",
         "event_id": "3f2b9c1e-view-1"}]}})

    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS_POSTED,
                                  description=f"1..{MAX_EVENTS_POSTED} events; a batch with a bad "
                                              "event is refused whole")


class UnknownItem(BaseModel):
    index: int
    item_id: str


class EventsStored(BaseModel):
    stored: int = Field(description="events committed to the store (durably, before answering)")
    duplicates: int = Field(description="events whose event_id was stored already")
    skipped_opted_out: int = Field(description="events of opted-out shoppers, not stored")
    unknown_items: list[UnknownItem] = Field(
        description="events whose item the served model does not know (stored all the same: "
                    "they may be new to the catalog)")


class ForgetRequest(ApiModel):
    model_config = ConfigDict(json_schema_extra={"example": {"user_id": "u000042"}})

    user_id: Id
    by: Id = Field("admin", description="who asked (kept in the audit)")


class Forgotten(BaseModel):
    user_id: str
    events_deleted: int


class ConsentRequest(ApiModel):
    model_config = ConfigDict(json_schema_extra={"example": {"user_id": "u000042",
                                                             "personalized": False}})

    user_id: Id
    personalized: StrictBool = Field(description="false: opt out of personalization and of "
                                                 "event collection; true: opt back in")


class Consent(BaseModel):
    user_id: str
    personalized: bool


class ReloadRequest(ApiModel):
    model_config = ConfigDict(json_schema_extra={"example": {"model": "champion"}})

    model: Id | None = Field(None, description="alias, version, run id or bundle folder to "
                                               "serve; default: the served reference again "
                                               "(e.g. where the champion alias points now)")


class Reload(BaseModel):
    generation: int
    model: str | None
    within_seconds: float = Field(description="every worker serves it within about this long")


class SegmentRequest(ApiModel):
    model_config = ConfigDict(json_schema_extra={"example": {"user_id": "u000042"}})

    user_id: Id
    recent_events: list[SessionEvent] = Field(
        default_factory=list, max_length=MAX_SESSION_EVENTS,
        description="the current session's events, as for /recommend (this request only)")


class Segment(BaseModel):
    name: str
    kind: str = Field(description="rule (the segments file) or learned (k-means over shoppers)")
    rule: str = Field(description="the rule and its settings, or a learned segment's top "
                                  "categories")


class ShopperSegments(BaseModel):
    user_id: str
    model_version: str
    segments: list[Segment]


class Because(BaseModel):
    kind: str = Field(description="viewed | carted | bought (this item, in the history) | "
                                  "similar_to (a history item) | bought_together (a cart item) "
                                  "| popular | popular_in_category | boosted | pinned | model")
    item_id: str | None = Field(None, description="the history or cart item behind it")
    event: str | None = Field(None, description="similar_to: the shopper's strongest event on "
                                                "that item")
    score_drop: float | None = Field(None, description="how much this item's score falls "
                                                       "without that history item")
    rule: str | None = Field(None, description="boosted: the boost")


class ScoredItem(BaseModel):
    rank: int
    item_id: str
    score: float | None = Field(description="the model's score (null: a pinned item the model "
                                            "did not rank)")
    title: str | None = None
    category_id: str | None = None
    source: str | None = Field(None, description="also_bought: bought_together or embedding; "
                                                 "complete_cart: bought_together, model or "
                                                 "substitute")
    because: Because | None = None


class Recommendations(BaseModel):
    user_id: str
    strategy: str = Field(description="history|history+session|session, then ':index' or "
                                      "':full_scoring'; or popular / popular:category")
    model_version: str
    items: list[ScoredItem]
    request_id: str | None = Field(None, description="this answer's id: send it with the events "
                                                     "it leads to (POST /events request_id)")
    experiment: str | None = Field(None, description="the running experiment, if any")
    variant: str | None = Field(None, description="the shopper's variant in it")


class CartCompletion(BaseModel):
    user_id: str | None
    cart: list[str]
    strategy: str
    model_version: str
    items: list[ScoredItem]


class ItemNeighbours(BaseModel):
    item_id: str
    strategy: str
    model_version: str
    items: list[ScoredItem]
    request_id: str | None = None
    experiment: str | None = None
    variant: str | None = None


class ModelCard(BaseModel):
    model_version: str
    model_ref: str
    trained_at: str | None
    data: dict[str, Any]
    ranking: str
    items: int
    known_shoppers: int
    index: dict[str, Any]
    fit: dict[str, Any]
    test_metrics: dict[str, dict[str, float]]


class RequestError(Exception):
    """A request the service refuses: HTTP ``status``, the offending ``field`` and why."""

    def __init__(self, status: int, field: str, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message, self.kind = status, field, message, kind

    def body(self) -> dict[str, Any]:
        # The shape of BentoML's own validation errors, so clients parse one format.
        return {"error": self.message,
                "detail": [{"loc": [self.field], "msg": self.message, "type": self.kind}]}


def not_found(field: str, value: str, what: str) -> RequestError:
    return RequestError(404, field, f"unknown {what} {value!r}", "not_found")
