"""Time columns in the forms users have: detected, converted to one int64 ``ts``, bounded.

Forms read (the column's dtype, or for text columns the form most values take):

- ``unix``: integer numbers (``1700000000``, ``1700000000000``, ``1.7e9``). Their unit is the
  one the format documents (Amazon 2023: milliseconds; MovieLens, Amazon 2018, RecBole:
  seconds) or, for generic sources, the one their magnitude shows (median below 1e11:
  seconds; below 1e14: milliseconds; below 1e17: microseconds; else nanoseconds). Kept
  as given in ``ts``.
- ``unix_fractional``: numbers with fractions (RecBole ``timestamp:float`` such as
  ``1600000000.25``), unit as above; ``ts`` holds microseconds (rounded), so the order of
  the fractions is kept.
- ``datetime``: Parquet/Arrow date-time columns, or ISO-8601 date-time text
  (``2021-03-04T05:06:07``, ``2021-03-04 05:06:07.5``, ``...Z``, ``...+02:00``; date-only
  values in such a column are midnight); ``ts`` holds microseconds since 1970-01-01 UTC.
  Values without a time zone are taken as UTC.
- ``date``: Parquet/Arrow date columns or ISO-8601 dates (``2021-03-04``); ``ts`` holds
  seconds since 1970-01-01 UTC (midnight).
- ``position``: a source that only orders each user's events; integers kept as given,
  without bounds.

A wall-clock time outside [1970-01-01, 2100-01-01) UTC is impossible for an interaction log
(a negative millisecond timestamp, a millisecond value in a seconds column): its row is a
bad row (``time_out_of_range``), like a value that is not a time at all (``bad_type``).
What was detected is stated in manifest.json (``source.time``), under the user's column name.

Example:
    >>> parsed = parse_times(pl.Series(["1600000000.25", "1600000001"]), column="timestamp")
    >>> parsed.info["kind"], parsed.info["unit"], parsed.values.to_list()
    ('unix_fractional', 'us', [1600000000250000, 1600000001000000])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

#: Seconds per unit of ``ts``.
UNIT_SECONDS = {"s": 1, "ms": 10**-3, "us": 10**-6, "ns": 10**-9}
#: Units per second.
PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
#: The wall-clock range an interaction can have, in seconds since 1970-01-01 UTC: [1970-01-01, 2100-01-01).
VALID_SECONDS = (0, 4_102_444_800)
VALID_RANGE_TEXT = "1970-01-01 to 2099-12-31 UTC"
#: Median magnitudes that separate seconds, milliseconds, microseconds and nanoseconds.
_MAGNITUDE_UNITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"))
#: ISO-8601 forms tried on text values (after "T" between date and time and "Z" -> "+00:00").
_ISO_WITH_ZONE = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z")
_ISO_NAIVE = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M")
_ISO_DATE = "%Y-%m-%d"


@dataclass
class ParsedTimes:
    """The outcome of :func:`parse_times`.

    Attributes:
        values: Int64 ``ts`` per row (null where the value is missing or not a time of the form).
        out_of_range: Boolean per row, True where the value is a time outside
            :data:`VALID_SECONDS` (always False for positions).
        info: what the manifest states: ``column`` (the user's name), ``kind``, ``unit`` of
            ``ts``, ``unit_from`` ("format", "values", "type" or "position"), ``source_unit``
            (of the numbers as written, for numeric kinds), ``valid_range``.
    """

    values: pl.Series
    out_of_range: pl.Series
    info: dict


def _as_date(value: int, unit: str) -> str:
    seconds = value // PER_SECOND[unit]
    try:
        return str(np.datetime64(int(seconds), "s").astype("datetime64[D]"))
    except (OverflowError, ValueError):
        return "far outside any calendar"


def describe_out_of_range(value: str | None, info: dict) -> str:
    """The bad-row message of a time ``value`` (as written) outside :data:`VALID_SECONDS`."""
    when = "outside any calendar"
    try:
        number = float(value or "")
    except ValueError:
        when = str(value)
    else:
        unit = info.get("source_unit") or info.get("unit", "s")
        if unit in PER_SECOND:
            when = _as_date(int(number // PER_SECOND[unit]), "s") if abs(number) < 1e20 else when
    unit_text = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}.get(
        info.get("source_unit", ""), info.get("kind", "")
    )
    return (
        f"{value!r} read as {unit_text} ({info.get('unit_from', '')}) is {when}, outside {VALID_RANGE_TEXT}: "
        "not a possible interaction time"
    )


def unit_by_magnitude(values: np.ndarray) -> str:
    """The unit of unix times ``values`` from their median magnitude (see module docstring)."""
    finite = np.abs(values[np.isfinite(values)]) if values.dtype.kind == "f" else np.abs(values)
    if finite.size == 0:
        return "s"
    median = float(np.median(finite))
    return next((unit for bound, unit in _MAGNITUDE_UNITS if median < bound), "ns")


def _sample(values: pl.Series, size: int = 100_000) -> np.ndarray:
    """Up to ``size`` non-null values spread over the whole series (for the magnitude)."""
    values = values.drop_nulls()
    step = max(1, values.len() // size)
    return values.gather_every(step).to_numpy()


def _bounds(unit: str) -> tuple[int, int]:
    low, high = VALID_SECONDS
    return low * PER_SECOND[unit], high * PER_SECOND[unit]


def _iso(text: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Epoch microseconds of ISO-8601 date-times (null where not one) and a mask of date-only values."""
    normal = text.str.replace(r"^(\d{4}-\d{2}-\d{2})[ T]", r"${1}T").str.replace(r"[Zz]$", "+00:00")
    parsed = [normal.str.to_datetime(f, strict=False, time_unit="us").dt.epoch("us") for f in _ISO_WITH_ZONE]
    parsed += [normal.str.to_datetime(f, strict=False, time_unit="us").dt.epoch("us") for f in _ISO_NAIVE]
    date = normal.str.to_date(_ISO_DATE, strict=False)
    parsed.append(date.cast(pl.Datetime("us")).dt.epoch("us"))
    return pl.select(pl.coalesce(parsed)).to_series(), date.is_not_null() & normal.str.len_chars().eq(10)


def parse_times(values: pl.Series, *, column: str, unit: str | None = None, position: bool = False) -> ParsedTimes:
    """Detect the form of a time column and convert it to int64 ``ts`` (see module docstring).

    Args:
        values: the column as read: text, integers, floats, Date or Datetime.
        column: the user's name of the column (stated in ``info``).
        unit: the unit the format documents for numbers ("s", "ms"), or None to infer it.
        position: the column orders events without being a clock: integers only, no bounds.

    Returns:
        :class:`ParsedTimes`; rows whose value is missing or not of the detected form have a
        null ``ts`` (the caller reports them as ``missing_value`` / ``bad_type``).

    Example:
        >>> parse_times(pl.Series([-1591920000000, 1650000000000]), column="timestamp", unit="ms").out_of_range.to_list()
        [True, False]
    """
    info: dict = {"column": column}
    dtype = values.dtype
    no_range = pl.Series("out_of_range", [False] * values.len(), dtype=pl.Boolean)
    if isinstance(dtype, pl.Datetime) or dtype == pl.Date:  # a clock even in a column named position
        if dtype == pl.Date:
            stored, kind, unit_out = values.cast(pl.Datetime("us")).dt.epoch("s"), "date", "s"
        else:
            stored, kind, unit_out = values.dt.epoch("us"), "datetime", "us"
            if dtype.time_zone is None:
                info["time_zone"] = "none in the data: taken as UTC"
        info.update(kind=kind, unit=unit_out, unit_from="type", source_type=str(dtype))
        return _bounded(stored, info)

    if dtype.is_integer():
        as_int, as_float = values.cast(pl.Int64, strict=False), values.cast(pl.Float64)
        text = None
    elif dtype.is_float():
        as_float = values.cast(pl.Float64)
        as_int = pl.select(pl.when(as_float.round(0) == as_float).then(as_float.cast(pl.Int64, strict=False))).to_series()
        text = None
    else:
        text = values.cast(pl.String).str.strip_chars()
        text = pl.select(pl.when(text == "").then(None).otherwise(text)).to_series()
        as_float = text.cast(pl.Float64, strict=False)
        exact = text.cast(pl.Int64, strict=False)
        integral = pl.select(pl.when(as_float.round(0) == as_float).then(as_float.cast(pl.Int64, strict=False))).to_series()
        as_int = pl.select(pl.coalesce(exact, integral)).to_series()
    finite = as_float.is_finite().fill_null(False) | as_int.is_not_null()
    numeric = int(finite.sum())

    if position:
        info.update(kind="position", unit="position", unit_from="position")
        return ParsedTimes(as_int.alias("ts"), no_range, info)

    if text is not None and numeric < text.len() - text.null_count():
        iso, date_only = _iso(text)
        if int(iso.is_not_null().sum()) > numeric:
            if bool((date_only | iso.is_null()).all()):
                stored = (iso // 10**6).alias("ts")
                info.update(kind="date", unit="s", unit_from="values", source_format="ISO-8601 date")
            else:
                stored = iso.alias("ts")
                info.update(kind="datetime", unit="us", unit_from="values", source_format="ISO-8601 date-time")
                info["time_zone"] = "values without an offset are taken as UTC"
            return _bounded(stored, info)

    numbers = as_float.filter(finite)
    fractional = bool((as_int.is_null() & finite).any())
    source_unit = unit or unit_by_magnitude(_sample(numbers))
    info.update(source_unit=source_unit, unit_from="format" if unit else "values")
    if fractional:
        scale = PER_SECOND["us"] / PER_SECOND[source_unit]
        stored = pl.select(pl.when(finite).then((as_float * scale).round(0).cast(pl.Int64, strict=False))).to_series()
        info.update(kind="unix_fractional", unit="us")
    else:
        stored = as_int
        info.update(kind="unix", unit=source_unit)
    return _bounded(stored.alias("ts"), info)


def _bounded(stored: pl.Series, info: dict) -> ParsedTimes:
    low, high = _bounds(info["unit"])
    info["valid_range"] = VALID_RANGE_TEXT
    out = ((stored < low) | (stored >= high)).fill_null(False).alias("out_of_range")
    return ParsedTimes(stored.cast(pl.Int64).alias("ts"), out, info)


def integer_times_in_range(ts: pl.Series, *, column: str, unit: str | None) -> dict | None:
    """The time facts of an Int64 ``ts`` read typed, or None when some value is out of range.

    The check of :func:`parse_times` for the typed fast path (``read_integer_table``): only
    the unit and the minimum and maximum are needed, no per-row pass.
    """
    if ts.len() == 0:
        return None
    source_unit = unit or unit_by_magnitude(_sample(ts))
    low, high = _bounds(source_unit)
    if int(ts.min()) < low or int(ts.max()) >= high:
        return None
    return {"column": column, "kind": "unix", "unit": source_unit, "unit_from": "format" if unit else "values",
            "source_unit": source_unit, "valid_range": VALID_RANGE_TEXT}
