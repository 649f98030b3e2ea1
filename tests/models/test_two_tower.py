"""The two-tower recommender (a tiny model trained for a few epochs) against the shared contract,
plus what is particular to it: user vectors, the interest term and ``recommender_for``."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from features.config import FeatureConfig
from features.history import NAT_MS, Histories
from features.infra import DataError
from features.item_attributes import TOKENS_COLUMN, AttributeTable
from features.pipeline import Prepared, build
from features.schema import EventData
from features.spec import DataSpec
from models.base import Recommender
from models.bundle import Bundle, model_config
from models.inputs import ItemTable, history_batch
from models.scoring import (
    TwoTowerRecommender,
    compute_item_vectors,
    new_item_vectors,
    recommender_for,
)
from models.two_tower import TwoTower, TwoTowerConfig
from tests.helpers import small_shop
from tests.models.recommender_contract import (
    START,
    Planted,
    RecommenderContract,
    empty_histories,
    fold_histories,
    frame,
    pairs_prepared,
    query,
)
from training.data import collate, make_windows
from training.fit import NEWEST_WEIGHTS, TrainConfig, fit, newest_weight, sized_for, validate_newest
from training.loss import batch_loss

# Tiny on purpose: 12 items, dim 16, one layer, eight epochs take about a second (six left the
# pooling's recency weights, learned from flat, short of the rarest planted pairs). float32
# logits whatever the CPU (``auto`` would pick bfloat16 on some); bfloat16 has its own class.
# No label smoothing: on these 12-item catalogs 0.3 of each target spread over the catalog is
# 0.025 an item, enough to cap the target's margin at log(29) and blur the planted answers that
# these tests are about; on a real catalog it is 0.3 / 10,000 an item (tests/training/test_loss.py
# checks the smoothing itself).
TRAIN = TrainConfig(epochs=8, batch_tokens=320, lr=1e-2, seed=0, threads=1, progress=False,
                    logits_dtype="float32", label_smoothing=0.0)


def tiny_config(prepared: Prepared, **overrides: object) -> TwoTowerConfig:
    settings = dict(n_items=len(prepared.item_vocab), dim=16, history_len=10, n_layers=1,
                    dropout=0.0)
    return TwoTowerConfig(**{**settings, **overrides})


def train(prepared: Prepared, train_cfg: TrainConfig = TRAIN, **overrides: object) -> TwoTower:
    # fit sets torch's thread count for the run (one thread: on a small model more threads only
    # contend); put it back so later tests in the process are not affected.
    threads = torch.get_num_threads()
    try:
        return fit(prepared, tiny_config(prepared, **overrides), train_cfg).model
    finally:
        torch.set_num_threads(threads)


class TestTwoTower(RecommenderContract):
    PLANTED = (
        # Held-out shoppers (never in training): after a_i always came b_i.
        Planted("next-after-a-is-b", pairs_prepared, (("a3", "view"),), "b3", within=3),
        Planted("most-recent-pair-leads", pairs_prepared,
                (("a1", "view"), ("b1", "addtocart"), ("a4", "view")), "b4", within=3),
    )

    def make_recommender(self, prepared: Prepared) -> Recommender:
        return recommender_for(train(prepared), prepared.item_features)


class TestTransformerTwoTower(TestTwoTower):
    """The same contract and planted answers with the causal transformer as user tower."""

    def make_recommender(self, prepared: Prepared) -> Recommender:
        return recommender_for(train(prepared, encoder="transformer"), prepared.item_features)


class TestHistoryItemTowerTwoTower(TestTwoTower):
    """The same contract and planted answers with the history read through the item tower."""

    def make_recommender(self, prepared: Prepared) -> Recommender:
        return recommender_for(train(prepared, history_item_tower=True), prepared.item_features)


class TestBfloat16LogitsTwoTower(TestTwoTower):
    """The same contract and planted answers trained with bfloat16 logits (``training.kernels``),
    on any CPU: slow where it is emulated, but the same answers."""

    def make_recommender(self, prepared: Prepared) -> Recommender:
        model = train(prepared, replace(TRAIN, logits_dtype="bfloat16"))
        return recommender_for(model, prepared.item_features)


@pytest.fixture(scope="module")
def trained() -> tuple[Prepared, TwoTowerRecommender]:
    p = pairs_prepared()
    rec = TestTwoTower().built(p)   # the fit the contract tests use: trained once
    assert isinstance(rec, TwoTowerRecommender)
    return p, rec


def test_training_beats_an_untrained_model_on_the_planted_pairs(trained) -> None:
    # The planted answer comes from training, not from the interest term or chance: the same
    # architecture untrained does not put b_i first for every a_i.
    p, trained_rec = trained
    rows = [query(p, ((f"a{i}", "view"),)) for i in range(6)]
    want = p.item_vocab.lookup([f"b{i}" for i in range(6)])

    def firsts(rec: Recommender) -> np.ndarray:
        return np.array([rec.recommend(h, 1)[0][0, 0] for h in rows])

    torch.manual_seed(0)
    untrained = recommender_for(TwoTower(tiny_config(p)), p.item_features)
    assert (firsts(trained_rec) == want).sum() >= 5
    assert (firsts(untrained) == want).sum() <= 2


@pytest.mark.parametrize("encoder", ["pooling", "transformer"])
def test_the_newest_item_leads_the_history_it_ends(encoder: str) -> None:
    """Known answer: after a_k comes b_k, whatever came before. Four other pairs ahead of a_k
    blur a summary of the history; with the newest item's vector (``newest_item``, the default)
    the towers put b_k first for every k (the interest term off: the towers alone). The
    pooling tower's weighted mean misses some without it; the transformer, which can attend to
    the last event, keeps them all."""
    p = pairs_prepared()
    rng = np.random.default_rng(3)
    cases = []
    for k in range(6):
        others = rng.choice([j for j in range(6) if j != k], size=4, replace=False)
        events = tuple(e for j in others for e in ((f"a{j}", "view"), (f"b{j}", "addtocart")))
        cases.append((query(p, (*events, (f"a{k}", "view"))), p.item_vocab.lookup([f"b{k}"])[0]))

    def hits(newest_item: bool) -> int:
        model = train(p, newest_item=newest_item, interest=False, encoder=encoder)
        rec = recommender_for(model, p.item_features)
        return sum(int(rec.recommend(h, 1)[0][0, 0] == want) for h, want in cases)

    with_newest, without = hits(True), hits(False)
    assert with_newest == len(cases), (with_newest, without)
    assert without < len(cases) if encoder == "pooling" else without == len(cases), without


def test_a_new_item_ranks_after_the_newest_item_it_resembles() -> None:
    """Known answer for items added after training (no id row, attributes only): a shopper who
    just looked at an item of family F gets the new item of family F above the new items of
    the other families, because the newest item enters the user vector through the item tower
    (with its attributes), not as an id row. Without the newest item the same model ranks the
    new items by the history's summary alone, and the family's new item is not always first."""
    families, per_family = 6, 4
    attributes = {f"f{f}i{i}": f"family{f}" for f in range(families) for i in range(per_family)}
    rows = []
    rng = np.random.default_rng(0)
    for u in range(240):   # each shopper browses a family, then hops to another one
        first, then = rng.choice(families, size=2, replace=False)
        for f in (first, then):
            for i in rng.choice(per_family, size=3, replace=False):
                rows.append((f"u{u}", f"f{f}i{i}"))
    events = frame([(u, item, "view", START + pd.Timedelta(hours=h))
                    for h, (u, item) in enumerate(rows)])
    items = pd.DataFrame({"item_id": pd.array(list(attributes), dtype="string"),
                          "family": list(attributes.values())})
    p = build(DataSpec(kind="events", path="families", text="events:families"),
              FeatureConfig(), EventData(events, items, "families", True), "families")
    n_attributes = AttributeTable.from_features(p.item_features).n_attributes
    assert n_attributes == families
    new = pd.DataFrame({"item_id": pd.array([f"new{f}" for f in range(families)], dtype="string"),
                        "family": [f"family{f}" for f in range(families)]})

    def family_firsts(newest_item: bool) -> int:
        model = train(p, replace(TRAIN, epochs=10), item_id_dropout=0.3, interest=False,
                      n_attributes=n_attributes, newest_item=newest_item)
        towers = TwoTowerRecommender(model, compute_item_vectors(model, p.item_features))
        vectors = new_item_vectors(model, p.item_features, new)
        firsts = 0
        for f in range(families):
            other = (f + 1) % families
            hist = query(p, ((f"f{other}i0", "view"), (f"f{other}i1", "view"),
                             (f"f{f}i2", "view")))
            firsts += int(np.argmax(towers.user_vectors(hist) @ vectors.T) == f)
        return firsts

    with_newest, without = family_firsts(True), family_firsts(False)
    assert with_newest == families and without < families, (with_newest, without)


def test_validation_chooses_the_served_weight_of_the_newest_item() -> None:
    """Known answer: a validation that peaks at weight 1.5 leaves the model at 1.5, and the
    served user vector is the history's vector plus 1.5 times the newest item's vector,
    normalized (training adds it whole); a model without the path is validated once, as it
    is."""
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=20, dim=16, history_len=6, dropout=0.0)).eval()
    tried = []

    def peaks_at_one_and_a_half(m: TwoTower) -> float:
        tried.append(float(m.newest_weight))
        return 1.0 - abs(float(m.newest_weight) - 1.5)

    score, by_weight = validate_newest(model, peaks_at_one_and_a_half)
    assert score == 1.0 and by_weight == {0.0: -0.5, 1.0: 0.5, 1.5: 1.0}
    assert tried == list(NEWEST_WEIGHTS) and newest_weight(model) == 1.5
    items = torch.tensor([[0, 0, 3, 5, 9, 2]])
    mask = items > 0
    inputs = (items, torch.zeros_like(items), torch.full(items.shape, float("nan")), mask)
    with torch.no_grad():
        item_vectors = model.item_embed(torch.arange(20))
        history = model.user_embed(*inputs)
        served = TwoTowerRecommender(model, item_vectors.numpy())._encode(
            Histories(np.array(["u"], dtype=object), np.array([0, 4]), np.array([3, 5, 9, 2]),
                      np.zeros(4, np.int8), np.full(4, np.nan, np.float32),
                      np.arange(3, -1, -1, dtype=np.int32), np.full(4, NAT_MS)))[1]
        torch.testing.assert_close(served, F.normalize(history + 1.5 * item_vectors[[2]]))
        model.train()   # training adds the newest item whole, whatever the served weight
        trained_ = model.with_newest_item(model.user_embed(*inputs, all_positions=True),
                                          item_vectors[items], mask)[:, -1]
    torch.testing.assert_close(trained_, F.normalize(history + item_vectors[[2]]))
    plain = TwoTower(TwoTowerConfig(n_items=20, dim=16, newest_item=False)).eval()
    tried.clear()
    assert validate_newest(plain, lambda m: tried.append(1) or 0.3) == (0.3, {})
    assert tried == [1] and newest_weight(plain) is None


def test_user_vectors_are_unit_length_and_zero_for_empty_histories(trained) -> None:
    p, rec = trained
    hist = query(p, (("a2", "view"), ("b2", "addtocart")))
    vecs = rec.user_vectors(hist)
    assert vecs.shape == (1, 16) and vecs.dtype == np.float32
    assert np.linalg.norm(vecs, axis=1) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(rec.user_vectors(empty_histories(2)), 0.0)
    np.testing.assert_allclose(np.linalg.norm(rec.item_vectors, axis=1), 1.0, atol=1e-5)


def test_score_is_tower_dot_product_plus_interest_on_history_items(trained) -> None:
    p, rec = trained
    hist = query(p, (("a2", "view"), ("b5", "addtocart")))
    tower = rec.user_vectors(hist) @ rec.item_vectors.T / rec.model.cfg.temperature
    extra = rec.score(hist) - tower
    in_history = np.zeros(rec.n_items, dtype=bool)
    in_history[p.item_vocab.lookup(["a2", "b5"])] = True
    # The interest boost touches the history's items only, and it is a boost (log1p > 0 times a
    # scale the training has kept positive on this data).
    np.testing.assert_allclose(extra[0, ~in_history], 0.0, atol=1e-4)
    assert (np.abs(extra[0, in_history]) > 1e-4).all()


def test_interest_off_gives_the_pure_tower_score(trained) -> None:
    p, _ = trained
    model = TwoTower(tiny_config(p, interest=False))
    rec = recommender_for(model, p.item_features)
    hist = query(p, (("a2", "view"), ("b5", "addtocart")))
    tower = rec.user_vectors(hist) @ rec.item_vectors.T / model.cfg.temperature
    np.testing.assert_allclose(rec.score(hist), tower, rtol=1e-5, atol=1e-4)


def test_recommender_for_uses_the_models_item_vectors(trained) -> None:
    p, rec = trained
    np.testing.assert_array_equal(rec.item_vectors, compute_item_vectors(rec.model,
                                                                         p.item_features))
    assert rec.n_items == len(p.item_vocab) and not rec.model.training


def test_history_beyond_history_len_is_cut_to_the_most_recent(trained) -> None:
    # history_len 10: eleven older events in front of the same last ten change nothing.
    p, rec = trained
    last = tuple((f"a{i % 6}", "view") for i in range(10))
    longer = tuple((f"b{i % 6}", "addtocart") for i in range(11)) + last
    a, b = query(p, last), query(p, longer)
    assert a.lengths[0] == 10 and b.lengths[0] == 21
    np.testing.assert_allclose(rec.score(a), rec.score(b), rtol=1e-5, atol=1e-5)


# --- item attributes -----------------------------------------------------------------------------

def attribute_table(n_items: int, per_item: list[list[int]], n_attributes: int) -> ItemTable:
    lengths = [len(a) for a in per_item]
    table = AttributeTable(np.array([f"t={k}" for k in range(n_attributes)], dtype=object),
                           np.r_[0, np.cumsum(lengths)].astype(np.int64),
                           np.array([a for attrs in per_item for a in attrs], dtype=np.int64))
    return ItemTable(np.full(n_items, -1, dtype=np.int64), table)


def test_with_blank_id_rows_an_item_is_the_mean_of_its_attributes() -> None:
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=5, n_attributes=3, dim=16)).eval()
    items = attribute_table(5, [[0], [0], [1], [0, 1], []], 3)
    with torch.no_grad():
        with_ids = model.item_embed(*items.all)
        model.embeddings.embeddings["item"].weight.zero_()
        blank = model.item_embed(*items.all)
        rows = model.attribute_bags.embedding_bags["attribute"].weight
        nothing = model.item_embed(torch.tensor([4]), None, None, None)  # bias only: no inputs
    torch.testing.assert_close(blank[0], blank[1])          # same attributes, same vector
    assert not torch.allclose(blank[0], blank[2])
    assert not torch.allclose(with_ids[0], with_ids[1])     # the id rows tell them apart
    torch.testing.assert_close(blank[4], nothing[0])        # no attributes: nothing added
    expected = F.normalize(model.item_out((rows[0] + rows[1]) / 2) + (rows[0] + rows[1]) / 2,
                           dim=-1)
    torch.testing.assert_close(blank[3], expected)


def test_items_sharing_a_bag_get_the_vectors_of_their_own_bags() -> None:
    """``ItemTable`` pools each distinct attribute set once; the vectors, and the gradient a
    training step gives the attribute rows, are those of one bag per item."""
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=6, n_attributes=3, dim=16))
    items = attribute_table(6, [[0, 1], [2], [0, 1], [], [2], [0, 1]], 3)
    shared = items.all
    assert shared.attribute_lengths.tolist() == [2, 1, 0]
    per_item = (shared.items, shared.categories,
                *(torch.from_numpy(a) for a in items.attributes.take(np.arange(6))))
    upstream = torch.randn(6, 16)
    vectors, grads = [], []
    for inputs in (shared, per_item):
        model.zero_grad()
        vec = model.item_embed(*inputs)
        (vec * upstream).sum().backward()
        vectors.append(vec.detach())
        grads.append(model.attribute_bags.embedding_bags["attribute"].weight.grad.clone())
    torch.testing.assert_close(vectors[0], vectors[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1])


def test_training_moves_the_attribute_rows_of_the_candidates() -> None:
    p = pairs_prepared()
    n = len(p.item_vocab)
    # Attribute 0 on every item, attribute 1 on none: only row 0 can learn.
    items = attribute_table(n, [[0]] * n, 2)
    model = TwoTower(tiny_config(p, n_attributes=2))
    bags = model.attribute_bags.embedding_bags["attribute"].weight
    before = bags.detach().clone()
    batch = collate(make_windows(p.split.fold("train"), p.item_vocab, 10), np.arange(8))
    loss = batch_loss(model, model.cfg, batch, items, torch.ones(3), None, 0)
    loss.backward()
    assert bags.grad is not None and bags.grad[0].abs().sum() > 0
    assert bags.grad[1].abs().sum() == 0
    torch.testing.assert_close(bags.detach(), before)


def test_sized_for_counts_the_attributes_of_the_data() -> None:
    shop_prepared, _ = small_shop()
    n = AttributeTable.from_features(shop_prepared.item_features).n_attributes
    assert n > 0   # the embedded shop's items carry a parent category and a price
    base = TwoTowerConfig(n_items=0)
    assert sized_for(base, shop_prepared).n_attributes == n
    assert sized_for(replace(base, attributes=False), shop_prepared).n_attributes == 0
    model = TwoTower(sized_for(base, shop_prepared))
    vecs = compute_item_vectors(model, shop_prepared.item_features)
    no_attributes = compute_item_vectors(model, shop_prepared.item_features.drop(
        columns=TOKENS_COLUMN))
    assert vecs.shape == no_attributes.shape and not np.allclose(vecs, no_attributes)


def test_a_new_item_is_placed_by_its_category_and_attributes_alone() -> None:
    p, _ = small_shop()
    torch.manual_seed(0)
    model = TwoTower(sized_for(TwoTowerConfig(n_items=0), p))
    with torch.no_grad():
        model.embeddings.embeddings["item"].weight.zero_()   # as if no item had an id row
    known = compute_item_vectors(model, p.item_features)
    rows = np.array([0, 5, 17])
    twins = p.items.set_index("item_id").loc[p.item_vocab.ids[rows]].reset_index()
    twins["item_id"] = ["new-a", "new-b", "new-c"]          # same metadata, never trained
    np.testing.assert_allclose(new_item_vectors(model, p.item_features, twins), known[rows],
                               rtol=1e-5, atol=1e-6)
    # a category and attributes the model never saw: nothing to go on but the bias
    stranger = twins.iloc[[0]].assign(category_id="no-such-category",
                                      parent_category_id="nowhere", price=np.nan)
    none = torch.zeros(1, dtype=torch.long)
    bare = model.item_embed(-none - 1, -none - 1, none[:0], none).detach().numpy()
    np.testing.assert_allclose(new_item_vectors(model, p.item_features, stranger), bare,
                               rtol=1e-5, atol=1e-6)


def test_serving_looks_up_the_same_rows_as_the_keyed_jagged_path() -> None:
    p, _ = small_shop()
    torch.manual_seed(0)
    model = TwoTower(sized_for(TwoTowerConfig(n_items=0), p)).eval()
    hist = torch.tensor([3, 1, 4, 1, 5], dtype=torch.long)
    lengths = torch.tensor([2, 0, 3], dtype=torch.long)
    cands, cats = torch.tensor([9, 2, 6]), torch.tensor([0, 1, 0])
    direct = model._lookup(hist, lengths, cands, cats)
    model.training = True   # the KeyedJaggedTensor path (training, sharded tables)
    jagged = model._lookup(hist, lengths, cands, cats)
    model.training = False
    assert set(direct) == set(jagged) == {"hist_item", "cand_item", "cand_category"}
    for key in direct:
        torch.testing.assert_close(direct[key], jagged[key])


@pytest.mark.parametrize("mask_padding", [True, False])
def test_the_transformer_reads_a_short_history_alike_whatever_its_padding(
        mask_padding: bool) -> None:
    """The same 3 events, right-aligned in a window of 3 and of 10: with the padding masked the
    user vector is the same; attended (the behaviour of bundles from before the setting) the 7
    pads change it."""
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=20, dim=16, history_len=10, encoder="transformer",
                                    n_layers=2, mask_padding=mask_padding)).eval()

    def user(width: int) -> torch.Tensor:
        items = torch.full((1, width), 0, dtype=torch.long)
        items[0, -3:] = torch.tensor([4, 7, 2])
        events = torch.zeros((1, width), dtype=torch.long)
        gaps = torch.full((1, width), float("nan"))
        mask = torch.zeros((1, width), dtype=torch.bool)
        mask[0, -3:] = True
        with torch.no_grad():
            return model.user_embed(items, events, gaps, mask)

    same = torch.allclose(user(3), user(10), atol=1e-5)
    assert same == mask_padding


@pytest.mark.parametrize(("encoder", "mask_padding", "trims"), [
    ("pooling", True, True), ("transformer", True, True), ("transformer", False, False)])
def test_served_batches_are_as_wide_as_their_longest_history_where_padding_is_ignored(
        encoder: str, mask_padding: bool, trims: bool) -> None:
    """Serving right-aligns histories only as wide as the longest one, not ``history_len``,
    where the tower ignores padding: the user vectors and scores are those of the full width.
    The unmasked transformer of older bundles attends to padding, so it keeps the full width."""
    torch.manual_seed(0)
    p = pairs_prepared()
    model = TwoTower(tiny_config(p, encoder=encoder, mask_padding=mask_padding)).eval()
    rec = TwoTowerRecommender(model, compute_item_vectors(model, p.item_features))
    assert model.ignores_padding == trims
    hist = fold_histories(p)
    assert hist.lengths.max() < model.cfg.history_len   # padding left of every history
    batch, _ = rec._encode(hist)
    assert batch.inputs.items.shape[1] == (hist.lengths.max() if trims else 10)
    full = history_batch(hist, model.cfg.history_len)
    newest = full.inputs.items[:, -1]
    with torch.no_grad():
        want = model.with_newest_item(model.user_embed(*full.inputs), rec._items_t[newest],
                                      full.inputs.mask[:, -1])
    np.testing.assert_allclose(rec.user_vectors(hist), want.numpy(), atol=1e-6)
    rows = np.arange(5)
    np.testing.assert_allclose(rec.score_items(hist, rows), rec.score(hist)[:, rows], atol=1e-5)


def saved_before(bundle: Path, folder: Path, setting: str) -> dict:
    """A copy of ``bundle`` in ``folder`` whose bundle.json lacks the model ``setting``, as a
    bundle saved before the setting existed; returns its bundle.json."""
    shutil.copytree(bundle, folder)
    info = json.loads((folder / "bundle.json").read_text())
    del info["model"][setting]
    (folder / "bundle.json").write_text(json.dumps(info))
    return info


def test_a_bundle_saved_before_mask_padding_loads_with_it_off(tiny_bundle: Path,
                                                             tmp_path: Path) -> None:
    assert Bundle.load(tiny_bundle).model.cfg.mask_padding   # saved now: on
    saved_before(tiny_bundle, tmp_path / "before", "mask_padding")
    assert not Bundle.load(tmp_path / "before").model.cfg.mask_padding


def test_bundles_saved_before_newest_item_load_as_they_were_trained(tiny_bundle: Path,
                                                                    tmp_path: Path) -> None:
    """A bundle saved before ``newest_item`` serves without it; one saved with the pooling
    tower's ``newest`` (the newest event's id row in the pool, since replaced) is refused with
    what to do, not served as a model it is not; ``newest`` off loads."""
    assert Bundle.load(tiny_bundle).model.cfg.newest_item   # saved now: on

    def saved_with(name: str, model_settings: dict) -> Path:
        folder = tmp_path / name
        shutil.copytree(tiny_bundle, folder)
        info = json.loads((folder / "bundle.json").read_text())
        del info["model"]["newest_item"]
        info["model"].update(model_settings)
        (folder / "bundle.json").write_text(json.dumps(info))
        weights = torch.load(folder / "model.pt", weights_only=True)
        del weights["newest_weight"]   # the buffer came with the setting
        torch.save(weights, folder / "model.pt")
        return folder

    for name, settings in (("before", {}), ("pool-off", {"newest": False})):
        bundle = Bundle.load(saved_with(name, settings))
        assert not bundle.model.cfg.newest_item and newest_weight(bundle.model) is None
    pool = saved_with("pool-on", {"newest": True})
    with pytest.raises(DataError, match=r"bundle\.json.*'newest' = True.*retrain"):
        Bundle.load(pool)


def prefix_vectors(model: TwoTower, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training's user vectors at every position of right-aligned histories ``items`` (B, L;
    0 = padding), and serving's vector of each prefix ending there (the prefix right-aligned
    alone), both (B, L, dim) at the real positions."""
    mask = items > 0
    events = torch.zeros_like(items)
    gaps = torch.full(items.shape, float("nan"))
    with torch.no_grad():
        every = model.user_embed(items, events, gaps, mask, all_positions=True)
        served = torch.zeros_like(every)
        for t in range(items.shape[1]):
            served[:, t] = model.user_embed(items[:, :t + 1], events[:, :t + 1],
                                            gaps[:, :t + 1], mask[:, :t + 1])
    return every * mask.unsqueeze(-1), served * mask.unsqueeze(-1)


@pytest.mark.parametrize("encoder", ["pooling", "transformer"])
@pytest.mark.parametrize("recency", [True, False])
def test_each_training_position_encodes_its_prefix_as_serving_would(encoder: str,
                                                                     recency: bool) -> None:
    """Training scores every position of a window at once; each must get the vector serving
    gives that position's prefix, or the model learns weights it is not served with. With
    ``recency`` / ``attention_recency`` (the defaults) the pool or the attention weighs events
    by steps back from the position, the same in both. Position vectors counted from the
    window's end (bundles from before the settings) give the newest event of a prefix another
    position id than serving does."""
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=30, dim=16, history_len=8, encoder=encoder,
                                    recency=recency, attention_recency=recency)).eval()
    if recency:
        decay = -torch.arange(10, dtype=torch.float32)  # steep enough to matter, as learned
        with torch.no_grad():
            if encoder == "pooling":
                model.pool_recency.copy_(decay)
            else:   # one steep head, one mild
                model.attention_recency.copy_(torch.stack([decay, 0.3 * decay], dim=1))
    items = torch.tensor([[3, 9, 4, 4, 12, 7, 25, 1], [0, 0, 0, 5, 18, 2, 2, 29]])
    every, served = prefix_vectors(model, items)
    assert torch.allclose(every, served, atol=1e-5) == recency


def test_the_history_through_the_item_tower_reads_the_vectors_it_is_given() -> None:
    """With ``history_item_tower`` the user tower encodes the item vectors it is handed (those
    of the index when serving, the candidates' in training), so every training position still
    gets the vector serving gives its prefix; without them it refuses rather than guess."""
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=30, dim=16, history_len=8,
                                    history_item_tower=True)).eval()
    with torch.no_grad():
        model.pool_recency.copy_(-torch.arange(10, dtype=torch.float32))
        vectors = model.item_embed(torch.arange(30))
    items = torch.tensor([[3, 9, 4, 4, 12, 7, 25, 1], [0, 0, 0, 5, 18, 2, 2, 29]])
    mask, events = items > 0, torch.zeros_like(items)
    gaps = torch.full(items.shape, float("nan"))
    with torch.no_grad():
        every = model.user_embed(items, events, gaps, mask, all_positions=True,
                                 history_vectors=vectors[items])
        for t in range(items.shape[1]):
            served = model.user_embed(items[:, :t + 1], events[:, :t + 1], gaps[:, :t + 1],
                                      mask[:, :t + 1], history_vectors=vectors[items[:, :t + 1]])
            real = mask[:, t]
            torch.testing.assert_close(every[real, t], served[real], atol=1e-5, rtol=1e-5)
        other = model.user_embed(items, events, gaps, mask,
                                 history_vectors=torch.randn(*items.shape, 16))
    assert not torch.allclose(other, every[:, -1], atol=1e-3)   # the vectors are what it reads
    with pytest.raises(ValueError, match="history_vectors"):
        model.user_embed(items, events, gaps, mask)


def test_an_attention_bias_for_steps_back_zero_alone_encodes_each_event_on_its_own() -> None:
    """Known answer: when every head's bias blocks all but the newest key, each position
    attends to its own event only, so its vector is that of a history holding that one event
    (at every position in training, and at the last in serving)."""
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=30, dim=16, history_len=8, encoder="transformer",
                                    newest_item=False)).eval()
    with torch.no_grad():
        model.attention_recency.fill_(-1e4)
        model.attention_recency[0] = 0.0
    items = torch.tensor([[3, 9, 4, 4, 12, 7, 25, 1]])
    every, _ = prefix_vectors(model, items)
    alone, _ = prefix_vectors(model, items.T)   # each event as a history of its own
    torch.testing.assert_close(every[0], alone[:, 0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        model.attention_recency.zero_()   # flat: the later positions attend to the earlier
    assert not torch.allclose(prefix_vectors(model, items)[0][0, 1:], alone[1:, 0], atol=1e-3)


def test_recency_weighs_the_events_by_steps_back_from_the_newest() -> None:
    """Known answer: with the content score flat, a pooled history is the mean of its event
    vectors weighted by exp(bias of steps back): 0, 1, 2, 3-4 back in their own buckets."""
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=30, dim=16, history_len=8, newest_item=False,
                                    dropout=0.0)).eval()
    bias = torch.tensor([0.0, -1.0, -2.0, -3.0, 0, 0, 0, 0, 0, 0])
    with torch.no_grad():
        model.pool_score.weight.zero_()
        model.pool_score.bias.zero_()
        model.pool_recency.copy_(bias)
    x = torch.randn(1, 5, 16)
    mask = torch.ones(1, 5, dtype=torch.bool)
    # Steps back of the 5 events, oldest first: 4, 3, 2, 1, 0 -> buckets 3, 3, 2, 1, 0.
    weights = torch.softmax(torch.tensor([-3.0, -3.0, -2.0, -1.0, 0.0]), dim=0)
    with torch.no_grad():
        torch.testing.assert_close(model._pool(x, mask, all_positions=False)[0], weights @ x[0])
        torch.testing.assert_close(model._pool(x, mask, all_positions=True)[0, -1],
                                   weights @ x[0])


def test_transformers_saved_before_attention_recency_load_with_their_position_vectors(
        tmp_path: Path) -> None:
    """A transformer bundle from before ``attention_recency`` was trained with position
    vectors and no attention bias: its settings load with the bias off, and its weights fit."""
    old = TwoTowerConfig(n_items=30, dim=16, history_len=8, encoder="transformer",
                         attention_recency=False)
    saved = old.to_dict()
    del saved["attention_recency"]
    cfg = model_config(saved, tmp_path)
    assert cfg == old
    model = TwoTower(cfg)
    model.load_state_dict(TwoTower(old).state_dict())
    assert model.pos_emb is not None and not hasattr(model, "attention_recency")
    assert TwoTower(replace(old, attention_recency=True)).pos_emb is None


def test_bundles_saved_before_recency_load_as_they_were_trained(tiny_bundle: Path,
                                                                 tmp_path: Path) -> None:
    """A bundle from before ``recency`` holds position vectors and no recency weights: it loads
    with the setting off and serves the vectors it was trained with."""
    assert Bundle.load(tiny_bundle).model.cfg.recency   # saved now: on
    old = tmp_path / "before"
    info = saved_before(tiny_bundle, old, "recency")
    weights = torch.load(old / "model.pt", weights_only=True)
    del weights["pool_recency"]
    cfg = info["model"]
    weights["pos_emb.weight"] = torch.full((cfg["history_len"], cfg["dim"]), 0.5)
    torch.save(weights, old / "model.pt")
    model = Bundle.load(old).model
    assert not model.cfg.recency and not hasattr(model, "pool_recency")
    assert torch.equal(model.pos_emb.weight, weights["pos_emb.weight"])
