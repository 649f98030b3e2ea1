"""Row look-ups whose gradient is the same on every run."""

from __future__ import annotations

import torch


def take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a long ``index`` of any shape: rows of ``table`` (n, ...) ->
    (*index.shape, ...).

    Plain indexing backpropagates through an accumulating ``index_put_``, which on CPU adds a
    row's repeats with atomic adds from several threads once the gradient is large (about
    32,768 values): the order, and so the last bits, differ from run to run, and two runs of
    one seed train different models. ``index_select``'s gradient adds them in a fixed order.
    """
    rows = torch.index_select(table, 0, index.reshape(-1))
    return rows.reshape(*index.shape, *table.shape[1:])
