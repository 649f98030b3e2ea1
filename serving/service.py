"""`make serve`: the BentoML service, a thin HTTP layer over ``serving/recommend.py``.

    TAILOR_MODEL=champion bentoml serve serving.service:Tailor --port 3000

The model (``$TAILOR_MODEL``: an alias such as ``champion``, a version, a run id or a bundle
folder) is loaded once by each worker, when it starts. The same service runs from a Bento
(``make bento``, then ``bentoml serve tailor:latest``): it serves the BentoML model the Bento was
built with instead (serving/bento.py). APIs follow BentoML's JSON POST convention:
the body's fields are the request model's fields. Bad input gets a 4xx JSON body whose ``detail``
names the field: BentoML answers malformed JSON and invalid fields (400) from the pydantic
models; unknown items or categories are answered here (404); a wrong Host, content type or body
size and overload are answered before (serving/guard.py). No request changes what the
service holds. BentoML adds ``/healthz``, ``/readyz``, ``/metrics`` and the OpenAPI page at ``/``.

One worker process per core (at most four), each with single-threaded torch and FAISS; ``python -m
benchmarks.serve`` measures requests/s and latency under load.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import bentoml
import faiss
import torch
from starlette.responses import JSONResponse

from features.event_store import open_store
from serving.api import (
    CartCompletion,
    CartRequest,
    Consent,
    ConsentRequest,
    EventsRequest,
    EventsStored,
    ForgetRequest,
    Forgotten,
    ItemNeighbours,
    ItemRequest,
    ModelCard,
    Recommendations,
    RecommendRequest,
    Reload,
    ReloadRequest,
    RequestError,
    SegmentRequest,
    ShopperSegments,
    SimilarRequest,
)
from serving.auth import ApiKeyMiddleware
from serving.bento import bento_model_tag
from serving.cart import complete_cart
from serving.catalog import ItemsAdded, ItemsRequest, post_items
from serving.engine import Engine, load_engine
from serving.events import consent, forget, post_events
from serving.experiments import (
    also_bought_in_experiment,
    recommend_in_experiment,
    runner_for_service,
)
from serving.guard import RequestGuard
from serving.merchandise import rules_path
from serving.recommend import model_card, similar_items
from serving.segments import Segmenter, segmenter_for_service, shopper_segments
from serving.swap import EngineHolder, ModelWatcher, request_reload, settle_heap

MODEL_ENV = "TAILOR_MODEL"
DEFAULT_MODEL = "champion"
# Set when the service runs from a Bento (`make bento`; serving/bento.py), or is built into one.
BENTO_MODEL = bento_model_tag()
# Serving on few, shared cores (measured by benchmarks/serve.py on 2 cores):
# - one request is a few small tensor ops (one history, one catalog-wide product): split over
#   intra-op threads it only adds hand-offs, each waiting for a busy core (a request took ~6x
#   longer with torch's default of a thread per core), so torch runs one thread per worker, and
#   so does FAISS (an exact search of one query over 18k items took 16 ms on every core of a
#   busy machine, 0.25 ms on one: benchmarks/index.py);
# - parallelism comes from worker processes instead, one per core (at most MAX_WORKERS: each
#   holds a copy of the model), so two requests are scored at once on two cores.
THREADS = 1
MAX_WORKERS = 4
WORKERS_ENV = "TAILOR_WORKERS"


def worker_count() -> int:
    """``$TAILOR_WORKERS``, else one per core of the CPU quota (cgroup-aware, as BentoML reads
    it: a container limited to 2 CPUs on a 64-core host gets 2), at most ``MAX_WORKERS``."""
    named = os.environ.get(WORKERS_ENV, "").strip()
    if named:
        if not named.isdigit() or int(named) < 1:
            raise SystemExit(f"error: {WORKERS_ENV} must be a whole number >= 1, got {named!r}")
        return int(named)
    from bentoml._internal.resource import CpuResource  # cgroup quota, else the cores

    return max(1, min(math.floor(CpuResource.from_system()) or 1, MAX_WORKERS))


WORKERS = worker_count()


def _answer(handler: Callable[[Engine, Any], Any], engine: Engine, request: Any) -> Any:
    try:
        return handler(engine, request)
    except RequestError as err:  # returned as is: BentoML would wrap the body in a list
        return JSONResponse(err.body(), status_code=err.status)


# The APIs are coroutines although they compute: BentoML runs a plain function in a thread pool
# (of one thread by default), and that hand-off per request (queue, wake the event loop) cost
# about as much CPU as an /also_bought answer. A worker still answers one request at a time.
# BentoML's per-request extras, each measured in `make bench-serve` (BENCHMARKS.md, "Serving"):
# - OpenTelemetry wraps every request in a span even when none is sampled (BentoML samples none
#   unless configured): the routes stay out of it unless TAILOR_TRACING=1 (then configure
#   BentoML's tracing exporter and sample rate as usual);
# - the access log writes a line per request: TAILOR_ACCESS_LOG=0 turns it off.
TRACING = {} if os.environ.get("TAILOR_TRACING", "0") == "1" else {"excluded_urls": [".*"]}
ACCESS_LOG = os.environ.get("TAILOR_ACCESS_LOG", "1") != "0"


@bentoml.service(name="tailor", traffic={"timeout": 30}, workers=WORKERS, tracing=TRACING,
                 logging={"access": {"enabled": ACCESS_LOG}})
class Tailor:
    if BENTO_MODEL is not None:
        # A BentoModel class attribute is what `bentoml build` packs into the Bento, and what
        # the running Bento reads its bundle from (its own model store, in a container too).
        bento_model = bentoml.models.BentoModel(BENTO_MODEL)

    def __init__(self) -> None:
        torch.set_num_threads(THREADS)
        faiss.omp_set_num_threads(THREADS)
        self.store = open_store()   # None with TAILOR_EVENTS_URL=none
        rules = rules_path()
        ref, path = self.served_model()

        def load(target: str) -> Engine:
            return load_engine(target, rules=rules, store=self.store,
                               path=path if target == ref else None)

        self.holder = EngineHolder(load(ref), ref)
        # A new champion (or POST /admin/reload) is loaded beside the served model and switched
        # to between requests: serving/swap.py.
        self.watcher = ModelWatcher(self.holder, load, self.store)
        self.watcher.start()
        # Experiments (experiments/*.toml or $TAILOR_EXPERIMENTS): checked now; each model
        # variant's bundle is loaded now too.
        self.runner = runner_for_service(self.store, load, {ref: self.holder.engine})
        self.watcher.on_catalog_grew.append(self.runner.grow_catalog)
        # The segments file is checked at start; learned segments are learned on first use, and
        # again for a swapped-in model.
        self._segmenter = segmenter_for_service(self.holder.engine)
        settle_heap()

    def served_model(self) -> tuple[str, Path | None]:
        """The model reference and, for a Bento's model, its bundle folder: the BentoML model
        (its tag names it in answers), else ``$TAILOR_MODEL`` as ``make serve`` sets it."""
        if BENTO_MODEL is not None:
            stored = self.bento_model   # resolved in the model store BentoML serves from
            return str(stored.tag), Path(stored.path)
        return os.environ.get(MODEL_ENV) or DEFAULT_MODEL, None

    @property
    def engine(self) -> Engine:
        """The engine of the model served now (read once per request)."""
        return self.holder.engine

    def segmenter(self, engine: Engine) -> Segmenter:
        if self._segmenter.engine is not engine:
            self._segmenter = segmenter_for_service(engine)
        return self._segmenter

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(self, **fields: Any) -> Recommendations:
        """Recommended for you: from the shopper's history and session, else popular items."""
        return _answer(partial(recommend_in_experiment, self.runner), self.engine,
                       RecommendRequest(**fields))

    @bentoml.api(route="/also_bought", input_spec=ItemRequest)
    async def also_bought(self, **fields: Any) -> ItemNeighbours:
        """People who bought this also bought: bought-together first, then embedding neighbours."""
        return _answer(partial(also_bought_in_experiment, self.runner), self.engine,
                       ItemRequest(**fields))

    @bentoml.api(route="/complete_cart", input_spec=CartRequest)
    async def complete_cart(self, **fields: Any) -> CartCompletion:
        """Items that complete the basket: bought together with the cart's items (all of them
        together), then the shopper's ranking; never the cart's items; substitutes last."""
        return _answer(complete_cart, self.engine, CartRequest(**fields))

    @bentoml.api(route="/similar_items", input_spec=SimilarRequest)
    async def similar_items(self, **fields: Any) -> ItemNeighbours:
        """Items closest to this one in the item-embedding space; ``same`` keeps those that
        share the named attributes' values (same brand, same scent)."""
        return _answer(similar_items, self.engine, SimilarRequest(**fields))

    @bentoml.api(route="/segments", input_spec=SegmentRequest)
    async def segments(self, **fields: Any) -> ShopperSegments:
        """The shopper's segments: the rules of $TAILOR_SEGMENTS (default segments.toml) they
        meet and their learned segment (k-means over the shoppers' vectors, learned on the
        first call)."""
        return _answer(shopper_segments, self.segmenter(self.engine), SegmentRequest(**fields))

    @bentoml.api(route="/events", input_spec=EventsRequest)
    async def events(self, **fields: Any) -> EventsStored:
        """Store a batch of 1..1000 shop events durably (answered after the commit; a retried
        event_id is stored once); the shopper's next /recommend reads them."""
        return _answer(post_events, self.engine, EventsRequest(**fields))

    @bentoml.api(route="/admin/forget", input_spec=ForgetRequest)
    async def forget(self, **fields: Any) -> Forgotten:
        """Forget a shopper: delete their events, stop using their stored history, audit it;
        later training leaves them out."""
        return _answer(forget, self.engine, ForgetRequest(**fields))

    @bentoml.api(route="/admin/consent", input_spec=ConsentRequest)
    async def consent(self, **fields: Any) -> Consent:
        """Opt a shopper out of personalization and event collection, or back in."""
        return _answer(consent, self.engine, ConsentRequest(**fields))

    @bentoml.api(route="/admin/items", input_spec=ItemsRequest)
    async def items(self, **fields: Any) -> ItemsAdded:
        """Add items to the running catalog (id, category, attributes): placed by their
        attributes without retraining, found by /similar_items and recommendable; every worker
        serves them within seconds."""
        return _answer(lambda _, request: post_items(self.watcher, request), self.engine,
                       ItemsRequest(**fields))

    @bentoml.api(route="/admin/reload", input_spec=ReloadRequest)
    async def reload(self, **fields: Any) -> Reload:
        """Serve another model (or the served reference again) on every worker, without a
        restart; /model shows it once loaded."""
        return _answer(lambda _, request: request_reload(self.store, request), self.engine,
                       ReloadRequest(**fields))

    @bentoml.api(route="/model")
    def model(self) -> ModelCard:
        """The served bundle: version, training time, data, index and test metrics."""
        return model_card(self.engine)


# In front of every route, outermost first: the Host check, the in-flight bound (a fast 503),
# content type and body size (serving/guard.py); then API keys with roles (serving/auth.py;
# without keys, loopback only).
Tailor.add_asgi_middleware(RequestGuard)
Tailor.add_asgi_middleware(ApiKeyMiddleware)
