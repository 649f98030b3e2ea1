"""`make serve`: the BentoML service, a thin HTTP layer over ``serving/recommend.py``.

    TAILOR_MODEL=champion bentoml serve serving.service:Tailor --port 3000

The model (``$TAILOR_MODEL``: an alias such as ``champion``, a version, a run id or a bundle
folder) is loaded once when the worker starts. APIs follow BentoML's JSON POST convention: the
body's fields are the request model's fields. Bad input gets a 4xx JSON body whose ``detail``
names the field: BentoML answers malformed JSON and invalid fields (400) from the pydantic
models; unknown items or categories are answered here (404). No request changes what the
service holds. BentoML adds ``/healthz``, ``/readyz``, ``/metrics`` and the OpenAPI page at ``/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import bentoml
from starlette.responses import JSONResponse

from serving.recommend import (
    Engine,
    ItemNeighbours,
    ItemRequest,
    ModelCard,
    Recommendations,
    RecommendRequest,
    RequestError,
    also_bought,
    load_engine,
    model_card,
    recommend,
    similar_items,
)

MODEL_ENV = "TAILOR_MODEL"
DEFAULT_MODEL = "champion"


def _answer(handler: Callable[[Engine, Any], Any], engine: Engine, request: Any) -> Any:
    try:
        return handler(engine, request)
    except RequestError as err:  # returned as is: BentoML would wrap the body in a list
        return JSONResponse(err.body(), status_code=err.status)


@bentoml.service(name="tailor", traffic={"timeout": 30})
class Tailor:
    def __init__(self) -> None:
        self.engine = load_engine(os.environ.get(MODEL_ENV) or DEFAULT_MODEL)

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    def recommend(self, **fields: Any) -> Recommendations:
        """Recommended for you: from the shopper's history and session, else popular items."""
        return _answer(recommend, self.engine, RecommendRequest(**fields))

    @bentoml.api(route="/also_bought", input_spec=ItemRequest)
    def also_bought(self, **fields: Any) -> ItemNeighbours:
        """People who bought this also bought: bought-together first, then embedding neighbours."""
        return _answer(also_bought, self.engine, ItemRequest(**fields))

    @bentoml.api(route="/similar_items", input_spec=ItemRequest)
    def similar_items(self, **fields: Any) -> ItemNeighbours:
        """Items closest to this one in the item-embedding space."""
        return _answer(similar_items, self.engine, ItemRequest(**fields))

    @bentoml.api(route="/model")
    def model(self) -> ModelCard:
        """The served bundle: version, training time, data, index and test metrics."""
        return model_card(self.engine)
