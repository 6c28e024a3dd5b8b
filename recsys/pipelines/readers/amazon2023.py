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
from recsys.pipelines.readers.amazon import find_files, read_json_fields, source_names
from recsys.pipelines.source import SourceTables

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
    interactions = read_json_fields(inter_path, REVIEW_FIELDS, log)
    items = read_json_fields(meta_path, META_FIELDS, log, items=True) if meta_path is not None else None
    return SourceTables.of_files(
        "amazon2023",
        interactions,
        inter_path,
        items,
        meta_path,
        source_columns=source_names(REVIEW_FIELDS),
        item_source_columns=source_names(META_FIELDS),
        time_unit="ms",
    )
