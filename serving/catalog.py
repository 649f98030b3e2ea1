"""``POST /admin/items``: new items for the running catalog, without retraining.

The items are checked against the served model's item attributes, committed to the event store
(``features.item_store``) and placed at once on the worker that answers (a new engine over the
same model: ``serving.engine.with_added_items``, through the worker's ``ModelWatcher`` so a
model swap and a placement never race); every other worker places them within
``CHECK_SECONDS`` (its watcher sees the store's ``items`` generation rise). From then on
``/similar_items`` finds them and the towers can recommend them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)

from features.item_features import metadata_columns, non_numeric
from features.item_store import add_items
from models.added_items import unknown_attributes
from serving.api import ApiModel, Id, RequestError
from serving.swap import CHECK_SECONDS, ModelWatcher

MAX_ITEMS_POSTED = 1000
MAX_ATTRIBUTE_CHARS = 4096

# --- the request and response models ----------------------------------------------------------

AttributeValue = (Annotated[str, StringConstraints(max_length=MAX_ATTRIBUTE_CHARS)] | StrictInt |
                  float | StrictBool | list[Annotated[str, StringConstraints(max_length=256)]])


class NewItem(BaseModel):
    """An item for the catalog: its id, category and any of the model's item attributes (the
    items file's columns: title, brand, price, ...), as extra fields."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    __pydantic_extra__: dict[str, AttributeValue | None] = Field(init=False)
    item_id: Id
    category_id: Id | None = None
    available: StrictBool | None = Field(None, description="false: kept in the catalog, never "
                                                           "recommended")

    @model_validator(mode="after")
    def _attribute_names(self) -> NewItem:
        for name in self.model_extra or {}:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
                raise ValueError(f"attribute name {name[:80]!r} is not a column name")
        return self

    def fields(self) -> dict[str, Any]:
        """The item's metadata as the items file would hold it: attributes as text (lists
        space-joined, numbers written out), availability as a boolean."""
        extra = {k: " ".join(v) if isinstance(v, list) else str(v).lower()
                 if isinstance(v, bool) else str(v)
                 for k, v in (self.model_extra or {}).items() if v is not None}
        known = {"category_id": self.category_id, "available": self.available}
        return {"item_id": self.item_id,
                **{k: v for k, v in known.items() if v is not None}, **extra}


class ItemsRequest(ApiModel):
    model_config = ConfigDict(json_schema_extra={"example": {"items": [
        {"item_id": "i-new-1", "category_id": "c012", "title": "Lavender soap",
         "brand": "acme", "price": 12.5}]}})

    items: list[NewItem] = Field(min_length=1, max_length=MAX_ITEMS_POSTED,
                                 description=f"1..{MAX_ITEMS_POSTED} items; a batch with a bad "
                                             "item is refused whole")


class ItemsAdded(BaseModel):
    stored: int = Field(description="items committed to the store (an id posted before is "
                                    "replaced)")
    placed: list[str] = Field(description="items this answer's worker serves now (every worker "
                                          "within within_seconds)")
    known: list[str] = Field(description="items the served catalog held already: stored, not "
                                         "placed again (the next trained bundle reads them)")
    generation: int
    within_seconds: float


# --- the endpoint -----------------------------------------------------------------------------



def post_items(watcher: ModelWatcher, request: ItemsRequest) -> ItemsAdded:
    engine = watcher.holder.engine
    if engine.store is None:
        raise RequestError(503, "store", "this server has no event store to keep the items in",
                           "unavailable")
    items = [item.fields() for item in request.items]
    for i, fields in enumerate(items):
        unknown = unknown_attributes(engine.bundle, list(fields))
        if unknown:
            raise RequestError(400, f"items[{i}].{unknown[0]}",
                               f"unknown item attribute {unknown[0]!r}; this model's items "
                               f"have: {', '.join(metadata_columns(engine.bundle.items))}",
                               "value_error")
    for i, fields in enumerate(items):
        wrong = non_numeric(engine.bundle.items, fields)
        if wrong is not None:
            raise RequestError(400, f"items[{i}].{wrong}", f"{wrong} must be a number: the "
                               f"model's items hold numbers there", "value_error")
    ids = list(dict.fromkeys(item["item_id"] for item in items))
    known = [item_id for item_id in ids if item_id in engine.item_rows]
    generation = add_items(engine.store, items)
    watcher.check()
    now = watcher.holder.engine.item_rows
    return ItemsAdded(stored=len(ids), known=known,
                      placed=[i for i in ids if i in now and i not in known],
                      generation=generation, within_seconds=2 * CHECK_SECONDS)
