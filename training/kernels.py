"""The CPU kernels a training step runs on, chosen for speed where they keep the result.

A full-catalog softmax multiplies every target position's user vector with every item vector:
on 2 cores that matmul ran near the float32 peak and was the largest part of a step. CPUs with
native bfloat16 instructions (AVX512-BF16, AMX) multiply it about five times faster; the
products are summed in float32 and the logits come back as float32, so only the inputs are
rounded (8 bits of mantissa on cosine scores) and the softmax itself stays in float32. CPUs
without those instructions would emulate bfloat16, slower than float32, so ``auto`` asks the CPU.

PyTorch's default AdamW on CPU loops over the parameters one tensor at a time; the fused kernel
updates them in one pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path

import torch

LOGITS_DTYPES = ("auto", "bfloat16", "float32")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of native bf16


@cache
def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (Linux; elsewhere: no)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(BF16_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


def logits_dtype(setting: str) -> torch.dtype:
    """The dtype of the softmax's logit matmul for ``TrainConfig.logits_dtype``."""
    if setting not in LOGITS_DTYPES:
        raise ValueError(f"logits_dtype must be one of {', '.join(LOGITS_DTYPES)}, "
                         f"got {setting!r}")
    if setting == "auto":
        return torch.bfloat16 if native_bf16() else torch.float32
    return getattr(torch, setting)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``: the names ``LOGITS_DTYPES`` and the bundle use."""
    return str(dtype).removeprefix("torch.")


def adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
          ) -> torch.optim.AdamW:
    """AdamW over ``params`` with the fused kernel (same update, one pass over all tensors)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
