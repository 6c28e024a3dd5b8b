"""``recsys data stats DIR``: the numbers of a prepared dataset as a readable table.

Command:
    recsys data stats data/ml-100k

Example:
    >>> table = dataset_stats("data/ml-100k")
    >>> table["all"]["users"], table["all"]["cold_items"]
    >>> print(format_stats(table))
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.pipelines.prepared import SPLITS, PreparedDataset

PERCENTILES = (50, 90, 99)


def _block(interactions: pl.DataFrame, items: pl.DataFrame) -> dict:
    lengths = interactions.group_by("user_idx").len()["len"]
    row = {
        "users": lengths.len(),
        "items": interactions["item_idx"].n_unique(),
        "interactions": interactions.height,
        "seq_len_min": int(lengths.min()) if lengths.len() else 0,
        "seq_len_mean": round(float(lengths.mean()), 2) if lengths.len() else 0.0,
        "seq_len_max": int(lengths.max()) if lengths.len() else 0,
    }
    for p in PERCENTILES:
        row[f"seq_len_p{p}"] = float(lengths.quantile(p / 100, "linear")) if lengths.len() else 0.0
    cold = set(items.filter(pl.col("is_cold"))["item_idx"].to_list())
    row["cold_items"] = len(cold & set(interactions["item_idx"].unique().to_list()))
    return row


def dataset_stats(root: str | Path) -> dict[str, dict]:
    """Statistics of a prepared dataset: one block for all interactions and one per split.

    A block has users, items, interactions, sequence-length min/mean/percentiles/max per
    user and cold_items (items of the block without a train interaction). The "all" block
    counts every item of the catalogue as ``items`` (catalogue-only ones included).

    Args:
        root: a directory written by ``recsys data prepare``.
    """
    data = PreparedDataset.load(root)
    table = {"all": _block(data.interactions, data.items)}
    table["all"]["items"] = data.num_items
    table["all"]["cold_items"] = int(data.items["is_cold"].sum())
    for split in SPLITS:
        table[split] = _block(data.interactions.filter(pl.col("split") == split), data.items)
    return table


def format_stats(table: dict[str, dict], *, title: str = "") -> str:
    """Render :func:`dataset_stats` as an aligned text table, one column per block."""
    blocks = list(table)
    rows = list(table[blocks[0]])
    width = max(len(r) for r in rows) + 2
    cells = {b: [f"{table[b][r]:,}" if isinstance(table[b][r], int) else f"{table[b][r]:,.2f}" for r in rows] for b in blocks}
    col = {b: max(len(b), *(len(c) for c in cells[b])) + 2 for b in blocks}
    lines = [title] if title else []
    lines.append(" " * width + "".join(b.rjust(col[b]) for b in blocks))
    for index, name in enumerate(rows):
        lines.append(name.ljust(width) + "".join(cells[b][index].rjust(col[b]) for b in blocks))
    return "\n".join(lines)
