"""Amazon reviews 2023: review JSON lines and metadata JSON lines.

- reviews ``<category>.jsonl``: ``user_id``, ``parent_asin`` (the item), ``rating``,
  ``timestamp`` (unix milliseconds, the documented unit; kept as is in ``ts``);
- metadata ``meta_<category>.jsonl``: ``parent_asin``, ``title``, ``store`` (the brand),
  ``categories`` (list), ``features`` (list), ``description`` (list), ``main_category``, ``price``.

Example:
    >>> tables = read(Path("amazon2023"), RowLog("error"))
    >>> tables.format
    'amazon2023'
"""

from __future__ import annotations

from pathlib import Path

from recsys.pipelines.detect import json_format
from recsys.pipelines.issues import RowLog
from recsys.pipelines.readers.amazon import find_files
from recsys.pipelines.source import SourceTables
from recsys.pipelines.tables import LINE, read_jsonl

REVIEW_FIELDS = {"user_id": "user_id", "parent_asin": "item_id", "rating": "rating", "timestamp": "ts"}
META_FIELDS = {
    "parent_asin": "item_id",
    "title": "title",
    "store": "brand",
    "categories": "categories",
    "main_category": "main_category",
    "features": "features",
    "description": "description",
    "price": "price",
}


def read(path: str | Path, log: RowLog) -> SourceTables:
    """Read an Amazon 2023 folder or review file (see module docstring).

    Args:
        path: the folder or the review ``.jsonl`` file.
        log: where broken JSON lines are reported.
    """
    inter_path, meta_path = find_files(Path(path), lambda p: json_format(p) == "amazon2023")
    interactions = read_jsonl(inter_path, list(REVIEW_FIELDS), log).rename(REVIEW_FIELDS)
    items = None
    if meta_path is not None:
        items = read_jsonl(meta_path, list(META_FIELDS), log, items=True).rename(META_FIELDS)
        items = items.select(LINE, *META_FIELDS.values())
    files = [inter_path] + ([meta_path] if meta_path else [])
    return SourceTables(
        "amazon2023",
        interactions,
        inter_path,
        items,
        meta_path,
        "time",
        files,
        source_columns={canonical: name for name, canonical in REVIEW_FIELDS.items()},
        item_source_columns={canonical: name for name, canonical in META_FIELDS.items()},
        time_unit="ms",
    )
