"""Raw ids <-> dense rows, at the boundary, so the ``nn.Module`` only ever sees integers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

UNKNOWN = -1


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """A fixed, ordered set of raw ids. Row ``r`` holds ``ids[r]``; unknown ids map to -1.

    Fitted on the training window only: an id first seen later is unknown to the model and is
    handled explicitly by the caller (dropped from a history, or served by a fallback).
    """

    index: pd.Index

    @classmethod
    def fit(cls, ids: Iterable[str] | pd.Series | np.ndarray) -> Vocabulary:
        # Sorted so that the same set of ids always gives the same rows, whatever the input order.
        unique = pd.Index(pd.unique(pd.Series(ids, dtype="string").dropna()))
        return cls(pd.Index(np.sort(unique.to_numpy(dtype=object)), dtype="string"))

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, raw_id: object) -> bool:
        return raw_id in self.index

    @property
    def ids(self) -> np.ndarray:
        return self.index.to_numpy(dtype=object)

    def lookup(self, ids: Iterable[str] | pd.Series | np.ndarray) -> np.ndarray:
        """Rows of ``ids`` as int64, -1 where an id is unknown."""
        values = pd.Index(pd.Series(ids, dtype="string"))
        return self.index.get_indexer(values).astype(np.int64)

    def row(self, raw_id: str) -> int:
        """Row of one id, -1 when unknown."""
        return int(self.index.get_indexer(pd.Index([raw_id], dtype="string"))[0])

    def id_of(self, rows: np.ndarray | Iterable[int]) -> np.ndarray:
        """Raw ids of rows (object array); rows must be known (>= 0)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row out of range 0..{len(self) - 1}")
        return self.ids[rows]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"id": pd.Series(self.index, dtype="string")})

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Vocabulary:
        return cls(pd.Index(frame["id"].astype("string"), dtype="string"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.index.equals(other.index)

    def __hash__(self) -> int:
        return hash(tuple(self.index))
