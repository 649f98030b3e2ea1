"""Training on two processes: TorchRec's DistributedModelParallel over gloo, under torchrun.

The fast tests cover the pure pieces: how one batch is shared between ranks and the sharding
plan. The slow ones launch ``torchrun --nproc_per_node=2``: once on this module (``__main__``
below: each rank fits a tiny model and saves what it ended with; the ranks must agree and have
counted every training example exactly once) and once on ``training.train`` end to end (rank 0's
bundle loads, recommends, and ranks in the range of a one-process run with the same settings).
Bad input under the launcher ``make train`` uses stays an error line and exit 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import training.train as train
from features.pipeline import Prepared, prepare
from features.spec import parse_spec
from models.bundle import Bundle
from models.two_tower import TwoTower, TwoTowerConfig
from tests.conftest import TINY_MODEL
from training.data import make_windows
from training.distributed import Group, batch_share, sharding_plan, world_size
from training.fit import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2"]
# Settings passed in full: the tests must not move when TrainConfig's defaults do.
TINY = [*TINY_MODEL, "--epochs", "2", "--patience", "5", "--max-minutes", "10",
        "--valid-users", "300", "--no-mlflow"]
TINY_TRAIN = TrainConfig(epochs=2, patience=5, max_minutes=10.0, batch_tokens=8192,
                         progress=False)
VALID_USERS = 300
THREADS_TOL = 2e-3  # a swapped near-tie moves NDCG@10 of a few hundred shoppers by about this


# --- fast: sharing a batch, the plan -----------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_batch_share_gives_every_rank_windows_and_counts_each_once(world: int) -> None:
    rng = np.random.default_rng(0)
    for size in [*range(1, 9), 37]:
        idx = rng.permutation(100)[:size]
        for step in range(4):
            shares = [batch_share(idx, r, world, step) for r in range(world)]
            assert all(len(s) for s, _ in shares)  # nobody skips a collective
            counted = np.concatenate([s for s, counts in shares if counts])
            assert sorted(counted) == sorted(idx)  # disjoint and covering
            if size >= world:
                assert all(counts for _, counts in shares)
                sizes = [len(s) for s, _ in shares]
                assert max(sizes) - min(sizes) <= 1
            else:  # the ranks left over repeat a window of the batch, uncounted
                assert sum(counts for _, counts in shares) == size
                assert all(set(s) <= set(idx) for s, _ in shares)


def test_batch_share_turns_the_odd_window_and_refuses_an_empty_batch() -> None:
    idx = np.arange(5)
    big = [[len(batch_share(idx, r, 2, step)[0]) for r in range(2)] for step in range(4)]
    assert big == [[3, 2], [2, 3], [3, 2], [2, 3]]
    counting = [[batch_share(idx[:1], r, 2, step)[1] for r in range(2)] for step in range(2)]
    assert counting == [[True, False], [False, True]]
    assert list(batch_share(idx, 1, 2, 0)[0]) == [1, 3]  # strided: lengths alike
    with pytest.raises(ValueError, match="empty"):
        batch_share(idx[:0], 0, 2, 0)


def test_sharding_plan_puts_each_table_whole_on_one_rank() -> None:
    model = TwoTower(TwoTowerConfig(n_items=30, n_categories=4, dim=8, history_len=5))
    for world, ranks in ((1, {"item": [0], "category": [0]}), (2, {"item": [0], "category": [1]})):
        plan = sharding_plan(model, world).plan["embeddings"]
        assert set(plan) == {"item", "category"}
        for table, sharding in plan.items():
            assert sharding.sharding_type == "table_wise"
            assert sharding.compute_kernel == "fused"
            assert sharding.ranks == ranks[table]


def test_one_process_opens_no_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world_size() == 1
    with Group.open() as group:
        assert group is None


# --- slow: two ranks under torchrun ------------------------------------------------------------

def launch(cmd: list[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}}
    env |= {"TAILOR_CACHE": str(tmp / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/ml.db"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    return done


def tiny_model_config(prepared: Prepared) -> TwoTowerConfig:
    args = train.build_parser().parse_args(TINY)
    return train.model_config(args, prepared)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("distributed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TAILOR_CACHE", str(root / "cache"))  # the one the launches use
        prepared = prepare(parse_spec("synthetic"))
    return {"root": root, "prepared": prepared}


@pytest.mark.slow
def test_two_ranks_agree_and_train_on_every_example_once(shop: dict[str, Any]) -> None:
    root, prepared = shop["root"], shop["prepared"]
    out = root / "fit"
    launch([*TORCHRUN, "-m", "tests.training.test_distributed", str(out)], root)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert all(r["world"] == 2 and r["wrapped_weights_equal"] for r in ranks)
    # rank 1 took rank 0's validation scores and clock: the same epochs, the same best
    timeless = [[{k: v for k, v in rec.items() if k != "examples_per_s"} for rec in r["history"]]
                for r in ranks]
    assert timeless[0] == timeless[1]
    assert ranks[0]["best_epoch"] == ranks[1]["best_epoch"]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    # each epoch trains on every target of the train fold once, spread over both ranks
    cfg = tiny_model_config(prepared)
    per_epoch = make_windows(prepared.split.fold("train"), prepared.item_vocab,
                             cfg.history_len).n_examples
    history = ranks[0]["history"]
    assert len(history) == TINY_TRAIN.epochs
    for record in history:
        assert record["examples"] == per_epoch == sum(record["rank_examples"])
        assert min(record["rank_examples"]) > 0.4 * per_epoch
    assert history[-1]["loss"] < history[0]["loss"]
    # the kept model is the validated one, and a plain TwoTower
    model = TwoTower(cfg)
    model.load_state_dict(ranks[0]["state"])
    validate = train.validator(prepared, VALID_USERS, TINY_TRAIN.seed)
    best = max(r["valid_score"] for r in history)
    # (ranks run 1 thread, this process more: float sums may break a rare near-tie differently)
    assert validate(model) == pytest.approx(best, abs=THREADS_TOL)


@pytest.mark.slow
def test_make_train_on_two_ranks_ranks_like_one(shop: dict[str, Any]) -> None:
    root, prepared = shop["root"], shop["prepared"]
    python = [sys.executable, "-m", "training.train"]
    launch([*python, *TINY, "--out", str(root / "one")], root)
    launch([*TORCHRUN, "-m", "training.train", *TINY, "--out", str(root / "two")], root)
    single, double = Bundle.load(root / "one"), Bundle.load(root / "two")
    fits = [b.info["fit"] for b in (single, double)]
    assert [f["examples"] for f in fits] == [fits[0]["examples"]] * 2
    assert all(min(r["rank_examples"]) > 0 for r in fits[1]["history"])
    # both refitted the served model on every event, over both ranks for the torchrun launch
    refits = [b.info["refit"] for b in (single, double)]
    assert refits[0]["epochs_run"] == refits[1]["epochs_run"] >= 1
    assert refits[0]["examples"] == refits[1]["examples"]
    assert all(min(r["rank_examples"]) > 0 for r in refits[1]["history"])
    assert set(double.item_vocab.ids) == set(prepared.events["item_id"])
    # the saved bundle is the refitted model: it recommends
    users = sorted(double.histories.user_ids)[:50]
    rows, scores = double.recommender.recommend(double.histories.of(users), 10)
    assert rows.shape == (50, 10) and np.isfinite(scores).all()
    test = [b.info["metrics"]["test"] for b in (single, double)]
    # same range as one process, and far above popularity
    ndcg = [t["tailor"]["ndcg@10"] for t in test]
    assert ndcg[1] > 0.8 * ndcg[0] and ndcg[1] > 2 * test[1]["most-popular"]["ndcg@10"]


@pytest.mark.slow
def test_bad_input_on_two_ranks_is_an_error_line_and_exit_2(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "training.distributed", *TORCHRUN[1:], "-m", "training.train",
           "--data", f"events:{tmp_path}/nonexistent.csv"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TAILOR_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = {line for line in done.stderr.splitlines() if line.startswith("error: ")}
    assert len(errors) == 1 and "nonexistent.csv" in errors.pop()  # each rank says the same


def _fit_on_this_rank(out: Path) -> None:
    """Run by each rank under torchrun (see the first slow test): wrap and gather round trip,
    then a tiny fit in the group opened here; what the rank ended with goes to ``out``."""
    torch.distributed.init_process_group("gloo")
    prepared = prepare(parse_spec("synthetic"))
    cfg = tiny_model_config(prepared)
    with Group.open() as group:  # already open: fit and this leave it to its opener
        torch.manual_seed(0)
        model = TwoTower(cfg)
        dmp, _ = group.wrap(model, TINY_TRAIN.lr, TINY_TRAIN.weight_decay)
        plain = TwoTower(cfg)
        group.gather(dmp, into=plain)
        same = all(torch.equal(v, plain.state_dict()[k]) for k, v in model.state_dict().items())
        validate = train.validator(prepared, VALID_USERS, TINY_TRAIN.seed)
        result = fit(prepared, cfg, TINY_TRAIN, validate)
        assert torch.distributed.is_initialized()
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"world": group.world, "wrapped_weights_equal": same,
                    "history": result.history, "best_epoch": result.best_epoch,
                    "state": result.model.state_dict()}, out / f"rank{group.rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _fit_on_this_rank(Path(sys.argv[1]))
