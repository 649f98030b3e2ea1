"""Figures a reviewer would rather look at than read, logged to MLflow with each run: learning
curves per epoch and the test comparison of every method."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def _figure(size: tuple[float, float]) -> Any:
    # A bare Figure renders PNG with the Agg canvas: no pyplot, no display, no global state.
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def learning_curves(history: list[dict[str, Any]]) -> Any:
    """Loss and validation score per epoch, side by side."""
    epochs = [r["epoch"] for r in history]
    valid_keys = [k for k in history[0] if k.startswith("valid")]
    fig = _figure((10, 3.6))
    axes = fig.subplots(1, 2)
    axes[0].plot(epochs, [r.get("loss", math.nan) for r in history], marker="o")
    axes[0].set(title="training loss", xlabel="epoch", ylabel="loss")
    for key in valid_keys:
        axes[1].plot(epochs, [r.get(key, math.nan) for r in history], marker="o", label=key)
    axes[1].set(title="validation", xlabel="epoch", ylabel="score")
    if valid_keys:
        axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def comparison_chart(table: pd.DataFrame, title: str = "") -> Any:
    """Grouped bars: each ranking metric (columns with '@'), one bar per method."""
    cols = [c for c in table.columns if "@" in str(c)] or \
        [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    x = np.arange(len(cols))
    width = 0.8 / max(len(table), 1)
    fig = _figure((max(6.0, 0.9 * len(cols) + 2), 4))
    ax = fig.subplots()
    for i, (method, row) in enumerate(table[cols].iterrows()):
        ax.bar(x + (i - (len(table) - 1) / 2) * width, row.to_numpy(dtype=float), width,
               label=str(method))
    ax.set_xticks(x, [str(c) for c in cols], rotation=45, ha="right")
    ax.set(title=title, ylabel="score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig
