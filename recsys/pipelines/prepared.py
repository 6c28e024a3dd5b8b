"""Read a prepared dataset directory (ARCHITECTURE.md section 2) and build examples from it.

This is the one place that turns ``interactions.parquet`` into ordered user sequences,
training targets and evaluation examples, so every model sees the same protocol.

Example:
    >>> data = PreparedDataset.load("data/ml-100k")
    >>> data.num_items, data.num_users
    >>> examples = data.eval_examples("test")   # histories and gold item sets
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys.errors import ArtifactError

SPLITS = ("train", "valid", "test")
REQUIRED_FILES = ("interactions.parquet", "items.parquet", "users.parquet", "manifest.json")


def items_without_text(items: pl.DataFrame | pl.LazyFrame) -> int:
    """How many rows of an items table have an empty, blank or missing ``text`` (all of them without the column).

    Takes the loaded table (``PreparedDataset.items``) or a lazy scan of ``items.parquet``, so a caller
    that needs only this count reads one column.

    Example:
        >>> items_without_text(pl.scan_parquet("runs/data/ml-100k/items.parquet"))   # 0
    """
    if "text" in items.collect_schema().names():
        counted = items.select((pl.col("text").fill_null("").str.strip_chars() == "").sum())
    else:
        counted = items.select(pl.len())
    return int((counted.collect() if isinstance(counted, pl.LazyFrame) else counted).item())


@dataclass(frozen=True)
class EvalExamples:
    """Evaluation examples of one split, one per user that has gold items in it.

    Attributes:
        user_idx: user of each example.
        histories: items the user interacted with before the first gold item, oldest first.
        gold: the user's items in the split (one for leave-one-out, a set for temporal).
    """

    user_idx: list[int]
    histories: list[list[int]]
    gold: list[list[int]]

    def __len__(self) -> int:
        return len(self.user_idx)


@dataclass
class PreparedDataset:
    """A prepared dataset in memory.

    Attributes:
        root: the directory it was read from.
        interactions: user_idx, item_idx, ts, split, in file order (chronological per user,
            ties already broken by the pipeline).
        items: item_idx, item_id, text, is_cold and source fields.
        users: user_idx, user_id.
        manifest: the parsed manifest.json.
    """

    root: Path
    interactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame
    manifest: dict

    @classmethod
    def load(cls, root: str | Path) -> "PreparedDataset":
        """Read a directory written by ``recsys data prepare``.

        Raises:
            ArtifactError: a required file is missing.
        """
        root = Path(root)
        missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
        if missing:
            raise ArtifactError(
                f"{root} is not a prepared dataset: missing {', '.join(missing)}. "
                "Create it with `recsys data prepare --source ... --out DIR`."
            )
        interactions = pl.read_parquet(root / "interactions.parquet").with_columns(
            pl.col("split").cast(pl.String)
        )
        items = pl.read_parquet(root / "items.parquet").sort("item_idx")
        users = pl.read_parquet(root / "users.parquet").sort("user_idx")
        manifest = json.loads((root / "manifest.json").read_text())
        return cls(root, interactions, items, users, manifest)

    @property
    def num_items(self) -> int:
        return self.items.height

    @property
    def num_users(self) -> int:
        return self.users.height

    @property
    def fingerprint(self) -> str:
        """A short content id of the dataset (from the manifest), used in MLflow tags and bundles."""
        return str(self.manifest.get("fingerprint", ""))

    def user_sequences(self) -> pl.DataFrame:
        """One row per user: ``user_idx``, ``items`` and ``splits`` (lists, oldest first)."""
        return (
            self.interactions.with_row_index("_order")
            .sort(["user_idx", "ts", "_order"])
            .group_by("user_idx", maintain_order=True)
            .agg(pl.col("item_idx").alias("items"), pl.col("split").alias("splits"))
        )

    def train_sequences(self) -> list[list[int]]:
        """Each user's train items, oldest first (users without train items are skipped)."""
        frame = (
            self.interactions.filter(pl.col("split") == "train")
            .with_row_index("_order")
            .sort(["user_idx", "ts", "_order"])
            .group_by("user_idx", maintain_order=True)
            .agg(pl.col("item_idx"))
        )
        return frame["item_idx"].to_list()

    def train_item_mask(self) -> np.ndarray:
        """(num_items,) bool: True for items with at least one train interaction (the warm items).

        Example:
            >>> PreparedDataset.load("runs/data/ml-100k").train_item_mask().sum()   # warm items
        """
        seen = self.interactions.filter(pl.col("split") == "train")["item_idx"].unique().to_numpy()
        if seen.size and (seen.min() < 0 or seen.max() >= self.num_items):
            raise ArtifactError(
                f"{self.root / 'interactions.parquet'}: item_idx outside 0..{self.num_items - 1}; re-run `recsys data prepare`"
            )
        mask = np.zeros(self.num_items, dtype=bool)
        mask[seen] = True
        return mask

    def eval_examples(self, split: str) -> EvalExamples:
        """Histories and gold sets of ``split`` ("valid" or "test").

        The history is everything the user did before their first item of that split
        (for the test split of leave-one-out that includes the valid item).
        Users with no item in the split are skipped; users with an empty history too
        (counted by the caller as ``len(users_with_gold) - len(examples)``).
        """
        if split not in ("valid", "test"):
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        user_idx: list[int] = []
        histories: list[list[int]] = []
        gold: list[list[int]] = []
        for row in self.user_sequences().iter_rows(named=True):
            splits = row["splits"]
            if split not in splits:
                continue
            first = splits.index(split)
            history = row["items"][:first]
            if not history:
                continue
            user_idx.append(row["user_idx"])
            histories.append(history)
            gold.append([item for item, s in zip(row["items"], splits) if s == split])
        return EvalExamples(user_idx, histories, gold)

    def item_titles(self) -> list[str]:
        """A display title per item_idx: the ``title`` field when present, else the item text."""
        column = "title" if "title" in self.items.columns else "text"
        return self.items[column].fill_null("").cast(pl.String).to_list()
