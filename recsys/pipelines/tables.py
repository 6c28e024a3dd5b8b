"""Low-level table scanning shared by every reader: text columns plus a ``_line`` column.

Every scanned table keeps each row's 1-based line number in the source file (``_line``) so
later checks can name the exact line of a bad row. Columns are read as text (``String``)
and typed later by :mod:`recsys.pipelines.validate`, which is where wrong types become bad
rows instead of a failed read. The one exception is :func:`read_integer_table`: a file
of canonical integers only (checked by its byte count) is read typed, with the same result.

Invalid UTF-8 in delimited files is read lossily (the bad bytes become U+FFFD) and flagged
per row by the validator; JSON lines are parsed by Polars, and only when that fails are the
lines checked one by one in Python to find and locate (or drop) the broken ones.

Example:
    >>> frame = scan_delimited("u.data", separator="\\t", names=["user_id", "item_id", "rating", "ts"])
    >>> frame.collect_schema().names()
    ['user_id', 'item_id', 'rating', 'ts', '_line']
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import polars as pl

from recsys.errors import DataFormatError
from recsys.pipelines.issues import RowLog

LINE = "_line"
#: Replacement character Polars writes for invalid UTF-8 bytes in lossy mode.
REPLACEMENT_CHAR = "\ufffd"


def check_readable(path: Path) -> None:
    """Raise a located error when ``path`` is missing or empty."""
    if not path.is_file():
        raise DataFormatError("file not found; check --source", path=path)
    if path.stat().st_size == 0:
        raise DataFormatError("the file is empty; expected a header and data rows", path=path, line=1)


def scan_delimited(
    path: str | Path,
    *,
    separator: str = ",",
    names: list[str] | None = None,
    quote_char: str | None = '"',
) -> pl.LazyFrame:
    """Scan a CSV/TSV file lazily with every column as text and a 1-based ``_line`` column.

    Rows with more fields than the header are cut and rows with fewer are filled with nulls
    here: :func:`scan_delimited_checked` also returns the :class:`DelimitedLayout` with which
    the row checks find those rows (:func:`ragged_lines`). Readers use that one.

    Args:
        path: the file.
        separator: one byte.
        names: column names for a file without header; None reads the header line.
        quote_char: quoting character, None for files that never quote (RecBole, GroupLens).

    Example:
        >>> scan_delimited("interactions.csv").collect()
    """
    path = Path(path)
    check_readable(path)
    has_header = names is None
    frame = pl.scan_csv(
        path,
        separator=separator,
        has_header=has_header,
        new_columns=names,
        infer_schema=False,
        quote_char=quote_char,
        encoding="utf8-lossy",
        truncate_ragged_lines=True,
        row_index_name=LINE,
        row_index_offset=2 if has_header else 1,
    )
    columns = frame.collect_schema().names()
    if names is not None and len(columns) - 1 < len(names):
        raise DataFormatError(
            f"expected {len(names)} columns ({', '.join(names)}) separated by {separator!r}, "
            f"found {len(columns) - 1}",
            path=path,
            line=1,
        )
    return frame.select([pl.col(LINE).cast(pl.Int64), *[pl.col(c) for c in columns if c != LINE]])


#: Separators a delimited file might use instead of the expected one, as named in messages.
_OTHER_SEPARATORS = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "vertical bars", " ": "spaces"}


def check_header_separator(path: Path, header: list[str], separator: str, *, what: str) -> None:
    """Raise when a header read with ``separator`` is one field that another separator would split.

    ``user_id:token item_id:token`` read as tab-separated is one field; without this check
    the user would be told that ``item_id`` is missing, although it is in the header.

    Args:
        path: the file (for the message).
        header: the header fields as read with ``separator``.
        separator: the separator the format requires.
        what: how the format is named in the message ("RecBole atomic files are tab-separated").

    Raises:
        DataFormatError: at line 1, naming the separator found.
    """
    if len(header) != 1:
        return
    field = header[0]
    found = [name for sep, name in _OTHER_SEPARATORS.items() if sep != separator and sep in field.strip()]
    if found:
        raise DataFormatError(
            f"the header is one field ({field.strip()[:80]!r}) separated by {found[0]}; {what}. "
            "Save the file with the expected separator, or choose another --format",
            path=path,
            line=1,
        )


def scan_delimited_checked(
    path: str | Path,
    *,
    separator: str = ",",
    names: list[str] | None = None,
    quote_char: str | None = '"',
    what: str | None = None,
    layout_separator: str | None = None,
    fields: int | None = None,
) -> tuple[pl.LazyFrame, DelimitedLayout]:
    """:func:`scan_delimited` plus the file's :class:`DelimitedLayout` (the shape every row must have).

    Args:
        path, separator, names, quote_char: as for :func:`scan_delimited`.
        what: the format's rule, said when the header is one field another separator would split
            (default: "the file must be separated by <separator>").
        layout_separator: the separator rows are counted by, when it differs from the scan's
            (``"::"`` for GroupLens ``.dat`` files scanned on ``":"``).
        fields: the number of fields each row must have (default: the names' or the header's).

    Example:
        >>> frame, layout = scan_delimited_checked("interactions.csv")
        >>> layout.fields
        3
    """
    path = Path(path)
    frame = scan_delimited(path, separator=separator, names=names, quote_char=quote_char)
    header = [c for c in frame.collect_schema().names() if c != LINE]
    if names is None:
        shown = {",": "commas", "\t": "tabs"}.get(separator, repr(separator))
        check_header_separator(path, header, separator, what=what or f"this file must be separated by {shown}")
    count = fields if fields is not None else len(names) if names is not None else len(header)
    layout = DelimitedLayout(
        path=path,
        separator=layout_separator or separator,
        quote_char=quote_char,
        fields=count,
        first_line=1 if names is not None else 2,
        names=tuple(names or header),
    )
    return frame, layout


@dataclass(frozen=True)
class DelimitedLayout:
    """What a delimited file's rows must look like: the separator, the quoting and the field count.

    Readers return one per delimited file (:class:`~recsys.pipelines.source.SourceTables`);
    the row checks call :func:`ragged_lines` with it on the text path only, so a file read
    typed by :func:`read_integer_table` (whose size already proves every row's shape) costs
    nothing more.

    Attributes:
        path: the file.
        separator: the field separator, one byte or ``"::"`` (GroupLens ``.dat`` files).
        quote_char: the quoting character, or None for formats that never quote.
        fields: the number of fields every row must have (the header's, or the format's).
        first_line: the 1-based line of the first data row (2 after a header line).
        names: the field names, for messages.
    """

    path: Path
    separator: str
    quote_char: str | None
    fields: int
    first_line: int
    names: tuple[str, ...] = ()


#: Bytes of a delimited file read per block by :func:`ragged_lines`.
_RAGGED_BLOCK = 1 << 26


def ragged_lines(layout: DelimitedLayout) -> pl.DataFrame:
    """The data lines of a delimited file whose field count is not ``layout.fields``.

    A value holding an unquoted separator (``u1,12,34,1700000002`` under a three-column
    header) shifts every later field; a short row silently leaves fields empty. Both are
    found here, exactly, before any value is typed. Blank lines are left to the row checks
    (they are counted as ``blank_line``). Lines without the quoting character are counted
    with NumPy over the raw bytes (invalid UTF-8 does not matter); lines with it are split
    by Python's ``csv`` module, as Polars reads them. When a quoted value spans lines (a
    newline inside quotes), the whole file is counted record by record instead, each record
    numbered as the CSV scan numbers its rows.

    Args:
        layout: the file's :class:`DelimitedLayout`.

    Returns:
        ``_line`` (Int64, the row number the scan gives that row) and ``_fields`` (Int64,
        the fields found), one row per ragged line, in line order; empty when none.

    Example:
        >>> ragged_lines(DelimitedLayout(Path("interactions.csv"), ",", '"', 3, 2)).rows()
        [(3, 4)]
    """
    separator = layout.separator.encode()
    quote = layout.quote_char.encode() if layout.quote_char else None
    lines: list[int] = []
    found: list[int] = []
    first_line_number = 1
    carry = b""
    with open(layout.path, "rb") as handle:
        while True:
            block = handle.read(_RAGGED_BLOCK)
            data = carry + block
            if not data:
                break
            if block:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # no line end yet: read on
                    carry = data
                    continue
                data, carry = data[:cut], data[cut:]
            else:
                carry = b""
                if not data.endswith(b"\n"):
                    data += b"\n"  # the last line has no line end
            result = _ragged_in_block(data, first_line_number, separator, quote, layout)
            if result is None:
                return _ragged_records(layout)
            lines += result[0]
            found += result[1]
            first_line_number += data.count(b"\n")
            if not block:
                break
    return pl.DataFrame({LINE: pl.Series(lines, dtype=pl.Int64), "_fields": pl.Series(found, dtype=pl.Int64)})


def _ragged_in_block(data: bytes, first: int, separator: bytes, quote: bytes | None, layout: DelimitedLayout):
    """Ragged lines of whole lines ``data`` (first line numbered ``first``), or None when a quoted value spans lines."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buffer == 10)
    starts = np.concatenate([[0], ends[:-1] + 1])
    hits = np.flatnonzero(buffer == separator[0])
    if len(separator) == 2:  # "::": a pair of separator bytes is one separator
        hits = _non_overlapping(hits[:-1][buffer[hits[:-1] + 1] == separator[1]]) if len(hits) > 1 else hits[:0]
    counts = np.bincount(np.searchsorted(ends, hits), minlength=len(ends))
    number = np.arange(first, first + len(ends))
    quoted = np.zeros(len(ends), dtype=bool)
    if quote is not None:
        quoted[np.searchsorted(ends, np.flatnonzero(buffer == quote[0]))] = True
    data_row = number >= layout.first_line
    found: dict[int, int] = {}
    for row in np.flatnonzero(data_row & ~quoted & (counts + 1 != layout.fields)).tolist():
        if counts[row] == 0 and not data[starts[row] : ends[row]].strip():
            continue  # a blank line: counted by the row checks
        found[int(number[row])] = int(counts[row]) + 1
    for row in np.flatnonzero(data_row & quoted).tolist():
        text = data[starts[row] : ends[row]].decode("utf-8", errors="replace").rstrip("\r")
        try:
            fields = next(csv.reader([text], delimiter=layout.separator, quotechar=layout.quote_char, strict=True))
        except csv.Error:
            return None  # an open quote: the value goes on on the next line
        if len(fields) != layout.fields:
            found[int(number[row])] = len(fields)
    return sorted(found), [found[line] for line in sorted(found)]


def _non_overlapping(hits: np.ndarray) -> np.ndarray:
    """Start positions of non-overlapping two-byte separators from all matching starts (":::" is one)."""
    if len(hits) < 2:
        return hits
    keep = np.ones(len(hits), dtype=bool)
    previous = -2
    overlapping = np.flatnonzero(np.diff(hits) == 1)
    if len(overlapping) == 0:
        return hits
    for index, position in enumerate(hits.tolist()):  # rare: runs of three or more separator bytes
        if position - previous < 2:
            keep[index] = False
        else:
            previous = position
    return hits[keep]


def _ragged_records(layout: DelimitedLayout) -> pl.DataFrame:
    """:func:`ragged_lines` for a file with quoted values spanning lines: every record through ``csv``."""
    lines: list[int] = []
    found: list[int] = []
    with open(layout.path, encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.reader(handle, delimiter=layout.separator, quotechar=layout.quote_char or '"',
                            quoting=csv.QUOTE_MINIMAL if layout.quote_char else csv.QUOTE_NONE)
        for number, fields in enumerate(reader, start=1):
            if number < layout.first_line or not fields or fields == [""]:
                continue
            if len(fields) != layout.fields:
                lines.append(number)
                found.append(len(fields))
    return pl.DataFrame({LINE: pl.Series(lines, dtype=pl.Int64), "_fields": pl.Series(found, dtype=pl.Int64)})


def scan_parquet(path: str | Path) -> pl.LazyFrame:
    """Scan a Parquet file lazily; ``_line`` is the 1-based row number."""
    path = Path(path)
    check_readable(path)
    frame = pl.scan_parquet(path, row_index_name=LINE, row_index_offset=1)
    return frame.with_columns(pl.col(LINE).cast(pl.Int64))


def require_columns(frame: pl.LazyFrame, path: Path, required: Iterable[str], *, hint: str = "") -> None:
    """Raise a located error naming the first required column ``frame`` lacks."""
    present = set(frame.collect_schema().names())
    for column in required:
        if column not in present:
            found = ", ".join(sorted(c for c in present if c != LINE)) or "none"
            raise DataFormatError(
                f"required column is missing (columns found: {found}). {hint}".rstrip(),
                path=path,
                line=1,
                column=column,
            )


def read_jsonl(path: str | Path, fields: list[str], log: RowLog, *, items: bool = False) -> pl.LazyFrame:
    """Read JSON lines into text columns ``fields`` (absent keys are null) plus ``_line``.

    Values that are not strings (numbers, lists) are kept as their JSON text; lists are
    flattened later by the item-text step. Broken lines (invalid UTF-8, truncated or invalid
    JSON, not an object) raise a located error under policy "error" (the column is the field
    holding the bad bytes, or the field being read where the JSON breaks off) and are
    dropped and counted under "drop".

    Args:
        path: the ``.jsonl``/``.json`` file (one object per line).
        fields: the keys to keep, in order.
        log: where bad lines are reported.
        items: the lines are item rows (counted under ``items_dropped``).

    Example:
        >>> read_jsonl("items.jsonl", ["item_id", "title"], RowLog("error")).collect()
    """
    path = Path(path)
    check_readable(path)
    schema = {name: pl.String for name in fields}
    try:
        frame = pl.read_ndjson(path, schema=schema)
    except Exception:  # noqa: BLE001 - Polars does not say which line; find it below.
        return _read_jsonl_line_by_line(path, schema, log, items=items)
    if frame.height and _has_blank_lines(path):
        # Polars skips blank lines, which would shift line numbers: take the careful path.
        return _read_jsonl_line_by_line(path, schema, log, items=items)
    return frame.with_row_index(LINE, offset=1).with_columns(pl.col(LINE).cast(pl.Int64)).lazy()


def _has_blank_lines(path: Path) -> bool:
    with open(path, "rb") as handle:
        data = handle.read()
    return b"\n\n" in data or data.startswith(b"\n") or b"\n\r\n" in data


#: A JSON object key followed by its colon.
_JSON_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')


def _field_at(text: str, position: int) -> str | None:
    """The key of the JSON field being read at ``position`` of one line (the last key before it)."""
    keys = _JSON_KEY.findall(text[:position])
    return keys[-1] if keys else None


def _field_with_bad_bytes(raw: bytes) -> str | None:
    """The key whose value holds the invalid UTF-8 bytes of one JSON line, when the line still parses."""
    text = raw.decode("utf-8", errors="replace")
    try:
        value = json.loads(text)
    except ValueError:
        return _field_at(text, text.find(REPLACEMENT_CHAR))
    if isinstance(value, dict):
        for key, field in value.items():
            if REPLACEMENT_CHAR in key or REPLACEMENT_CHAR in json.dumps(field, ensure_ascii=False):
                return key
    return None


def _read_jsonl_line_by_line(path: Path, schema: dict, log: RowLog, *, items: bool) -> pl.LazyFrame:
    good: list[bytes] = []
    lines: list[int] = []
    problems: dict[str, list[tuple[int, str | None, str]]] = {}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                log.count("blank_line", 1, items=items)
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                problems.setdefault("bad_utf8", []).append(
                    (number, _field_with_bad_bytes(raw), f"invalid UTF-8 byte at position {error.start}; save the file as UTF-8")
                )
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                problems.setdefault("bad_json", []).append(
                    (number, _field_at(text, error.pos),
                     f"invalid JSON ({error.msg} at character {error.pos}); the line may be truncated")
                )
                continue
            if not isinstance(value, dict):
                problems.setdefault("bad_json", []).append((number, None, "the line is not a JSON object"))
                continue
            good.append(raw.rstrip(b"\r\n"))
            lines.append(number)
    for reason, found in sorted(problems.items(), key=lambda kv: kv[1][0][0]):
        line, column, detail = found[0]
        log.bad(reason, len(found), path=path, line=line, column=column, detail=detail, items=items)
    if good:
        frame = pl.read_ndjson(io.BytesIO(b"\n".join(good)), schema=schema)
    else:
        frame = pl.DataFrame(schema=schema)
    return frame.with_columns(pl.Series(LINE, lines, dtype=pl.Int64)).select(LINE, *schema).lazy()


def first_row(frame: pl.DataFrame, column: str) -> tuple[int | None, str]:
    """The line and the text value of ``column`` in the first row of ``frame`` (for messages)."""
    row = frame.sort(LINE).row(0, named=True)
    value = row.get(column)
    return row.get(LINE), "" if value is None else str(value)


def digit_total(values: np.ndarray) -> int | None:
    """Characters of all ``values`` written canonically (``str(v)``), or None for int64's minimum.

    Example:
        >>> digit_total(np.array([7, -12, 100]))
        7
    """
    if len(values) == 0:
        return 0
    low, high = int(values.min()), int(values.max())
    if low == np.iinfo(np.int64).min:
        return None
    if low >= 0 and len(str(low)) == len(str(high)):  # one width for all (timestamps, mostly)
        return len(values) * len(str(low))
    # n + (values below zero) + sum over k of (values with |v| >= 10^k), in blocks: no large temporaries.
    largest = max(abs(low), abs(high))
    powers = [10**k for k in range(1, 19) if 10**k <= largest]
    total = len(values)
    for start in range(0, len(values), 1 << 16):
        block = values[start : start + (1 << 16)]
        if low < 0:
            total += int(np.count_nonzero(block < 0))
            block = np.abs(block)
        for power in powers:
            total += int(np.count_nonzero(block >= power))
    return total


def read_integer_table(path: str | Path, *, separator: str, columns: dict[str, str]) -> pl.DataFrame | None:
    """A delimited file of canonical integers read straight as Int64, or None when it is anything else.

    The fast path of reading then typing the text columns: when the file is exactly a header
    naming ``columns`` and rows of canonical decimal integers (``str(int(v)) == v``: no
    spaces, signs, leading zeros or quotes) ending in ``\\n``, the result equals what the
    row checks make of the text (:func:`recsys.pipelines.validate._typed_if_clean`). The
    file is checked by its size: the canonical spelling of an integer is its shortest, so
    any other spelling, a missing or extra field, a blank line or ``\\r`` makes the rows'
    bytes differ from the digits of the values read plus one separator or newline per
    field. None means: read it as text (the first rows are looked at first, so a file that
    is plainly not integers costs nothing).

    Args:
        path: the CSV/TSV file, with a header line.
        separator: one byte.
        columns: header name -> output name, for every column of the file (``{"timestamp": "ts"}``...).

    Returns:
        ``_line`` (1-based file line, Int64) and the columns renamed, in the order of ``columns``.

    Example:
        >>> read_integer_table("interactions.csv", separator=",", columns={"user_id": "user_id", "item_id": "item_id", "timestamp": "ts"})
    """
    path = Path(path)
    with open(path, "rb") as handle:
        header = handle.readline()
        head = handle.read(1 << 16)
    names = list(columns)
    try:
        header_names = header.decode("ascii").rstrip("\n").split(separator)
    except UnicodeDecodeError:
        return None
    if sorted(header_names) != sorted(names) or not header.endswith(b"\n") or not head:
        return None
    first_rows = head.split(b"\n")[:-1]  # the last piece: a partial row, or empty after the final newline
    if len(head) < (1 << 16) and not head.endswith(b"\n"):
        first_rows.append(head.rsplit(b"\n", 1)[-1])  # the whole file was read: its last row has no newline
    for row in first_rows[:100]:
        fields = row.split(separator.encode())
        if len(fields) != len(names) or not all(f.lstrip(b"-").isdigit() for f in fields):
            return None
    try:
        frame = pl.read_csv(
            path,
            separator=separator,
            has_header=True,
            schema={name: pl.Int64 for name in header_names},
            quote_char=None,
            empty_string_is_null=True,
            raise_if_empty=True,
        )
    except Exception:  # noqa: BLE001 - not integers after all: the text path reports what is wrong
        return None
    if frame.height == 0 or frame.null_count().sum_horizontal().item():
        return None
    size = path.stat().st_size
    expected = len(header) + frame.height * len(names)  # a separator or newline after each field
    for name in header_names:
        digits = digit_total(frame[name].to_numpy())
        if digits is None:
            return None
        expected += digits
    if expected != size and not (expected - 1 == size and not _ends_with_newline(path)):
        return None
    frame = frame.select(pl.col(name).alias(alias) for name, alias in columns.items())
    line = pl.Series(LINE, np.arange(2, frame.height + 2, dtype=np.int64))
    return frame.insert_column(0, line)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"
