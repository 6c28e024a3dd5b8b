"""Type the text tables of a source and find its bad rows.

A bad row is one the pipeline cannot use as given: a delimited row with another number of
fields than the header (``ragged_row``: "expected 3 fields, found 4", an unquoted separator
inside a value), a missing or empty id, a value of the wrong type, a time that is not a
possible interaction time (``time_out_of_range``, see :mod:`recsys.pipelines.times`),
invalid UTF-8, a ``split`` value other than train/valid/test, an event that repeats another
one exactly (same user, item and time), an interaction naming an item absent from the item
file, an item listed twice or without any text. Messages name the user's column
(``unixReviewTime``, ``timestamp (field 4)``), not the canonical one. Under policy
``error`` the first one raises :class:`~recsys.errors.DataFormatError` naming file, line and
column; under ``drop`` they are removed and counted per reason (see :mod:`issues`).

Example:
    >>> log = RowLog("drop")
    >>> events = check_interactions(tables, log)     # a typed, collected DataFrame
    >>> items = check_items(tables, log, max_text_chars=2000)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from recsys.errors import DataFormatError
from recsys.pipelines.ids import canonical_ints
from recsys.pipelines.issues import RowLog
from recsys.pipelines.source import TEXT_FIELDS, SourceTables
from recsys.pipelines.steps import natural_order
from recsys.pipelines.tables import LINE, REPLACEMENT_CHAR, DelimitedLayout, ragged_lines, require_columns
from recsys.pipelines.text import assemble_text, clean_field, cleaning_flags
from recsys.pipelines.times import describe_out_of_range, integer_times_in_range, parse_times

SPLIT_VALUES = ("train", "valid", "test")
#: Fields whose list elements are sentences (joined with a space, not a comma).
PROSE_FIELDS = ("description",)
_REASON = "_reason"
_COLUMN = "_column"
_VALUE = "_value"
_FIELDS = "_fields_found"
_TS = "_ts_parsed"
_TS_OUT = "_ts_out_of_range"
_FULL_TEXT = "_text_chars_before_cut"

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


def _report(
    frame: pl.DataFrame,
    path: Path,
    log: RowLog,
    *,
    items: bool,
    columns: dict[str, str] | None = None,
    details: dict[str, Callable[[str | None, str], str]] | None = None,
) -> pl.DataFrame:
    """Report the flagged rows of ``frame`` (earliest first) and return the others.

    Args:
        frame: rows with the ``_reason``, ``_column`` and ``_value`` columns of :func:`_flags`.
        path: the file, for messages.
        log: the bad-row policy and counts.
        items: the rows are item rows.
        columns: canonical column -> the user's name of it, for messages.
        details: reason -> message from (value, canonical column), replacing :data:`_DETAILS` for that reason.
    """
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
        if details and reason in details:
            detail = details[reason](value, column)
        else:
            detail = _DETAILS.get(reason, reason).format(value=value)
        shown = (columns or {}).get(column, column) if column else None
        log.bad(reason, count, path=path, line=line, column=shown, detail=detail, items=items)
    return frame.filter(pl.col(_REASON).is_null()).drop(_REASON, _COLUMN, _VALUE)


def _ragged_check(layout: DelimitedLayout | None) -> tuple[pl.DataFrame, tuple[str, str, pl.Expr, pl.Expr] | None]:
    """The ragged lines of a delimited file and the check flagging them (None when there are none)."""
    if layout is None:
        return pl.DataFrame(schema={LINE: pl.Int64, _FIELDS: pl.Int64}), None
    ragged = ragged_lines(layout).rename({"_fields": _FIELDS})
    if ragged.height == 0:
        return ragged, None
    message = pl.format(f"expected {layout.fields} fields, found {{}}", pl.col(_FIELDS))
    return ragged, ("ragged_row", "", pl.col(_FIELDS).is_not_null(), message)


def check_interactions(tables: SourceTables, log: RowLog) -> pl.DataFrame:
    """Type the interactions (user_id, item_id str; ts int64; rating f64; split str) and drop bad rows.

    Returns the collected frame in line order (ids as String, or as Int64/Enum from the fast
    path) with ``_line`` kept for the tie-break. Exact duplicate events are found later, on
    integer codes (:func:`~recsys.pipelines.steps.drop_duplicate_events`). The time column
    is read in any form of :mod:`recsys.pipelines.times`; what was detected is stored in
    ``tables.time_info`` for the manifest. Bad rows: a row of another field count than the
    header (``ragged_row``, "expected N fields, found M"), missing or unreadable values, a
    time outside the possible range (``time_out_of_range``), a bad split name; messages name
    the user's columns.

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
    time_column = tables.column("ts")
    position = tables.ts_kind == "position"
    if tables.read_typed is not None and (read := tables.read_typed()) is not None:
        # integer file: read typed, every row's shape proven by the file size (see read_integer_table)
        if position:
            tables.time_info = {"column": time_column, "kind": "position", "unit": "position", "unit_from": "position"}
            return read
        info = integer_times_in_range(read["ts"], column=time_column, unit=tables.time_unit)
        if info is not None:
            tables.time_info = info
            return read  # else some time is out of range: the row checks below report it

    ragged, ragged_check = _ragged_check(tables.interactions_layout)
    data_columns = ["user_id", "item_id", "ts"] + ["rating"] * has_rating + ["split"] * has_split
    raw = frame.select(LINE, *[pl.col(c) if c == "ts" else pl.col(c).cast(pl.String) for c in data_columns]).collect()
    times = parse_times(raw["ts"], column=time_column, unit=tables.time_unit, position=position)
    tables.time_info = times.info
    raw = raw.with_columns(pl.col("ts").cast(pl.String))
    if ragged_check is None and not times.out_of_range.any() and times.info["kind"] in ("unix", "position"):
        fast = _typed_if_clean(raw, has_rating=has_rating, has_split=has_split)
        if fast is not None:
            return fast
    raw = raw.with_columns(times.values.alias(_TS), times.out_of_range.alias(_TS_OUT))
    if ragged_check is not None:
        raw = raw.join(ragged, on=LINE, how="left")

    typed = [pl.col(LINE), _text("user_id").alias("user_id"), _text("item_id").alias("item_id"), pl.col(_TS).alias("ts")]
    if has_rating:
        typed.append(_text("rating").cast(pl.Float64, strict=False).alias("rating"))
    if has_split:
        typed.append(_text("split").str.to_lowercase().alias("split"))
    all_null = pl.all_horizontal([_text(c).is_null() for c in data_columns])
    checks = [("blank_line", "", all_null, pl.lit(None))]
    if ragged_check is not None:
        checks.append(ragged_check)
    for column in ("user_id", "item_id", "ts"):
        checks.append(("missing_value", column, _text(column).is_null(), pl.col(column)))
    for column in ("user_id", "item_id"):
        checks.append(("bad_utf8", column, pl.col(column).cast(pl.String).str.contains(REPLACEMENT_CHAR, literal=True), pl.col(column)))
    checks.append(("bad_type", "ts", pl.col(_TS).is_null(), pl.col("ts")))
    checks.append(("time_out_of_range", "ts", pl.col(_TS_OUT), pl.col("ts")))
    if has_rating:
        bad_rating = _text("rating").is_not_null() & _text("rating").cast(pl.Float64, strict=False).is_null()
        checks.append(("bad_type", "rating", bad_rating, pl.col("rating")))
    if has_split:
        checks.append(("missing_value", "split", _text("split").is_null(), pl.col("split")))
        bad_split = ~_text("split").str.to_lowercase().is_in(SPLIT_VALUES)
        checks.append(("bad_value", "split", bad_split, pl.col("split")))
    # Type every row and mark the bad ones in one pass; name the reasons for those rows only.
    any_bad = pl.any_horizontal([condition for _, _, condition, _ in checks]).fill_null(False)  # as when/then
    collected = raw.lazy().select(*typed, any_bad.alias("_bad")).collect()
    bad = collected["_bad"]
    flagged = raw.filter(bad).lazy().select(LINE, *_flags(checks)).collect()
    details = {
        "ragged_row": lambda value, _: f"{value} (a value holding an unquoted separator?)",
        "time_out_of_range": lambda value, _: describe_out_of_range(value, times.info),
        "bad_type": lambda value, column: _bad_type_detail(value, times.info if column == "ts" and not position else None),
    }
    _report(flagged, path, log, items=False, columns=tables.source_columns, details=details)
    return collected.filter(~bad).drop("_bad")


def _bad_type_detail(value: str | None, info: dict | None) -> str:
    """The message of a value that is not a number (``info`` None) or not a time of the column's form."""
    if info is None:
        return f"{value!r} is not a number"
    try:
        float(value or "")
    except ValueError:
        pass
    else:
        return f"{value!r} is not a number"
    forms = "unix seconds or milliseconds (integer or with fractions), or an ISO-8601 date or date-time"
    if info.get("kind") in ("datetime", "date"):
        return f"{value!r} is not a time: the column holds ISO-8601 {info['kind']}s; expected {forms}"
    return f"{value!r} is not a number (expected {forms})"


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
    checks = [("blank_line", "", pl.all_horizontal([_text(c).is_null() for c in names]), pl.lit(None))]
    ragged, ragged_check = _ragged_check(tables.items_layout)
    if ragged_check is not None:
        frame = frame.join(ragged.lazy(), on=LINE, how="left")
        checks.append(ragged_check)
    checks.append(("missing_value", "item_id", _text("item_id").is_null(), pl.col("item_id")))
    for column in names:
        bad = pl.col(column).cast(pl.String).str.contains(REPLACEMENT_CHAR, literal=True)
        checks.append(("bad_utf8", column, bad, pl.col(column)))
    cleaned = [clean_field(c, separator=" " if c in PROSE_FIELDS else ", ") for c in fields]
    flags = [flag for c in fields for flag in cleaning_flags(c)]
    full_text = assemble_text(text_fields, max_chars=None).str.len_chars().alias(_FULL_TEXT)
    collected = (
        frame.with_columns(*_flags(checks), *flags)
        .with_columns(_text("item_id").alias("item_id"), *cleaned)
        .with_columns(assemble_text(text_fields, max_chars=max_text_chars), full_text)
        .collect()
    )
    flag_columns = [c for c in collected.columns if c.startswith("_") and ":" in c]
    details = {"ragged_row": lambda value, _: f"{value} (a value holding an unquoted separator?)"}
    items = _report(collected, path, log, items=True, columns=tables.item_source_columns, details=details)
    items = items.drop(_FIELDS, strict=False)

    duplicates = items.filter(~pl.col("item_id").is_first_distinct())
    if duplicates.height:
        item = duplicates["item_id"][0]
        first = items.filter(pl.col("item_id") == item)[LINE].min()
        detail = f"item {item!r} is listed again (first at line {first})"
        log.bad("duplicate_item", duplicates.height, path=path, line=duplicates[LINE][0], column=tables.column("item_id", items=True),
                detail=detail, items=True)
        items = items.filter(pl.col("item_id").is_first_distinct())

    if text_fields:
        empty = items.filter(pl.col("text") == "")
        if empty.height:
            detail = f"item {empty['item_id'][0]!r} has no text (all of {', '.join(text_fields)} are empty)"
            log.bad("item_without_text", empty.height, path=path, line=empty[LINE][0], column=tables.column(text_fields[0], items=True),
                    detail=detail, items=True)
            items = items.filter(pl.col("text") != "")
    # What cleaning removed from the items kept, counted: no text goes unseen.
    if flag_columns:
        sums = items.select(pl.col(flag_columns).sum()).row(0, named=True)
        for column, total in sums.items():
            kind, _, field_name = column[1:].partition(":")
            log.count_text(kind, tables.column(field_name, items=True), total)
    log.count_text("cut_to_max_text_chars", None, int((items[_FULL_TEXT] > max_text_chars).sum()))
    items = items.drop(*flag_columns, _FULL_TEXT)
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
