"""Training on several processes: TorchRec's ``DistributedModelParallel`` over gloo, under torchrun.

``make train NPROC=n`` starts n ranks with ``torchrun``; every rank runs ``training.fit.fit``,
which opens the process group here (``Group.open``). The embedding tables are sharded table-wise
(each table whole on one rank) and looked up through TorchRec's input/output all-to-alls; the
dense layers are replicated and their gradients averaged by the DDP wrapper DMP puts around
them. Every rank builds the same batches (same seeds) and trains on its share of the windows of
each one, so an epoch has as many steps as on one process and every step's collectives line up.
Rank 0 validates a plain ``TwoTower`` holding the gathered weights and tells every rank the
score and the clock, so all ranks stop at the same epoch.

``python -m training.distributed`` is torchrun (same options) for ``make train``: a rank that
fails ends the run with that rank's exit status and message, without torchrun's traceback, so
bad input is still one line and exit 2.

The sharded tables train with TorchRec's fused (in-backward) optimizer. On CPU fbgemm has no fused
Adam, only SGD and Adagrad variants, and its dense table kernel, the one that would let AdamW
update the tables, pools sequence look-ups (pytorch/FBGEMM#4586: EmbeddingCollection outputs come
back one row per bag). So the tables train with row-wise Adagrad at ``TABLE_LR_SCALE`` times the
learning rate, the dense parameters with AdamW as on one process; on the synthetic shop both
land in the same range.
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.optimizers import in_backward_optimizer_filter

from models.two_tower import TwoTower
from training.kernels import adamw

BACKEND = "gloo"                           # CPU collectives
TABLE_OPTIMIZER = EmbOptimType.EXACT_ROWWISE_ADAGRAD  # one accumulator per row
TABLE_LR_SCALE = 10.0      # Adagrad's steps shrink as 1/sqrt(t), AdamW's do not: same-range results


def world_size() -> int:
    """Processes in this run: torchrun's WORLD_SIZE, 1 without torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def batch_share(idx: np.ndarray, rank: int, world: int, step: int) -> tuple[np.ndarray, bool]:
    """This rank's windows of batch number ``step``, and whether they count (loss, gradient,
    examples).

    Every rank takes part in every step (each forward and backward is a collective), so each
    gets a non-empty share: strided over the batch, whose windows are sorted by length, so the
    shares pad alike. The rank that starts the stride turns with ``step``, so the odd windows
    spread evenly. A batch with fewer windows than ranks lends a window to the ranks left over,
    which do not count: they join the collectives without adding gradient.
    """
    if len(idx) == 0:
        raise ValueError("an empty batch cannot be shared")
    turn = (rank + step) % world
    if len(idx) >= world:
        return idx[turn::world], True
    return idx[turn % len(idx):turn % len(idx) + 1], turn < len(idx)


def sharding_plan(model: TwoTower, world: int) -> ShardingPlan:
    """Each table whole on one rank, round robin, with the fused CPU kernel: the embedding
    collection's tables (item, category) and the attribute bags'."""
    modules = {"embeddings": (model.embeddings, model.embeddings.embeddings)}
    if model.attribute_bags is not None:
        modules["attribute_bags"] = (model.attribute_bags, model.attribute_bags.embedding_bags)
    plan, i = {}, 0
    for path, (module, tables) in modules.items():
        per_table = {}
        for name in tables:
            per_table[name] = table_wise(rank=i % world, compute_kernel="fused")
            i += 1
        plan[path] = construct_module_sharding_plan(module, per_table, local_size=world,
                                                    world_size=world, device_type="cpu")
    return ShardingPlan(plan)


@torch.no_grad()
def _start_from(dmp: DistributedModelParallel, model: nn.Module) -> None:
    """Give each sharded table ``model``'s rows. DMP keeps the unsharded weights of an embedding
    collection but re-initializes an embedding bag collection's tables: without this the ranks
    would start the attribute bags from other weights than a single-process fit."""
    full = model.state_dict()
    with warnings.catch_warnings():  # TorchRec's tables still come as ShardedTensor
        warnings.filterwarnings("ignore", "Please use DTensor", FutureWarning)
        for key, value in dmp.module.state_dict().items():
            if isinstance(value, ShardedTensor):
                for shard in value.local_shards():
                    (row, col), (rows, cols) = (shard.metadata.shard_offsets,
                                                shard.metadata.shard_sizes)
                    shard.tensor.copy_(full[key][row:row + rows, col:col + cols])


@dataclass
class Group:
    """This rank's view of a distributed fit: the process group and the wrapped model."""

    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    @contextmanager
    def open(cls) -> Iterator[Group | None]:
        """The process group of a torchrun launch, None for a single process.

        Opened unless the caller already did (then left open for it); destroyed on the way out.
        """
        if world_size() <= 1:
            yield None
            return
        created = not dist.is_initialized()
        if created:
            dist.init_process_group(BACKEND)
        try:
            yield cls(dist.get_rank(), dist.get_world_size())
        finally:
            if created:
                dist.destroy_process_group()

    def wrap(self, model: TwoTower, lr: float, weight_decay: float
             ) -> tuple[DistributedModelParallel, torch.optim.Optimizer]:
        """``model`` sharded by DMP (a copy: ``model`` stays a plain TwoTower), and the optimizer
        of its dense parameters; the tables' optimizer runs inside the backward pass."""
        # Decoupled decay shrinks a row by (1 - table lr * decay) a step, AdamW by (1 - lr * decay).
        fused = {"optimizer": TABLE_OPTIMIZER, "learning_rate": lr * TABLE_LR_SCALE, "eps": 1e-8,
                 "weight_decay": weight_decay / TABLE_LR_SCALE,
                 "weight_decay_mode": WeightDecayMode.DECOUPLE}
        inner = copy.deepcopy(model)  # DMP swaps the tables of the module it wraps in place
        # Without the interest term its weights get no gradient: DDP must look for unused
        # parameters (every step; its static-graph mode fails on them), else it need not.
        uses_all = model.cfg.interest
        with warnings.catch_warnings():  # DMP still passes DDP a deprecated flag
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
            dmp = DistributedModelParallel(
                inner, device=torch.device("cpu"), plan=sharding_plan(inner, self.world),
                sharders=[EmbeddingCollectionSharder(fused_params=fused),
                          EmbeddingBagCollectionSharder(fused_params=fused)],
                data_parallel_wrapper=DefaultDataParallelWrapper(
                    static_graph=uses_all, find_unused_parameters=not uses_all))
        _start_from(dmp, model)
        dense = [p for _, p in in_backward_optimizer_filter(dmp.named_parameters())]
        return dmp, adamw(dense, lr, weight_decay)

    def gather(self, dmp: DistributedModelParallel, into: nn.Module) -> nn.Module:
        """Copy the current weights, sharded tables gathered whole, into the plain ``into`` on
        every rank (a collective)."""
        state = {}
        with warnings.catch_warnings():  # TorchRec's tables still come as ShardedTensor
            warnings.filterwarnings("ignore", "Please use DTensor", FutureWarning)
            for key, value in dmp.module.state_dict().items():
                if isinstance(value, ShardedTensor):  # pieces on their owners
                    full = torch.empty(value.size(), dtype=value.dtype)
                    value.gather(dst=0, out=full if self.is_main else None)
                    dist.broadcast(full, src=0)
                    value = full
                state[key] = value
        into.load_state_dict(state)
        return into

    def total(self, *values: float) -> list[float]:
        """Each value summed over the ranks."""
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def gather_values(self, value: float) -> list[float]:
        """One value from each rank, in rank order, on every rank."""
        out = [torch.zeros(1, dtype=torch.float64) for _ in range(self.world)]
        dist.all_gather(out, torch.tensor([value], dtype=torch.float64))
        return [float(t) for t in out]

    def from_main(self, *values: float) -> list[float]:
        """Rank 0's values on every rank (the others' are ignored)."""
        t = torch.tensor(values, dtype=torch.float64)
        dist.broadcast(t, src=0)
        return t.tolist()


def launch(argv: list[str] | None = None) -> int:
    """torchrun with ``argv`` (each rank gets an even share of the cores as threads unless
    OMP_NUM_THREADS says otherwise); the exit status of the rank that failed first (killed by a
    signal: 1), without torchrun's traceback: the rank has said what went wrong."""
    args = parse_args(argv)
    if "OMP_NUM_THREADS" not in os.environ and str(args.nproc_per_node).isdigit():
        # torchrun would give each rank 1 thread: share the cores out instead
        per_rank = (os.cpu_count() or 1) // int(args.nproc_per_node)
        os.environ["OMP_NUM_THREADS"] = str(max(1, per_rank))
    try:
        run(args)
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(launch())
