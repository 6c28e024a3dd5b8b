"""RecBole atomic files: ``NAME.inter`` and ``NAME.item``, tab-separated, typed headers.

Headers read ``field:type`` (``user_id:token``, ``movie_title:token_seq``,
``timestamp:float``); the type suffix is dropped. Field names map onto the canonical
ones: ``timestamp`` -> ``ts``, ``movie_title`` -> ``title``, ``release_year`` -> ``year``,
``class``/``genre`` -> ``genres`` (space-separated tokens, joined with ", "). Other item
fields are kept under their own names.

Example:
    >>> tables = read(Path("~/.cache/setrec/ml-100k").expanduser(), RowLog("error"))
    >>> tables.format
    'recbole'
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recsys.errors import DataFormatError
from recsys.pipelines.issues import RowLog
from recsys.pipelines.source import SourceTables
from recsys.pipelines.tables import LINE, DelimitedLayout, check_header_separator, check_readable, scan_delimited_checked

#: RecBole field name -> canonical name.
RENAMES = {
    "timestamp": "ts",
    "movie_title": "title",
    "release_year": "year",
    "class": "genres",
    "genre": "genres",
    "item_title": "title",
}
#: Canonical fields whose space-separated tokens are separate values.
TOKEN_LISTS = ("genres",)
#: The field types of RecBole atomic files.
FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
#: The rule said when a header does not follow it.
TAB_RULE = "RecBole atomic files are tab-separated, one name:type field per column"


def find_files(path: Path) -> tuple[Path, Path | None]:
    """The ``.inter`` file and the ``.item`` file of the same name (or None)."""
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        if len(inters) != 1:
            raise DataFormatError(
                f"expected exactly one .inter file, found {len(inters)}; pass the file itself as --source",
                path=path,
            )
        inter = inters[0]
    else:
        inter = path
    item = inter.with_suffix(".item")
    return inter, item if item.is_file() else None


def _scan_atomic(path: Path) -> tuple[pl.LazyFrame, DelimitedLayout, dict[str, str]]:
    """The file as text columns under canonical names, its layout, and canonical -> source field names."""
    check_readable(path)
    with open(path, "rb") as handle:
        header = handle.readline().decode("utf-8", errors="replace").rstrip("\r\n").lstrip("\ufeff").split("\t")
    check_header_separator(path, header, "\t", what=TAB_RULE)
    names = []
    source = {}
    for position, column in enumerate(header, start=1):
        name, _, kind = column.partition(":")
        if not name or not kind:
            raise DataFormatError(
                f"header field {position} is {column!r}; RecBole headers read name:type (user_id:token)",
                path=path,
                line=1,
            )
        if kind not in FIELD_TYPES:
            raise DataFormatError(
                f"header field {position} is {column!r}: type {kind!r} is not one of {', '.join(FIELD_TYPES)}; "
                f"{TAB_RULE}",
                path=path,
                line=1,
            )
        canonical = RENAMES.get(name, name)
        names.append(canonical)
        source[canonical] = name
    frame, layout = scan_delimited_checked(path, separator="\t", quote_char=None, what=TAB_RULE)
    raw = [c for c in frame.collect_schema().names() if c != LINE]
    return frame.rename(dict(zip(raw, names))), layout, source


def read(path: str | Path, log: RowLog) -> SourceTables:
    """Read RecBole atomic files (see module docstring).

    Args:
        path: a directory holding one ``.inter`` file, or the ``.inter`` file.
        log: unused (delimited files flag their bad rows later); kept for the reader signature.
    """
    inter_path, item_path = find_files(Path(path))
    interactions, layout, source_columns = _scan_atomic(inter_path)
    columns = interactions.collect_schema().names()
    keep = [c for c in (LINE, "user_id", "item_id", "ts", "rating") if c in columns]
    interactions = interactions.select(keep)
    items, items_layout, item_columns = None, None, {}
    if item_path is not None:
        items, items_layout, item_columns = _scan_atomic(item_path)
        items = items.with_columns(
            pl.col(c).str.strip_chars().str.split(" ").list.join(", ")
            for c in TOKEN_LISTS
            if c in items.collect_schema().names()
        )
    return SourceTables.of_files(
        "recbole",
        interactions,
        inter_path,
        items,
        item_path,
        interactions_layout=layout,
        items_layout=items_layout,
        source_columns=source_columns,
        item_source_columns=item_columns,
        time_unit="s",
    )
