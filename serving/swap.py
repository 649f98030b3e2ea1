"""Hot model swap: a worker loads a new model beside the one it serves and switches between
requests, without a restart.

Each worker runs a ``ModelWatcher`` thread. Every ``CHECK_SECONDS`` it looks at
* the event store's reload request (``POST /admin/reload``: a generation number and a model
  reference, shared by every worker of every replica that uses the store),
* when the served reference is a registry alias (``champion``), the version the alias names now,
* the store's catalog generation (``POST /admin/items``): new items are placed in a new engine
  over the same model (``serving.engine.with_added_items``).
When either moved, it loads the new engine in the background (requests go on being answered by
the old one), then replaces the holder's engine in one assignment. A request reads the engine
once, at its start, so no answer mixes two models; the old engine is freed when its last
request ends. A model that fails to load is logged and the old one stays.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from features.event_store import EventStore
from models.registry import resolve_model
from serving.api import Reload, ReloadRequest, RequestError
from serving.engine import Engine, model_version, with_added_items

CHECK_SECONDS = 2.0
log = logging.getLogger("tailor.swap")


def settle_heap(*, full: bool = True) -> None:
    """Keep Python's cyclic garbage collector off the served model.

    A loaded engine is about half a million long-lived Python objects (the Sports bundle): each
    full collection walks all of them, about 200 ms on one core, during which the worker answers
    nothing. Under load those pauses were the p99 (and the 503s of a full in-flight queue).
    ``gc.freeze`` moves everything alive now out of the collector's generations for good.
    Reference counting still frees frozen objects, and an engine holds no reference cycles
    (tests/serving/test_swap.py; a dropped Sports engine left 0 objects for the collector), so
    a replaced engine is freed when its last request ends, frozen or not.

    ``full``: collect everything first (once the worker has loaded what it serves); after a
    swap only the young generations, so that swapping pauses no request for a full collection.
    """
    gc.collect(2 if full else 1)
    gc.freeze()


class EngineHolder:
    """The engine a worker serves now; ``engine`` is replaced whole, never changed."""

    def __init__(self, engine: Engine, ref: str) -> None:
        self.engine, self.ref = engine, ref


class ModelWatcher(threading.Thread):
    def __init__(self, holder: EngineHolder, load: Callable[[str], Engine],
                 store: EventStore | None, interval: float = CHECK_SECONDS,
                 server_started_ms: int | None = None) -> None:
        super().__init__(name="tailor-model-watcher", daemon=True)
        self.holder, self.load, self.store, self.interval = holder, load, store, interval
        self.generation = 0
        if store is not None:
            # A reload asked for before this server started is history; one asked for since
            # (this worker was restarted after it) still holds, and the first check applies it.
            generation, _, asked_ms = store.control("reload")
            started = server_started() if server_started_ms is None else server_started_ms
            self.generation = generation if asked_ms < started else 0
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        # Called after the served engine took in newly added items: the experiment's other
        # model variants (``serving.experiments.Runner.grow_catalog``) place them too.
        self.on_catalog_grew: list[Callable[[], None]] = []

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.check()
            except Exception:   # a watcher that dies would stop every later swap
                log.exception("model check failed; serving %s on", self.holder.engine.version)

    def check(self) -> bool:
        """Load and switch to a new model when one is asked for, or to the served one with the
        items added to the catalog since; True when it switched."""
        with self.lock:   # the watcher thread and POST /admin/items (serving/catalog.py)
            return self._check()

    def _check(self) -> bool:
        target = None
        if self.store is not None:
            generation, model, _ = self.store.control("reload")
            if generation != self.generation:
                self.generation, target = generation, model or self.holder.ref
        if target is None and _is_alias(self.holder.ref):
            now = model_version(self.holder.ref, resolve_model(self.holder.ref))
            if now != self.holder.engine.version:
                target = self.holder.ref
        if target is None:
            grown = with_added_items(self.holder.engine)
            if grown is self.holder.engine:
                return False
            self.holder.engine = grown
            log.warning("catalog grew: %d items added to %s", grown.bundle.info["added_items"],
                        grown.version)
            for follow in self.on_catalog_grew:
                follow()
            settle_heap(full=False)
            return True
        engine = self.load(target)   # with the added items (serving.engine.load_engine)
        old = self.holder.engine.version
        self.holder.engine, self.holder.ref = engine, target
        log.warning("model swapped: %s -> %s", old, engine.version)
        settle_heap(full=False)
        return True


def server_started() -> int:
    """When the server this worker belongs to started (its parent process, BentoML's arbiter),
    in epoch ms; this process's start when that cannot be read."""
    import psutil

    for pid in (os.getppid(), os.getpid()):
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(pid).create_time() * 1000)
    return 0


def _is_alias(ref: str) -> bool:
    return not ref.isdigit() and not Path(ref).expanduser().exists() and ref.isidentifier()


def request_reload(store: EventStore | None, request: ReloadRequest) -> Reload:
    """``POST /admin/reload``: every worker sharing the store loads the model within
    ``CHECK_SECONDS`` (the one named, else its own reference again)."""
    if store is None:
        raise RequestError(503, "store", "this server has no event store to share the reload",
                           "unavailable")
    if request.model is not None:
        try:
            resolve_model(request.model)
        except Exception as exc:   # any reason it cannot be found: the caller's mistake
            raise RequestError(404, "model", str(exc), "not_found") from exc
    generation = store.bump("reload", request.model)
    return Reload(generation=generation, model=request.model,
                  within_seconds=CHECK_SECONDS * 2)
