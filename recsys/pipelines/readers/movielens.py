"""GroupLens MovieLens: ml-100k (``u.data``, ``u.item``) and ml-1m/ml-10m (``ratings.dat``, ``movies.dat``).

- ``u.data``: tab-separated ``user item rating timestamp``, no header.
- ``u.item``: ``|``-separated ``id|title|release date|video release date|IMDb URL|19 genre flags``;
  genre names come from ``u.genre`` when present.
- ``ratings.dat``: ``user::item::rating::timestamp``.
- ``movies.dat``: ``id::Title (Year)::Genre|Genre``.

The item files of ml-100k and ml-1m are Latin-1, not UTF-8, and edited copies mix both:
each line is decoded as UTF-8 when it is valid UTF-8 and as Latin-1 otherwise, so every
title comes out right; the manifest notes the encoding found (``utf-8``, ``latin-1``, or
``mixed`` with the number and first numbers of the Latin-1 lines).

Example:
    >>> tables = read(Path("ml-1m"), RowLog("error"), variant="movielens-dat")
    >>> tables.items.collect_schema().names()
    ['_line', 'item_id', 'title', 'year', 'genres']
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from recsys.errors import DataFormatError
from recsys.pipelines.issues import RowLog
from recsys.pipelines.source import SourceTables
from recsys.pipelines.tables import LINE, check_readable, scan_delimited_checked

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)
INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "ts"]


def _decode(path: Path) -> tuple[str, str]:
    """The text of a small MovieLens file, decoded line by line, and the encoding found.

    Each line is UTF-8 when it decodes as UTF-8, else Latin-1 (every byte is a Latin-1
    character). Returns ``(text, note)``: note is "utf-8", "latin-1" (every line that is
    not ASCII is Latin-1), or "mixed: N Latin-1 lines (lines a, b, ...), the rest UTF-8".

    Example:
        >>> _decode(Path("ml-1m/movies.dat"))[1]
        'latin-1'
    """
    check_readable(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    lines = data.split(b"\n")
    latin, utf8 = [], 0
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
            utf8 += not text.isascii()
            lines[number - 1] = text
        except UnicodeDecodeError:
            latin.append(number)
            lines[number - 1] = raw.decode("latin-1")
    if utf8 == 0:
        return "\n".join(lines), "latin-1"
    shown = ", ".join(map(str, latin[:10])) + (", ..." if len(latin) > 10 else "")
    return "\n".join(lines), f"mixed: {len(latin)} Latin-1 line(s) (lines {shown}), the other non-ASCII lines UTF-8"


def _folder_file(path: Path, name: str) -> Path:
    return path / name if path.is_dir() else path.parent / name


def _read_u_item(path: Path, genre_names: tuple[str, ...], log: RowLog) -> pl.LazyFrame:
    text, _ = _decode(path)
    names = ["item_id", "title", "release_date", "video_release_date", "imdb_url"]
    names += [f"_g{i}" for i in range(len(genre_names))]
    ragged = [(n, line.count("|") + 1) for n, line in enumerate(text.splitlines(), start=1)
              if line.strip() and line.count("|") + 1 != len(names)]
    if ragged:
        line, found = ragged[0]
        log.bad("ragged_row", len(ragged), path=path, line=line, column=None, items=True,
                detail=f"expected {len(names)} fields, found {found}")
        skip = {n for n, _ in ragged}
        text = "\n".join("" if n in skip else line for n, line in enumerate(text.splitlines(), start=1))
    frame = pl.read_csv(
        io.BytesIO(text.encode("utf-8")),
        separator="|",
        has_header=False,
        new_columns=names,
        quote_char=None,
        infer_schema=False,
        truncate_ragged_lines=True,
    )
    if frame.width < len(names):
        raise DataFormatError(f"expected {len(names)} |-separated fields per line, found {frame.width}", path=path, line=1)
    flags = [pl.when(pl.col(f"_g{i}") == "1").then(pl.lit(name)) for i, name in enumerate(genre_names)]
    return (
        frame.with_row_index(LINE, offset=1)
        .lazy()
        .select(
            pl.col(LINE).cast(pl.Int64),
            "item_id",
            "title",
            pl.col("release_date").str.extract(r"(\d{4})\s*$").alias("year"),
            pl.concat_list(flags).list.drop_nulls().list.join(", ").alias("genres"),
            "release_date",
            "imdb_url",
        )
    )


def _read_movies_dat(path: Path, log: RowLog) -> pl.LazyFrame:
    text, _ = _decode(path)
    lines, ids, titles, genres = [], [], [], []
    ragged = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split("::")
        if len(parts) != 3:
            if line.strip():
                ragged.append((number, len(parts)))
            continue
        lines.append(number)
        ids.append(parts[0])
        titles.append(parts[1])
        genres.append(parts[2])
    if ragged:
        log.bad("ragged_row", len(ragged), path=path, line=ragged[0][0], column=None, items=True,
                detail=f"expected 3 fields (id::title::genres), found {ragged[0][1]}")
    frame = pl.DataFrame({LINE: pl.Series(lines, dtype=pl.Int64), "item_id": ids, "title": titles, "_genres": genres})
    return frame.lazy().select(
        LINE,
        "item_id",
        "title",
        pl.col("title").str.extract(r"\((\d{4})\)\s*$").alias("year"),
        pl.col("_genres").str.replace_all("|", ", ", literal=True).alias("genres"),
    )


def _scan_dat(path: Path):
    """``a::b::c::d`` lines: split on ':' and keep every other field (ratings.dat has no other ':').

    Returns the frame and its layout (four ``::``-separated fields per line).
    """
    raw, layout = scan_delimited_checked(
        path, separator=":", names=[f"_f{i}" for i in range(7)], quote_char=None, layout_separator="::", fields=4
    )
    frame = raw.select(LINE, *[pl.col(f"_f{2 * i}").alias(name) for i, name in enumerate(INTERACTION_COLUMNS)])
    return frame, layout


def read(path: str | Path, log: RowLog, *, variant: str = "movielens-100k") -> SourceTables:
    """Read a GroupLens MovieLens folder (or its ratings file).

    Args:
        path: the folder, or ``u.data``/``ratings.dat`` itself.
        log: where ragged ``u.item`` lines are reported (the ratings files are checked later).
        variant: "movielens-100k" (u.data) or "movielens-dat" (ratings.dat).
    """
    path = Path(path)
    notes: dict = {}
    if variant == "movielens-100k":
        inter_path = _folder_file(path, "u.data") if path.is_dir() or path.name != "u.data" else path
        interactions, layout = scan_delimited_checked(inter_path, separator="\t", names=INTERACTION_COLUMNS, quote_char=None)
        item_path = _folder_file(inter_path, "u.item")
        genre_path = _folder_file(inter_path, "u.genre")
        genre_names = GENRES_100K
        if genre_path.is_file():
            text, _ = _decode(genre_path)
            genre_names = tuple(line.split("|")[0] for line in text.splitlines() if line.strip())
        items = _read_u_item(item_path, genre_names, log) if item_path.is_file() else None
    elif variant == "movielens-dat":
        inter_path = _folder_file(path, "ratings.dat") if path.is_dir() or path.name != "ratings.dat" else path
        interactions, layout = _scan_dat(inter_path)
        item_path = _folder_file(inter_path, "movies.dat")
        items = _read_movies_dat(item_path, log) if item_path.is_file() else None
    else:
        raise DataFormatError(f"unknown MovieLens variant {variant!r}", path=path)
    if items is not None:
        notes["item_file_encoding"] = _decode(item_path)[1]
    else:
        item_path = None
    fields = {"user_id": "user id", "item_id": "item id", "rating": "rating", "ts": "timestamp"}
    columns = {name: f"{label} (field {i})" for i, (name, label) in enumerate(fields.items(), start=1)}
    return SourceTables.of_files(
        variant,
        interactions,
        inter_path,
        items,
        item_path,
        notes=notes,
        interactions_layout=layout,
        source_columns=columns,
        time_unit="s",
    )
