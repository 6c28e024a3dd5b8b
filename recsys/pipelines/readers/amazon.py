"""Shared file discovery of the Amazon review datasets (2018 and 2023 releases).

A folder holds one interactions file (a ratings CSV or review JSON lines) and, optionally,
one metadata file named ``meta_<category>.json`` / ``.jsonl``. A file source is the
interactions file; its metadata is the ``meta_<stem>`` file beside it when present.

Example:
    >>> find_files(Path("amazon/Industrial_and_Scientific_5.json"))
    (PosixPath('amazon/Industrial_and_Scientific_5.json'), PosixPath('amazon/meta_Industrial_and_Scientific.json'))
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.errors import DataFormatError
from recsys.pipelines.issues import RowLog
from recsys.pipelines.tables import LINE, read_jsonl

SUFFIXES = (".json", ".jsonl", ".csv")


def _meta_for(inter: Path) -> Path | None:
    stem = inter.stem.removesuffix("_5")
    for suffix in (".json", ".jsonl"):
        candidate = inter.parent / f"meta_{stem}{suffix}"
        if candidate.is_file():
            return candidate
    metas = sorted(p for p in inter.parent.glob("meta_*") if p.suffix in (".json", ".jsonl"))
    return metas[0] if len(metas) == 1 else None


def find_files(path: Path, accept) -> tuple[Path, Path | None]:
    """The interactions file (the one ``accept(path)`` takes) and the metadata file, or None.

    Args:
        path: a folder or the interactions file.
        accept: predicate telling whether a file is interactions of this format.
    """
    if path.is_file():
        return path, _meta_for(path)
    candidates = sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith("meta_") and accept(p)
    )
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise DataFormatError(
            f"expected one interactions file (reviews or ratings) in the folder, found: {found}; "
            "pass the file itself as --source",
            path=path,
        )
    return candidates[0], _meta_for(candidates[0])


def read_json_fields(path: Path, fields: dict[str, str], log: RowLog, *, items: bool = False) -> pl.LazyFrame:
    """A JSON-lines file's ``fields`` (source key -> canonical column) under their canonical names.

    Broken JSON lines go to ``log`` (the bad-row policy); an item file keeps ``_line`` and the fields only.

    Example:
        >>> read_json_fields(Path("meta_Industrial.json"), {"asin": "item_id", "title": "title"}, RowLog("drop"), items=True)
    """
    frame = read_jsonl(path, list(fields), log, items=items).rename(fields)
    return frame.select(LINE, *fields.values()) if items else frame


def source_names(fields: dict[str, str]) -> dict[str, str]:
    """Canonical column -> the source's key, for messages that name the user's field."""
    return {canonical: name for name, canonical in fields.items()}
