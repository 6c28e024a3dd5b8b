"""What every reader returns: the source's interactions and items as text tables, and its files.

Readers only map a format onto these canonical columns; typing, checks and cleaning are
shared steps. Canonical interaction columns: ``user_id``, ``item_id``, ``ts`` (wall-clock
seconds or milliseconds, or the source's position), optional ``rating`` and ``split``, and
``_line``. Canonical item columns: ``item_id``, ``_line`` and any source fields; the fields
listed in :data:`TEXT_FIELDS` make up the item text.

Example:
    >>> tables = read_source("ml-100k")            # see recsys.pipelines.readers
    >>> tables.interactions.collect_schema().names()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import polars as pl

from recsys.pipelines.tables import DelimitedLayout

#: Item fields that make up the item text, in the order they appear in it.
TEXT_FIELDS = ("title", "year", "brand", "categories", "genres", "features", "description")


@dataclass
class SourceTables:
    """One source, read but not yet checked.

    Attributes:
        format: the reader's format name (``movielens-100k``, ``recbole``, ``generic``...).
        interactions: canonical interaction columns as text (see module docstring).
        interactions_file: the file the interactions come from (for messages).
        items: canonical item columns, or None when the source has no item file.
        items_file: the item file, or None.
        ts_kind: "time" (wall clock) or "position" (the source only orders events).
        files: every file read (hashed into manifest.json).
        notes: free-form facts about the reading the manifest should keep.
        read_typed: when set, a fast read of the interactions already typed (``_line``,
            ``user_id``, ``item_id``, ``ts`` as Int64), or None when the source needs the
            text path; its result equals what the row checks make of ``interactions``.
        interactions_layout: the shape every row of a delimited interactions file must have
            (None for JSON lines and Parquet); the row checks report rows of another shape.
        items_layout: the same for a delimited item file.
        source_columns: canonical column -> the name the user's file gives it
            (``{"ts": "unixReviewTime"}``), so that messages name the user's column;
            columns not listed keep their canonical name.
        item_source_columns: the same for the item file.
        time_unit: the unit the format documents for its time column ("s", "ms"), or None
            to infer it from the values (see :mod:`recsys.pipelines.times`).
        time_info: what the row checks detected about the time column (form, unit, the
            user's column name), for manifest.json; filled by ``check_interactions``.
    """

    format: str
    interactions: pl.LazyFrame
    interactions_file: Path
    items: pl.LazyFrame | None = None
    items_file: Path | None = None
    ts_kind: str = "time"
    files: list[Path] = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    read_typed: Callable[[], pl.DataFrame | None] | None = None
    interactions_layout: DelimitedLayout | None = None
    items_layout: DelimitedLayout | None = None
    source_columns: dict[str, str] = field(default_factory=dict)
    item_source_columns: dict[str, str] = field(default_factory=dict)
    time_unit: str | None = None
    time_info: dict = field(default_factory=dict)

    @classmethod
    def of_files(cls, format: str, interactions: pl.LazyFrame, interactions_file: Path, items: pl.LazyFrame | None = None,
                 items_file: Path | None = None, **fields) -> "SourceTables":
        """Tables of a wall-clock source whose files are its interactions file and its item file (when there is one).

        ``fields`` are the other attributes (layouts, source column names, time unit, notes...).

        Example:
            >>> SourceTables.of_files("recbole", interactions, Path("x.inter"), items, Path("x.item"), time_unit="s")
        """
        files = [interactions_file] + ([items_file] if items_file is not None else [])
        return cls(format, interactions, interactions_file, items, items_file, fields.pop("ts_kind", "time"), files, **fields)

    def column(self, name: str, *, items: bool = False) -> str:
        """The user's name of canonical column ``name`` (for messages)."""
        return (self.item_source_columns if items else self.source_columns).get(name, name)
