"""Type the text tables of a source and find its bad rows.

A bad row is one the pipeline cannot use as given: a missing or empty id, a value of the
wrong type, invalid UTF-8, a ``split`` value other than train/valid/test, an event that
repeats another one exactly (same user, item and time), an interaction naming an item
absent from the item file, an item listed twice or without any text. Under policy
``error`` the first one raises :class:`~recsys.errors.DataFormatError` naming file, line and
column; under ``drop`` they are removed and counted per reason (see :mod:`issues`).

Example:
    >>> log = RowLog("drop")
    >>> events = check_interactions(tables, log)     # a typed, collected DataFrame
    >>> items = check_items(tables, log, max_text_chars=2000)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recsys.errors import DataFormatError
from recsys.pipelines.ids import canonical_ints
from recsys.pipelines.issues import RowLog
from recsys.pipelines.source import TEXT_FIELDS, SourceTables
from recsys.pipelines.steps import natural_order
from recsys.pipelines.tables import LINE, REPLACEMENT_CHAR, require_columns
from recsys.pipelines.text import assemble_text, clean_field

SPLIT_VALUES = ("train", "valid", "test")
#: Fields whose list elements are sentences (joined with a space, not a comma).
PROSE_FIELDS = ("description",)
_REASON = "_reason"
_COLUMN = "_column"
_VALUE = "_value"

#: Messages per reason, completed with the offending value.
_DETAILS = {
    "missing_value": "the value is missing or empty",
    "bad_type": "{value!r} is not a number",
    "bad_utf8": "invalid UTF-8 in {value!r}; save the file as UTF-8",
    "bad_value": "{value!r} is not one of train, valid, test",
}


def _text(name: str) -> pl.Expr:
    """Column ``name`` as stripped text, empty text as null."""
    value = pl.col(name).cast(pl.String).str.strip_chars()
    return pl.when(value == "").then(None).otherwise(value)


def _integer(name: str) -> pl.Expr:
    """Column ``name`` as Int64: integers, or integral numbers written as floats ("8.8e8", "12.0")."""
    value = _text(name)
    as_float = value.cast(pl.Float64, strict=False)
    integral = pl.when(as_float.round(0) == as_float).then(as_float.cast(pl.Int64, strict=False))
    return pl.coalesce(value.cast(pl.Int64, strict=False), integral)


def _flags(checks: list[tuple[str, str, pl.Expr, pl.Expr]]) -> list[pl.Expr]:
    """Columns _reason, _column, _value from (reason, column, condition, value) checks, first hit wins."""
    reason = column = value = None
    for name, col, condition, raw in reversed(checks):
        if reason is None:
            reason = pl.when(condition).then(pl.lit(name))
            column = pl.when(condition).then(pl.lit(col))
            value = pl.when(condition).then(raw.cast(pl.String))
        else:
            reason = pl.when(condition).then(pl.lit(name)).otherwise(reason)
            column = pl.when(condition).then(pl.lit(col)).otherwise(column)
            value = pl.when(condition).then(raw.cast(pl.String)).otherwise(value)
    if reason is None:
        return [pl.lit(None, pl.String).alias(n) for n in (_REASON, _COLUMN, _VALUE)]
    return [reason.alias(_REASON), column.alias(_COLUMN), value.alias(_VALUE)]


def _report(frame: pl.DataFrame, path: Path, log: RowLog, *, items: bool) -> pl.DataFrame:
    """Report the flagged rows of ``frame`` (earliest first) and return the others."""
    flagged = frame.filter(pl.col(_REASON).is_not_null())
    if flagged.height == 0:
        return frame.drop(_REASON, _COLUMN, _VALUE)
    blank = flagged.filter(pl.col(_REASON) == "blank_line").height
    log.count("blank_line", blank, items=items)
    firsts = (
        flagged.filter(pl.col(_REASON) != "blank_line")
        .sort(LINE)
        .group_by(_REASON, maintain_order=True)
        .agg(pl.len().alias("n"), pl.col(LINE).first(), pl.col(_COLUMN).first(), pl.col(_VALUE).first())
    )
    for reason, count, line, column, value in firsts.iter_rows():
        detail = _DETAILS.get(reason, reason).format(value=value)
        log.bad(reason, count, path=path, line=line, column=column, detail=detail, items=items)
    return frame.filter(pl.col(_REASON).is_null()).drop(_REASON, _COLUMN, _VALUE)


def check_interactions(tables: SourceTables, log: RowLog) -> pl.DataFrame:
    """Type the interactions (user_id, item_id str; ts int64; rating f64; split str) and drop bad rows.

    Returns the collected frame in line order (ids as String, or as Int64/Enum from the fast path) with ``_line`` kept for the tie-break. Exact
    duplicate events are found later, on integer codes (:func:`~recsys.pipelines.steps.drop_duplicate_events`).

    Args:
        tables: a reader's output.
        log: the bad-row policy and counts.

    Example:
        >>> check_interactions(tables, RowLog("error")).columns
        ['_line', 'user_id', 'item_id', 'ts']
    """
    path = tables.interactions_file
    frame = tables.interactions
    hint = "Name the columns user_id, item_id and ts (or timestamp/position), or choose --format."
    require_columns(frame, path, ["user_id", "item_id", "ts"], hint=hint)
    names = frame.collect_schema().names()
    has_rating = "rating" in names
    has_split = "split" in names
    typed = [pl.col(LINE), _text("user_id").alias("user_id"), _text("item_id").alias("item_id"), _integer("ts").alias("ts")]
    data_columns = ["user_id", "item_id", "ts"]
    if has_rating:
        typed.append(_text("rating").cast(pl.Float64, strict=False).alias("rating"))
        data_columns.append("rating")
    if has_split:
        typed.append(_text("split").str.to_lowercase().alias("split"))
        data_columns.append("split")
    all_null = pl.all_horizontal([_text(c).is_null() for c in data_columns])
    checks = [("blank_line", "", all_null, pl.lit(None))]
    for column in ("user_id", "item_id", "ts"):
        checks.append(("missing_value", column, _text(column).is_null(), pl.col(column)))
    for column in ("user_id", "item_id"):
        checks.append(("bad_utf8", column, pl.col(column).cast(pl.String).str.contains(REPLACEMENT_CHAR, literal=True), pl.col(column)))
    checks.append(("bad_type", "ts", _integer("ts").is_null(), pl.col("ts")))
    if has_rating:
        bad_rating = _text("rating").is_not_null() & _text("rating").cast(pl.Float64, strict=False).is_null()
        checks.append(("bad_type", "rating", bad_rating, pl.col("rating")))
    if has_split:
        checks.append(("missing_value", "split", _text("split").is_null(), pl.col("split")))
        bad_split = ~_text("split").str.to_lowercase().is_in(SPLIT_VALUES)
        checks.append(("bad_value", "split", bad_split, pl.col("split")))
    if tables.read_typed is not None and (read := tables.read_typed()) is not None:
        return read  # integer file: read typed, nothing to check (see read_integer_table)
    raw = frame.select(LINE, *[pl.col(c).cast(pl.String) for c in data_columns]).collect()
    fast = _typed_if_clean(raw, has_rating=has_rating, has_split=has_split)
    if fast is not None:
        return fast
    # Type every row and mark the bad ones in one pass; name the reasons for those rows only.
    any_bad = pl.any_horizontal([condition for _, _, condition, _ in checks]).fill_null(False)  # as when/then
    collected = raw.lazy().select(*typed, any_bad.alias("_bad")).collect()
    bad = collected["_bad"]
    flagged = raw.filter(bad).lazy().select(LINE, *_flags(checks)).collect()
    _report(flagged, path, log, items=False)
    return collected.filter(~bad).drop("_bad")


def _typed_if_clean(raw: pl.DataFrame, *, has_rating: bool, has_split: bool) -> pl.DataFrame | None:
    """The typed events when no row of ``raw`` is bad and no value needs cleaning, else None.

    The fast path of :func:`check_interactions`: the same output as the row checks when they
    would find nothing, from a few vectorised tests (ids as canonical integers or clean
    distinct strings, integer ts, numeric ratings, exact split names). Ids that are all
    canonical integers come back as Int64 (their text is exactly ``str(id)``), other ids as
    an Enum over their distinct values in natural order, so they are hashed only once.
    """
    ids = {}
    for column in ("user_id", "item_id"):
        values = raw[column]
        if values.null_count():
            return None
        ints = canonical_ints(values)
        if ints is not None:
            ids[column] = pl.Series(column, ints)
            continue
        distinct = values.unique()
        clean = (
            (distinct.str.strip_chars() == distinct)
            & (distinct.str.len_bytes() > 0)
            & ~distinct.str.contains(REPLACEMENT_CHAR, literal=True)
        )
        if not clean.all():
            return None
        ids[column] = values.cast(pl.Enum(natural_order(distinct)))  # coded once, here
    ts = raw["ts"].cast(pl.Int64, strict=False)
    if ts.null_count():
        return None
    columns = [raw[LINE], ids["user_id"], ids["item_id"], ts]
    if has_rating:
        rating = raw["rating"].cast(pl.Float64, strict=False)
        if rating.null_count() != raw["rating"].null_count():
            return None
        columns.append(rating)
    if has_split:
        if raw["split"].null_count() or not raw["split"].is_in(SPLIT_VALUES).all():
            return None
        columns.append(raw["split"])
    return pl.DataFrame(columns)


def check_items(
    tables: SourceTables, log: RowLog, *, max_text_chars: int
) -> tuple[pl.DataFrame | None, pl.Series]:
    """Type and clean the item table, assemble ``text``, and drop bad item rows.

    Items listed twice keep their first row; items whose text is empty are bad rows (an item
    file should describe its items). Returns the items (None when the source has no item
    file) and the ids of the items dropped as bad rows.

    Args:
        tables: a reader's output.
        log: the bad-row policy and counts.
        max_text_chars: longest item text kept.
    """
    if tables.items is None:
        return None, pl.Series("item_id", [], dtype=pl.String)
    path = tables.items_file
    frame = tables.items
    require_columns(frame, path, ["item_id"], hint="Name the item id column item_id, or choose --format.")
    names = [c for c in frame.collect_schema().names() if c != LINE]
    fields = [c for c in names if c != "item_id"]
    text_fields = [c for c in TEXT_FIELDS if c in fields]
    checks = [
        ("blank_line", "", pl.all_horizontal([_text(c).is_null() for c in names]), pl.lit(None)),
        ("missing_value", "item_id", _text("item_id").is_null(), pl.col("item_id")),
    ]
    for column in names:
        bad = pl.col(column).cast(pl.String).str.contains(REPLACEMENT_CHAR, literal=True)
        checks.append(("bad_utf8", column, bad, pl.col(column)))
    cleaned = [clean_field(c, separator=" " if c in PROSE_FIELDS else ", ") for c in fields]
    collected = (
        frame.with_columns(*_flags(checks))
        .with_columns(_text("item_id").alias("item_id"), *cleaned)
        .with_columns(assemble_text(text_fields, max_chars=max_text_chars))
        .collect()
    )
    items = _report(collected, path, log, items=True)

    duplicates = items.filter(~pl.col("item_id").is_first_distinct())
    if duplicates.height:
        item = duplicates["item_id"][0]
        first = items.filter(pl.col("item_id") == item)[LINE].min()
        detail = f"item {item!r} is listed again (first at line {first})"
        log.bad("duplicate_item", duplicates.height, path=path, line=duplicates[LINE][0], column="item_id", detail=detail, items=True)
        items = items.filter(pl.col("item_id").is_first_distinct())

    if text_fields:
        empty = items.filter(pl.col("text") == "")
        if empty.height:
            detail = f"item {empty['item_id'][0]!r} has no text (all of {', '.join(text_fields)} are empty)"
            log.bad("item_without_text", empty.height, path=path, line=empty[LINE][0], column=text_fields[0], detail=detail, items=True)
            items = items.filter(pl.col("text") != "")
    listed = collected["item_id"].drop_nulls().unique()
    dropped = listed.filter(~listed.is_in(items["item_id"].implode()))
    return items, dropped


def check_known_items(
    events: pl.DataFrame, listed: np.ndarray, dropped: np.ndarray, keys: pl.Series, tables: SourceTables, log: RowLog
) -> pl.DataFrame:
    """Drop (or raise for) interactions naming items the item file does not list.

    Interactions of items dropped from the item file as bad rows are counted as ``item_dropped``.

    Args:
        events: events with item codes ``_i``.
        listed: per item code, whether the (checked) item file lists it.
        dropped: per item code, whether the item file had it on a row dropped as bad.
        keys: the item id of each code (for the message).
        tables: the source, for messages.
        log: the bad-row policy and counts.
    """
    codes = events["_i"].to_numpy()
    known = listed[codes]
    if known.all():
        return events
    of_dropped = ~known & dropped[codes]
    log.count("item_dropped", int(of_dropped.sum()))
    unknown = events.filter(pl.Series(~known & ~of_dropped))
    if unknown.height:
        first = unknown.sort(LINE).row(0, named=True)
        detail = f"item {keys[first['_i']]!r} is not in the item file {tables.items_file}"
        log.bad("unknown_item", unknown.height, path=tables.interactions_file, line=first[LINE], column="item_id", detail=detail)
    return events.filter(pl.Series(known))


def require_any_rows(frame: pl.DataFrame, path: Path, what: str) -> None:
    """Raise when nothing usable is left in ``frame``."""
    if frame.height == 0:
        raise DataFormatError(f"no usable {what} rows are left after the checks; see the counts above", path=path)
