"""The training loop: seeded, deterministic, early-stopped on the validation split."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm import tqdm

from features.config import setting
from features.item_attributes import AttributeTable
from features.pipeline import Prepared
from models.inputs import ItemTable
from models.two_tower import TwoTower, TwoTowerConfig
from training.data import (
    collate,
    length_bucketed_batches,
    make_windows,
    sample_windows,
    timeline_order,
)
from training.distributed import Group, batch_share
from training.kernels import adamw, dtype_name, logits_dtype
from training.loss import batch_loss


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = setting(40, "most epochs; early stopping usually ends sooner")
    patience: int = setting(3, "epochs without a validation gain before stopping")
    batch_tokens: int = setting(
        256,
        "history positions per training step (windows of similar length batched together)")
    lr: float = setting(5e-3, "AdamW learning rate")
    label_smoothing: float = setting(
        0.3,
        "share of each target's loss spread evenly over the catalog (full softmax only), so the "
        "model stops pushing its top items ever further apart; 0 turns it off")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    view_weight: float = setting(1.0, "loss weight of a view target")
    cart_weight: float = setting(2.0, "loss weight of an add-to-cart target")
    purchase_weight: float = setting(4.0, "loss weight of a purchase target")
    full_softmax_max_items: int = setting(
        60_000,
        "catalog size up to which the loss is a full softmax; above it a sampled softmax with "
        "logQ correction")
    n_negatives: int = setting(8192, "negatives per batch of the sampled softmax")
    logits_dtype: str = setting(
        "auto",
        "dtype of the softmax's logit matmul: bfloat16 (float32 logits from bfloat16 factors, "
        "about 5x faster where the CPU has AVX512-BF16 or AMX), float32, or auto (bfloat16 on "
        "such CPUs)")
    max_minutes: float = setting(
        7.0,
        "wall-clock budget for the epochs of both fits (evaluation and the refit for serving), "
        "in minutes")
    max_epoch_examples: int = setting(
        250_000,
        "an epoch trains on a fresh random sample of about this many targets when the log has "
        "more (0: always all)")
    seed: int = setting(
        0,
        "seed of training (initialization, order, sampling) and of the validation sample")
    threads: int = setting(0, "torch CPU threads (0: every core)")
    progress: bool = setting(True, "show a progress bar per epoch")

    def target_weights(self) -> torch.Tensor:
        """The loss weight of a view, cart and purchase target, indexed by event code."""
        return torch.tensor([self.view_weight, self.cart_weight, self.purchase_weight])

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    model: TwoTower
    best_epoch: int
    best_score: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    examples: int = 0
    logits_dtype: str = "float32"   # what ``TrainConfig.logits_dtype`` resolved to


def sized_for(model_cfg: TwoTowerConfig, prepared: Prepared) -> TwoTowerConfig:
    """``model_cfg`` with the sizes of ``prepared``'s data: items, categories, attributes, history
    length."""
    cats = prepared.item_features.get("category_idx")
    n_categories = int(cats.max()) + 1 if cats is not None and len(cats) else 0
    n_attributes = AttributeTable.from_features(prepared.item_features).n_attributes \
        if model_cfg.attributes else 0
    return replace(model_cfg, n_items=len(prepared.item_vocab), n_categories=max(n_categories, 0),
                   n_attributes=n_attributes, history_len=prepared.config.history_len)


# Weights of the newest item's vector in the served user vector (``TwoTowerConfig.newest_item``)
# that validation tries after every epoch (training adds it at 1). Next-item data wants it whole
# (valid NDCG@10 at 0 / 1 / 1.5: Sports 0.025 / 0.041 / 0.039); data judged on what shoppers cart
# over the coming days may want the history alone (the embedded shop chose 0). A finer grid
# chases the validation sample's noise: with the pooling tower's earlier newest-event path
# Sports scored best at 0.5 on validation, and its towers then reached test HR@10 0.0505
# against 0.0559 at 1.
NEWEST_WEIGHTS = (0.0, 1.0, 1.5)


def validate_newest(model: TwoTower, validate: Callable[[TwoTower], float]
                    ) -> tuple[float, dict[float, float]]:
    """``validate(model)`` at each of ``NEWEST_WEIGHTS`` where the model has the newest-event
    path; the model keeps the best weight (the smallest on a tie). Returns that score and the
    score of every weight tried (none without the path)."""
    weight = getattr(model, "newest_weight", None)
    if weight is None:
        return validate(model), {}
    scores = {}
    for candidate in NEWEST_WEIGHTS:
        weight.fill_(candidate)
        scores[candidate] = validate(model)
    chosen = max(scores, key=scores.__getitem__)
    weight.fill_(chosen)
    return scores[chosen], scores


def newest_weight(model: TwoTower) -> float | None:
    """The served weight of the newest event, None where the model has no such path."""
    weight = getattr(model, "newest_weight", None)
    return None if weight is None else float(weight)


def share_newest_weight(model: TwoTower, by_weight: dict[float, float], group: Group
                        ) -> dict[float, float]:
    """Rank 0 validates: every rank takes its chosen newest-item weight (so all save and serve
    the same model) and its score per weight (so all keep the same epoch records)."""
    if newest_weight(model) is None:
        return by_weight
    shared = group.from_main(newest_weight(model),
                             *(by_weight.get(w, math.nan) for w in NEWEST_WEIGHTS))
    model.newest_weight.fill_(shared[0])
    return dict(zip(NEWEST_WEIGHTS, shared[1:], strict=True))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def fit(prepared: Prepared, model_cfg: TwoTowerConfig, cfg: TrainConfig,
        validate: Callable[[TwoTower], float] | None = None,
        model: TwoTower | None = None,
        on_epoch: Callable[[dict], None] | None = None, *,
        keep_last: bool = False,
        reserve_minutes: Callable[[FitResult], float] | None = None) -> FitResult:
    """Train on the train fold; keep the weights of the best validation epoch.

    ``validate`` scores the model on the validation fold (higher is better); ``on_epoch``
    receives each epoch's record (loss, examples/s, validation score) as it is made.
    ``keep_last``: keep the last epoch's weights (the refit, whose epoch count was chosen
    already). ``reserve_minutes(best so far)``: minutes of ``cfg.max_minutes`` to leave for what
    comes after this fit (the refit), so the run's budget covers both.
    """
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = model or TwoTower(model_cfg)
    rng = np.random.default_rng(cfg.seed)
    ordered = prepared.ordered
    train = prepared.split.fold("train")
    item_table = ItemTable.from_features(prepared.item_features)
    weights = cfg.target_weights()
    sampler = None
    if model_cfg.n_items > cfg.full_softmax_max_items:
        counts = np.bincount(prepared.item_vocab.lookup(train["item_id"]),
                             minlength=model_cfg.n_items).astype(np.float64)
        probs = counts ** 0.75 + 1.0  # smoothed popularity, every item can be drawn
        sampler = torch.from_numpy(probs / probs.sum()).float()
    generator = torch.Generator().manual_seed(cfg.seed)
    # Under torchrun TorchRec shards the tables, every rank trains on its share of each batch and
    # rank 0 validates for all (training/distributed.py); ``model`` stays a plain TwoTower.
    with Group.open() as group:
        if group is None:
            trained = model
            opt = adamw(model.parameters(), cfg.lr, cfg.weight_decay)
        else:
            trained, opt = group.wrap(model, cfg.lr, cfg.weight_decay)

        matmul_dtype = logits_dtype(cfg.logits_dtype)
        best = FitResult(copy.deepcopy(model), 0, -math.inf,
                         logits_dtype=dtype_name(matmul_dtype))
        started = time.perf_counter()
        stale = 0
        for epoch in range(1, cfg.epochs + 1):
            windows = make_windows(timeline_order(train, ordered, rng), prepared.item_vocab,
                                   model_cfg.history_len)
            windows = sample_windows(windows, cfg.max_epoch_examples, rng)
            batches = length_bucketed_batches(windows, cfg.batch_tokens, rng)
            trained.train()
            total, seen, t0 = 0.0, 0, time.perf_counter()
            # disable=None: a bar on a terminal only; a log file gets the epoch lines below
            bar = tqdm(batches, disable=None if cfg.progress else True, desc=f"epoch {epoch}",
                       leave=False, mininterval=1.0)
            for step, idx in enumerate(bar):
                counts = True
                if group is not None:
                    idx, counts = batch_share(idx, group.rank, group.world, step)
                batch = collate(windows, idx)
                if batch.targets.numel() == 0 and group is None:  # ranks all take each step
                    continue
                loss = batch_loss(trained, model_cfg, batch, item_table, weights,
                                  sampler, cfg.n_negatives, generator, matmul_dtype,
                                  cfg.label_smoothing)
                if not counts:  # a stand-in window: in the collectives, not in the gradient
                    loss = loss * 0.0
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n = int(batch.targets.numel()) if counts else 0
                total += float(loss.detach()) * n
                seen += n
                bar.set_postfix(loss=f"{total / max(seen, 1):.3f}",
                                ex_s=f"{seen / (time.perf_counter() - t0):,.0f}")
            bar.close()
            if group is not None:  # the epoch over every rank
                rank_seen = group.gather_values(seen)
                (total,), seen = group.total(total), int(sum(rank_seen))
            record = {"epoch": epoch, "loss": total / max(seen, 1), "examples": seen,
                      "examples_per_s": seen / max(time.perf_counter() - t0, 1e-9)}
            if group is not None:
                record["rank_examples"] = [int(n) for n in rank_seen]
                group.gather(trained, into=model)
            validating = group is None or group.is_main
            score, by_weight = math.nan, {}
            if validating:
                score, by_weight = validate_newest(model, validate) if validate \
                    else (-record["loss"], {})
            if group is not None:  # rank 0's score: every rank keeps the same best epoch
                (score,) = group.from_main(score)
                by_weight = share_newest_weight(model, by_weight, group)
            if by_weight:   # every weight's score (MLflow plots them per epoch), the one kept
                record |= {f"valid_at_newest_{w:g}": v for w, v in by_weight.items()}
                record["newest_weight"] = newest_weight(model)
            record["valid_score"] = score
            best.history.append(record)
            best.examples += seen
            if on_epoch:
                on_epoch(record)
            if cfg.progress:
                print(f"epoch {epoch}: loss {record['loss']:.4f}  valid {score:.4f}  "
                      f"{record['examples_per_s']:,.0f} ex/s", flush=True)
            if keep_last or score > best.best_score:
                best.model, best.best_epoch, best.best_score, stale = \
                    copy.deepcopy(model), epoch, score, 0
            else:
                stale += 1
            elapsed_min = (time.perf_counter() - started) / 60
            best.seconds = elapsed_min * 60
            budget = cfg.max_minutes - (reserve_minutes(best) if reserve_minutes else 0.0)
            if group is not None:  # rank 0's clock: every rank stops at the same epoch
                (elapsed_min, budget) = group.from_main(elapsed_min, budget)
            if stale >= cfg.patience or elapsed_min * (epoch + 1) / epoch > budget:
                break
        best.seconds = time.perf_counter() - started
    best.model.eval()
    return best
