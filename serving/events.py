"""Live events and privacy, as plain functions over an engine with an event store: what
``POST /events``, ``/admin/forget`` and ``/admin/consent`` answer (``serving/service.py``).

An answer to ``/events`` is sent only after the batch is committed (``EventStore.add``), so an
acknowledged event is never lost; the very next ``/recommend`` of the shopper reads it
(``serving.engine.session_history``) on every worker, without retraining.
"""

from __future__ import annotations

from features.history import epoch_ms
from serving.api import (
    Consent,
    ConsentRequest,
    EventsRequest,
    EventsStored,
    ForgetRequest,
    Forgotten,
    RequestError,
    UnknownItem,
)
from serving.engine import Engine


def _store(engine: Engine):
    if engine.store is None:
        raise RequestError(503, "store", "this server has no event store", "unavailable")
    return engine.store


def post_events(engine: Engine, request: EventsRequest) -> EventsStored:
    store = _store(engine)
    added = store.add({"user_id": e.user_id, "item_id": e.item_id, "event": e.event,
                       "ts_ms": epoch_ms(e.timestamp) if e.timestamp is not None else None,
                       "event_id": e.event_id, "request_id": e.request_id}
                      for e in request.events)
    unknown = [UnknownItem(index=i, item_id=e.item_id) for i, e in enumerate(request.events)
               if e.item_id not in engine.item_rows]
    return EventsStored(stored=added.stored, duplicates=added.duplicates,
                        skipped_opted_out=added.skipped_opted_out, unknown_items=unknown)


def forget(engine: Engine, request: ForgetRequest) -> Forgotten:
    """Delete the shopper's events, stop using their stored history at once (every worker reads
    the store's privacy table per request), and audit it; training leaves them out from now on."""
    deleted = _store(engine).forget(request.user_id, by=request.by)
    return Forgotten(user_id=request.user_id, events_deleted=deleted)


def consent(engine: Engine, request: ConsentRequest) -> Consent:
    _store(engine).set_consent(request.user_id, request.personalized)
    return Consent(user_id=request.user_id, personalized=request.personalized)
