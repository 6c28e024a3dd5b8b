"""Most-popular baseline: every user gets the items with the most train interactions.

The score of an item is its train interaction count (the same for every user), so it
is the reference a personalised model has to beat, and it scores zero recall on cold
items by construction.

Example:
    >>> pop = Popularity.fit(data)                 # a PreparedDataset
    >>> pop.score([[1, 2], [3]]).shape             # (2, num_items)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Popularity:
    """Item popularity counted on the train split.

    Attributes:
        counts: (num_items,) float32 train interactions per item.
    """

    counts: torch.Tensor

    @property
    def num_items(self) -> int:
        return int(self.counts.shape[0])

    @classmethod
    def from_train_items(cls, train_items: np.ndarray, num_items: int) -> "Popularity":
        """Count ``train_items`` (item_idx of every train interaction) over ``num_items`` items."""
        items = np.asarray(train_items, dtype=np.int64)
        if items.size and (items.min() < 0 or items.max() >= num_items):
            raise ValueError(f"train item indices must lie in [0, {num_items}); got {items.min()}..{items.max()}")
        counts = np.bincount(items, minlength=num_items).astype(np.float32)
        return cls(torch.from_numpy(counts))

    @classmethod
    def fit(cls, data) -> "Popularity":
        """Fit on the train split of a :class:`recsys.pipelines.prepared.PreparedDataset`."""
        import polars as pl

        train = data.interactions.filter(pl.col("split") == "train")["item_idx"].to_numpy()
        return cls.from_train_items(train, data.num_items)

    def score(self, histories: list[list[int]]) -> torch.Tensor:
        """(B, num_items) scores: the popularity counts, one row per history."""
        return self.counts.unsqueeze(0).expand(len(histories), -1).clone()
