"""Evaluation groups: warm vs cold gold items, item popularity terciles, history-length buckets.

Item groups restrict each user's gold set to the gold items of that group (a user with
no gold item in the group is skipped for it and counted); the ranking is still over
the whole catalogue. History-length buckets group users.

- cold: gold item without a train interaction; warm: the others.
- cold_only / warm_only: the same gold items under the SETRec paper's cold-start protocol
  (Lin et al., "Order-agnostic Identifier for Large Language Model-based Generative
  Recommendation", SIGIR 2025, cold-start experiments): a cold gold item is ranked among the
  cold items only and a warm gold item among the warm items only (:data:`PROTOCOL_GROUPS`).
  ``cold``/``warm`` rank over the full catalogue; both are reported side by side.
- pop_low / pop_mid / pop_high: warm items split into three equal-sized parts by
  train interaction count (ties broken by item index), least popular first.
- hist_<a>-<b>: users whose history length lies in [a, b] (edges configurable).

Example:
    >>> groups = ItemGroups.from_train_items(train_items, num_items=5)
    >>> groups.item_masks()["cold"]          # bool (num_items,)
    >>> history_bucket(7, (5, 10, 20, 50))   # "hist_6-10"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_HISTORY_EDGES = (5, 10, 20, 50)
ITEM_GROUPS = ("warm", "cold", "pop_low", "pop_mid", "pop_high")
#: Restricted-candidate groups: name -> item group whose gold items are ranked among that group's items only.
PROTOCOL_GROUPS = {"cold_only": "cold", "warm_only": "warm"}
#: What each group's items are ranked against (results tables name it per column).
RANKED_AMONG = {"cold_only": "cold items only", "warm_only": "warm items only"}


def ranked_among(group: str) -> str:
    """The candidate set a group's gold items are ranked in: "all items" unless a :data:`PROTOCOL_GROUPS` group.

    Example:
        >>> ranked_among("cold"), ranked_among("cold_only")   # ("all items", "cold items only")
    """
    return RANKED_AMONG.get(group, "all items")


@dataclass(frozen=True)
class ItemGroups:
    """Per-item group labels computed from the train split only.

    Attributes:
        train_counts: (num_items,) train interactions per item.
        popularity_tercile: (num_items,) 0 low, 1 mid, 2 high; -1 for cold items.
    """

    train_counts: np.ndarray
    popularity_tercile: np.ndarray

    @property
    def is_cold(self) -> np.ndarray:
        return self.train_counts == 0

    @classmethod
    def from_train_items(cls, train_items: np.ndarray, num_items: int) -> "ItemGroups":
        """Build from the item index of every train interaction.

        Args:
            train_items: (n,) item_idx of each train interaction.
            num_items: catalogue size.
        """
        counts = np.bincount(np.asarray(train_items, dtype=np.int64), minlength=num_items)[:num_items]
        tercile = np.full(num_items, -1, dtype=np.int64)
        warm = np.flatnonzero(counts > 0)
        order = warm[np.lexsort((warm, counts[warm]))]  # by count, then item index
        for part, chunk in enumerate(np.array_split(order, 3)):
            tercile[chunk] = part
        return cls(counts, tercile)

    @classmethod
    def from_dataset(cls, data) -> "ItemGroups":
        """Build from a :class:`recsys.pipelines.prepared.PreparedDataset` (train split only)."""
        import polars as pl

        train = data.interactions.filter(pl.col("split") == "train")["item_idx"].to_numpy()
        return cls.from_train_items(train, data.num_items)

    def item_masks(self) -> dict[str, np.ndarray]:
        """Group name -> (num_items,) bool membership."""
        cold = self.is_cold
        return {
            "warm": ~cold,
            "cold": cold,
            "pop_low": self.popularity_tercile == 0,
            "pop_mid": self.popularity_tercile == 1,
            "pop_high": self.popularity_tercile == 2,
        }


def history_bucket(length: int, edges: tuple[int, ...] = DEFAULT_HISTORY_EDGES) -> str:
    """Name of the history-length bucket of ``length`` (edges are inclusive upper bounds).

    Example:
        >>> history_bucket(1), history_bucket(51)   # ("hist_1-5", "hist_51+")
    """
    low = 1
    for edge in edges:
        if length <= edge:
            return f"hist_{low}-{edge}"
        low = edge + 1
    return f"hist_{low}+"
