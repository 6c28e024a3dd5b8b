"""Amazon reviews 2018: ratings-only CSV, review JSON lines, metadata JSON lines.

- ratings CSV, no header: ``item,user,rating,timestamp`` (unix seconds, the documented unit);
- reviews: one JSON object per line with ``reviewerID``, ``asin``, ``overall``, ``unixReviewTime``;
- metadata ``meta_<category>.json``: ``asin``, ``title``, ``brand``, ``category`` (list),
  ``feature`` (list), ``description`` (list), ``main_cat``, ``price``.

Example:
    >>> tables = read(Path("amazon2018/Industrial_and_Scientific_5.json"), RowLog("drop"))
    >>> tables.items.collect_schema().names()[:3]
    ['_line', 'item_id', 'title']
"""

from __future__ import annotations

from pathlib import Path

from recsys.pipelines.detect import json_format, looks_like_ratings_csv
from recsys.pipelines.issues import RowLog
from recsys.pipelines.readers.amazon import find_files, read_json_fields, source_names
from recsys.pipelines.source import SourceTables
from recsys.pipelines.tables import LINE, scan_delimited_checked

REVIEW_FIELDS = {"reviewerID": "user_id", "asin": "item_id", "overall": "rating", "unixReviewTime": "ts"}
#: metadata key -> canonical item column.
META_FIELDS = {
    "asin": "item_id",
    "title": "title",
    "brand": "brand",
    "category": "categories",
    "main_cat": "main_category",
    "feature": "features",
    "description": "description",
    "price": "price",
}


def _accept(path: Path) -> bool:
    if path.suffix == ".csv":
        return looks_like_ratings_csv(path)
    return json_format(path) == "amazon2018"


def read(path: str | Path, log: RowLog) -> SourceTables:
    """Read an Amazon 2018 folder or interactions file (see module docstring).

    Args:
        path: the folder, the ratings CSV or the reviews JSON file.
        log: where broken JSON lines are reported.
    """
    inter_path, meta_path = find_files(Path(path), _accept)
    layout = None
    if inter_path.suffix == ".csv":
        interactions, layout = scan_delimited_checked(inter_path, names=["item_id", "user_id", "rating", "ts"])
        interactions = interactions.select(LINE, "user_id", "item_id", "ts", "rating")
        labels = {"item_id": "item", "user_id": "user", "rating": "rating", "ts": "timestamp"}
        source_columns = {name: f"{label} (field {i})" for i, (name, label) in enumerate(labels.items(), start=1)}
    else:
        interactions = read_json_fields(inter_path, REVIEW_FIELDS, log)
        source_columns = source_names(REVIEW_FIELDS)
    items = read_json_fields(meta_path, META_FIELDS, log, items=True) if meta_path is not None else None
    return SourceTables.of_files(
        "amazon2018",
        interactions,
        inter_path,
        items,
        meta_path,
        interactions_layout=layout,
        source_columns=source_columns,
        item_source_columns=source_names(META_FIELDS),
        time_unit="s",
    )
