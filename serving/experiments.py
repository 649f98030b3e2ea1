"""Experiments in the service: which variant answers a shopper, and what each answer showed.

The experiment files are ``$TAILOR_EXPERIMENTS`` (a file or a folder of ``*.toml``), else the
``*.toml`` files of ``experiments/`` at the project's root (``features/experiments.py``
describes them). They are checked at start: a malformed file, shares that do not sum to 1,
overlapping experiments on one endpoint, or a variant's model that cannot be found stop the
service with a clear error, so nothing is served wrongly. Every worker holds the bundle of each
model variant (``Runner.engines``).

Every ``/recommend`` and ``/also_bought`` answer carries a ``request_id``; within a running
experiment also ``experiment`` and ``variant``. An answer's impression (request id, shopper,
variant, items in slot order) goes to the event store in batches, from a thread of its own, off
the request path. Outcomes are the shop's events posted with that ``request_id``
(``serving/experiment_report.py``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from features.event_store import EventStore, now_ms
from features.experiments import Experiment, Variant, check_overlaps, load_experiment
from features.infra import ROOT, DataError
from models.registry import resolve_model
from serving.api import ItemNeighbours, ItemRequest, Recommendations, RecommendRequest
from serving.engine import Engine, session_history, with_added_items
from serving.recommend import also_bought, recommend

EXPERIMENTS_ENV = "TAILOR_EXPERIMENTS"
DEFAULT_FOLDER = ROOT / "experiments"
FLUSH_SECONDS = 0.5
log = logging.getLogger("tailor.experiments")


def experiment_files() -> list[Path]:
    named = os.environ.get(EXPERIMENTS_ENV, "").strip()
    where = Path(named).expanduser() if named else DEFAULT_FOLDER
    if named and not where.exists():
        raise DataError("no such experiment file or folder", path=str(where))
    if where.is_file():
        return [where]
    return sorted(where.glob("*.toml")) if where.is_dir() else []


def load_experiments(files: list[Path]) -> list[Experiment]:
    experiments = [load_experiment(path) for path in files]
    check_overlaps(experiments)
    for experiment in experiments:
        for variant in experiment.variants:
            if variant.model is not None:
                try:
                    resolve_model(variant.model)
                except Exception as exc:   # the file names a model that is not there
                    raise DataError(f"variant {variant.name!r}: {exc}",
                                    path=experiment.path) from exc
    return experiments


class Runner:
    """One worker's experiments: assignment, the variants' engines, the impression writer."""

    def __init__(self, experiments: list[Experiment], store: EventStore | None,
                 load: Callable[[str], Engine], served: dict[str, Engine] | None = None) -> None:
        if experiments and store is None:
            raise DataError("experiments need the event store (TAILOR_EVENTS_URL is none)")
        self.experiments, self.store = experiments, store
        # Each model variant's engine; the served model's own when a variant names it (that
        # one follows a model swap: ``engine_for``).
        self.served_refs = set(served or {})
        self.engines = dict(served or {})
        for experiment in experiments:
            for variant in experiment.variants:
                if variant.model is not None and variant.model not in self.engines:
                    self.engines[variant.model] = load(variant.model)
        self.pending: queue.Queue[dict] = queue.Queue()
        self.writer = threading.Thread(target=self._write, name="tailor-impressions",
                                       daemon=True)
        if store is not None:
            self.writer.start()

    def grow_catalog(self) -> None:
        """Place the items added to the catalog since in every variant's own engine (the served
        model's follows its holder), as the served engine just did."""
        for ref, engine in list(self.engines.items()):
            if ref not in self.served_refs:
                self.engines[ref] = with_added_items(engine)

    def engine_for(self, variant: Variant, served: Engine) -> Engine:
        """A model variant's engine: the served one (as swapped in now) when it names the
        served model's reference, else its own (loaded at start, grown with the catalog)."""
        return served if variant.model in self.served_refs else self.engines[variant.model]

    def running(self, endpoint: str, at: datetime | None = None) -> Experiment | None:
        at = at or datetime.now(UTC)
        return next((e for e in self.experiments if e.endpoint == endpoint and e.active(at)),
                    None)

    def assign(self, experiment: Experiment, user_id: str) -> Variant:
        name = self.store.assignment(experiment.name, user_id, experiment.assign(user_id).name)
        # A variant removed from the file since: the shopper is assigned afresh by hash.
        return experiment.variant(name) or experiment.assign(user_id)

    def record(self, request_id: str, experiment: Experiment | None, variant: Variant | None,
               user_id: str, endpoint: str, items: list[str]) -> None:
        if self.store is not None:
            self.pending.put({"request_id": request_id, "user_id": user_id,
                              "experiment": experiment.name if experiment else None,
                              "variant": variant.name if variant else None,
                              "endpoint": endpoint, "items": items, "ts_ms": now_ms()})

    def _write(self) -> None:
        while True:
            batch = [self.pending.get()]
            time.sleep(FLUSH_SECONDS)
            while not self.pending.empty() and len(batch) < 1000:
                batch.append(self.pending.get_nowait())
            try:
                self.store.add_impressions(batch)
            except Exception:   # an impression lost must not take the service down
                log.exception("%d impressions not stored", len(batch))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the queued impressions are written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while not self.pending.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(FLUSH_SECONDS * 2)


def runner_for_service(store: EventStore | None, load: Callable[[str], Engine],
                       served: dict[str, Engine]) -> Runner:
    return Runner(load_experiments(experiment_files()), store, load, served)


# --- the endpoints under experiment ------------------------------------------------------------

def recommend_in_experiment(runner: Runner, engine: Engine, request: RecommendRequest
                            ) -> Recommendations:
    request_id = uuid.uuid4().hex
    experiment = runner.running("recommend")
    variant = runner.assign(experiment, request.user_id) if experiment else None
    if variant is None:
        answer = recommend(engine, request)
    elif variant.kind == "control":
        answer = Recommendations(user_id=request.user_id, strategy="control",
                                 model_version=engine.version, items=[])
    elif variant.kind == "popular":
        answer = recommend(engine, request, personal=False)
    elif variant.kind == "category_bestsellers":
        category = favourite_category(engine, request)
        narrowed = request.model_copy(update={"category": category}) if category else request
        answer = recommend(engine, narrowed, personal=False)
    else:
        answer = recommend(runner.engine_for(variant, engine), request)
    answer.request_id = request_id
    answer.experiment = experiment.name if experiment else None
    answer.variant = variant.name if variant else None
    runner.record(request_id, experiment, variant, request.user_id, "recommend",
                  [item.item_id for item in answer.items])
    return answer


def also_bought_in_experiment(runner: Runner, engine: Engine, request: ItemRequest
                              ) -> ItemNeighbours:
    request_id = uuid.uuid4().hex
    experiment = runner.running("also_bought") if request.user_id else None
    variant = runner.assign(experiment, request.user_id) if experiment else None
    if variant is not None and variant.kind == "control":
        engine.item_row(request.item_id)   # an unknown item is still a 404
        answer = ItemNeighbours(item_id=request.item_id, strategy="control",
                                model_version=engine.version, items=[])
    elif variant is not None:   # a model variant (the only other kind /also_bought takes)
        answer = also_bought(runner.engine_for(variant, engine), request)
    else:
        answer = also_bought(engine, request)
    answer.request_id = request_id
    answer.experiment = experiment.name if experiment else None
    answer.variant = variant.name if variant else None
    runner.record(request_id, experiment, variant, request.user_id or "", "also_bought",
                  [item.item_id for item in answer.items])
    return answer


def favourite_category(engine: Engine, request: RecommendRequest) -> str | None:
    """The leaf category of most of the shopper's events (stored, live and session)."""
    if engine.categories is None:
        return None
    history = session_history(engine, request.user_id, request.recent_events).histories
    leaves = [c for c in engine.categories[history.item_idx] if c]
    return Counter(leaves).most_common(1)[0][0] if leaves else None
