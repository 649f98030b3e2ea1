"""The benchmark-only ALS baseline under the contract every recommender shares."""

from __future__ import annotations

from benchmarks.als import ALS, ALSConfig
from features.pipeline import Prepared
from models.base import Recommender
from tests.models.recommender_contract import Planted, RecommenderContract, pairs_prepared


class TestALS(RecommenderContract):
    PLANTED = (
        # Whoever has a_i has b_i: folding in a_i alone lands next to b_i in factor space.
        Planted("whoever-has-a-has-b", pairs_prepared, (("a3", "view"),), "b3", within=2),
        Planted("cart-side-too", pairs_prepared, (("b1", "addtocart"),), "a1", within=2),
    )

    def make_recommender(self, prepared: Prepared) -> Recommender:
        return ALS.from_prepared(prepared, config=ALSConfig(factors=8, iterations=10, seed=0))
