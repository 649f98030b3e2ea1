"""``POST /admin/items``: new items for the running catalog, without retraining.

The items are checked against the served model's item attributes, committed to the event store
(``features.item_store``) and placed at once on the worker that answers (a new engine over the
same model: ``serving.engine.with_added_items``, through the worker's ``ModelWatcher`` so a
model swap and a placement never race); every other worker places them within
``CHECK_SECONDS`` (its watcher sees the store's ``items`` generation rise). From then on
``/similar_items`` finds them and the towers can recommend them.
"""

from __future__ import annotations

from features.item_features import metadata_columns, non_numeric
from features.item_store import add_items
from models.added_items import unknown_attributes
from serving.api import ItemsAdded, ItemsRequest, RequestError
from serving.swap import CHECK_SECONDS, ModelWatcher


def post_items(watcher: ModelWatcher, request: ItemsRequest) -> ItemsAdded:
    engine = watcher.holder.engine
    if engine.store is None:
        raise RequestError(503, "store", "this server has no event store to keep the items in",
                           "unavailable")
    for i, item in enumerate(request.items):
        unknown = unknown_attributes(engine.bundle, list(item.fields()))
        if unknown:
            raise RequestError(400, f"items[{i}].{unknown[0]}",
                               f"unknown item attribute {unknown[0]!r}; this model's items "
                               f"have: {', '.join(metadata_columns(engine.bundle.items))}",
                               "value_error")
    for i, item in enumerate(request.items):
        wrong = non_numeric(engine.bundle.items, item.fields())
        if wrong is not None:
            raise RequestError(400, f"items[{i}].{wrong}", f"{wrong} must be a number: the "
                               f"model's items hold numbers there", "value_error")
    items = [item.fields() for item in request.items]
    ids = list(dict.fromkeys(item["item_id"] for item in items))
    known = [item_id for item_id in ids if item_id in engine.item_rows]
    generation = add_items(engine.store, items)
    watcher.check()
    now = watcher.holder.engine.item_rows
    return ItemsAdded(stored=len(ids), known=known,
                      placed=[i for i in ids if i in now and i not in known],
                      generation=generation, within_seconds=2 * CHECK_SECONDS)
