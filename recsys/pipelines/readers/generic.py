"""Generic reader: an interactions table (CSV/TSV/Parquet) and an optional items table (CSV/JSONL/Parquet).

Interactions need ``user_id``, ``item_id`` and ``timestamp`` (or ``ts``), or ``position``
when the source only orders each user's events (then ``ts`` is the position). Optional:
``rating``, and ``split`` (train/valid/test), which is then kept as given. Items need
``item_id``; every other column is kept and the text fields (title, brand, categories,
genres, year, features, description) make up the item text.

A directory source holds ``interactions.{csv,tsv,parquet}`` and optionally
``items.{csv,tsv,jsonl,json,parquet}``; a file source is the interactions table, with an
``items.*`` file beside it used when present.

Example:
    >>> tables = read("../shared/data/amazon-industrial", RowLog("error"))
    >>> tables.ts_kind
    'position'
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from recsys.errors import DataFormatError
from recsys.pipelines.issues import RowLog
from recsys.pipelines.source import SourceTables
from recsys.pipelines.tables import (
    LINE,
    DelimitedLayout,
    check_readable,
    read_integer_table,
    read_jsonl,
    scan_delimited_checked,
    scan_parquet,
)

INTERACTION_NAMES = ("interactions.csv", "interactions.tsv", "interactions.parquet")
ITEM_NAMES = ("items.csv", "items.tsv", "items.jsonl", "items.json", "items.parquet")
#: Accepted spellings of the time column, first match wins.
TIME_COLUMNS = ("timestamp", "ts", "time", "position")


def _scan_table(path: Path, log: RowLog, *, items: bool) -> tuple[pl.LazyFrame, DelimitedLayout | None]:
    """The table as text columns plus ``_line``, and its layout when it is delimited (else None)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return scan_parquet(path), None
    if suffix in (".jsonl", ".json", ".ndjson"):
        return read_jsonl(path, jsonl_fields(path), log, items=items), None
    if suffix == ".tsv":
        return scan_delimited_checked(path, separator="\t", what=".tsv files are tab-separated")
    return scan_delimited_checked(path, separator=",", what=".csv files are comma-separated")


def jsonl_fields(path: Path, lines: int = 1000) -> list[str]:
    """The keys of the JSON objects in the first ``lines`` lines of ``path``, in first-seen order."""
    check_readable(path)
    fields: dict[str, None] = {}
    with open(path, "rb") as handle:
        for _, raw in zip(range(lines), handle):
            try:
                value = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(value, dict):
                fields.update(dict.fromkeys(value))
    if not fields:
        raise DataFormatError("expected one JSON object per line", path=path, line=1)
    return list(fields)


def find_files(path: Path) -> tuple[Path, Path | None]:
    """The interactions file and the items file (or None) of a generic source."""
    if path.is_dir():
        inter = next((path / n for n in INTERACTION_NAMES if (path / n).is_file()), None)
        if inter is None:
            raise DataFormatError(
                f"no interactions table found; expected one of {', '.join(INTERACTION_NAMES)}", path=path
            )
        folder = path
    else:
        inter, folder = path, path.parent
    items = next((folder / n for n in ITEM_NAMES if (folder / n).is_file()), None)
    return inter, items


def read(path: str | Path, log: RowLog) -> SourceTables:
    """Read a generic source (see module docstring).

    Args:
        path: a directory or the interactions file.
        log: where bad JSON lines are reported.
    """
    inter_path, items_path = find_files(Path(path))
    frame, layout = _scan_table(inter_path, log, items=False)
    columns = frame.collect_schema().names()
    time_column = next((c for c in TIME_COLUMNS if c in columns), None)
    if time_column is None:
        raise DataFormatError(
            "no time column: add timestamp (wall clock) or position (order of each user's events)",
            path=inter_path,
            line=1,
            column="timestamp",
        )
    ts_kind = "position" if time_column == "position" else "time"
    keep = [LINE, "user_id", "item_id", time_column] + [c for c in ("rating", "split") if c in columns]
    missing = [c for c in ("user_id", "item_id") if c not in columns]
    if missing:
        raise DataFormatError(
            f"required column is missing (columns found: {', '.join(c for c in columns if c != LINE)})",
            path=inter_path,
            line=1,
            column=missing[0],
        )
    interactions = frame.select(keep).rename({time_column: "ts"} if time_column != "ts" else {})
    items, items_layout = _scan_table(items_path, log, items=True) if items_path is not None else (None, None)
    read_typed = None
    if inter_path.suffix.lower() in (".csv", ".tsv") and sorted(c for c in columns if c != LINE) == sorted(keep[1:4]):
        # Exactly user, item and time: integer files are read typed, without a text pass.
        separator = "\t" if inter_path.suffix.lower() == ".tsv" else ","
        names = {"user_id": "user_id", "item_id": "item_id", time_column: "ts"}
        read_typed = lambda: read_integer_table(inter_path, separator=separator, columns=names)  # noqa: E731
    return SourceTables.of_files(
        "generic",
        interactions,
        inter_path,
        items,
        items_path,
        ts_kind=ts_kind,
        read_typed=read_typed,
        interactions_layout=layout,
        items_layout=items_layout,
        source_columns={"ts": time_column},
    )
