"""models.take: row look-ups with a gradient that is the same on every pass."""

from __future__ import annotations

import torch

from models.take import take


def test_take_is_indexing_for_any_index_shape() -> None:
    table = torch.arange(12.0).reshape(4, 3)
    index = torch.tensor([[3, 0], [0, 2]])
    assert torch.equal(take(table, index), table[index])
    assert torch.equal(take(table[:, 0], index), table[:, 0][index])


def test_repeated_rows_sum_their_gradients_in_a_fixed_order(two_threads: None) -> None:
    """Many repeats of few rows, as the padding's item row gets in a training batch: the
    gradient is the sum of each row's repeats, and the same bits on every pass."""
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, 8, (4096,), generator=gen)
    upstream = torch.randn(4096, 16, generator=gen)
    expected = torch.zeros(8, 16, dtype=torch.float64).index_add_(0, index, upstream.double())
    grads = set()
    for _ in range(20):
        table = torch.zeros(8, 16, requires_grad=True)
        (take(table, index) * upstream).sum().backward()
        grads.add(table.grad.numpy().tobytes())
    assert len(grads) == 1
    assert torch.allclose(table.grad.double(), expected, atol=1e-4)
