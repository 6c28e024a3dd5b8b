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
