"""Item text: clean each source field and assemble one bounded text per item.

Cleaning, per field: a value that IS a serialized list as a whole (``"['a', 'b']"``, a JSON
array, a list of lists, a Python-repr list whose strings hold an unescaped quote; elements
strings or numbers) is flattened into its elements;
any other value, even one that starts with ``[`` and ends with ``]`` (Amazon titles such as
``[The River Atlas] [By: Roe, Sam]``), is kept verbatim. HTML entities are unescaped, HTML
tags (``<b>``, ``</p>``, ``<br/>``, comments) are removed, whitespace is collapsed. The text
is ``Title. Brand: ... Categories: ... Description: ...`` over the
:data:`~recsys.pipelines.source.TEXT_FIELDS` present, cut to ``max_chars`` characters.
:func:`cleaning_flags` marks, per value, what cleaning removes, so that it is counted.

Example:
    >>> frame = pl.DataFrame({"title": ["Saw &amp; Blade"], "categories": ["['Tools', 'Saws']"]})
    >>> frame.lazy().select(clean_field("title"), clean_field("categories")).collect().row(0)
    ('Saw & Blade', 'Tools, Saws')
    >>> assemble_text(["title", "categories"], max_chars=100)  # an expression named "text"
"""

from __future__ import annotations

import ast
import html
import json
import re

import polars as pl

from recsys.pipelines.source import TEXT_FIELDS

#: An HTML tag or comment (a name right after ``<``: "size <10 and >5" is not a tag).
HTML_TAG = r"<!--.*?-->|</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>"
#: Elements of a Python-repr list whose strings hold unescaped quotes ("['a', 'for it's b']"):
#: the separators between quoted elements.
_QUOTED_SEPARATOR = re.compile(r"""['"]\s*,\s*['"]""")
#: A quote next to a bracket inside what should be one element: the value is not one list.
_QUOTE_BRACKET = re.compile(r"""['"]\s*[\[\]]|[\[\]]\s*['"]""")


def serialized_list(text: str | None) -> list[str] | None:
    """The elements of ``text`` when it IS a serialized list as a whole, else None.

    Accepted: Python literals and JSON arrays of strings and numbers, nested lists flattened
    (``"[['Tools', 'Saws']]"``), and Python-repr lists whose strings hold an unescaped quote
    (``"['a', 'for it's b']"``, common in scraped Amazon metadata). Anything else that starts
    with ``[`` and ends with ``]`` (``"[The River Atlas] [By: Roe, Sam]"``) is not a list.

    Example:
        >>> serialized_list("['Tools', 'Saws']"), serialized_list("[Renewed] Lamp [Blue]")
        (['Tools', 'Saws'], None)
    """
    if text is None:
        return None
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, list):
            flat = _flatten(value)
            if flat is not None:
                return flat
    inner = text[1:-1].strip()
    if len(inner) >= 2 and inner[0] in "'\"" and inner[-1] in "'\"":
        parts = _QUOTED_SEPARATOR.split(inner[1:-1])
        if not any(_QUOTE_BRACKET.search(part) for part in parts):
            return parts
    return None


def _flatten(value: list) -> list[str] | None:
    """Strings and numbers of a (nested) list, in order; None when it holds anything else."""
    out: list[str] = []
    for element in value:
        if isinstance(element, list):
            inner = _flatten(element)
            if inner is None:
                return None
            out += inner
        elif isinstance(element, str):
            out.append(element)
        elif isinstance(element, (int, float)) and not isinstance(element, bool):
            out.append(str(element))
        elif element is not None:
            return None
    return out


def _flatten_lists(series: pl.Series, separator: str) -> pl.Series:
    """``series`` with every serialized-list value replaced by its non-empty elements joined by ``separator``."""
    candidates = (series.str.starts_with("[") & series.str.ends_with("]")).fill_null(False)
    if not candidates.any():
        return series
    try:  # fast path: every candidate is a flat JSON array (JSON-lines metadata), decoded by Polars
        decoded = series.filter(candidates).str.json_decode(pl.List(pl.String))
    except pl.exceptions.PolarsError:
        decoded = None
    if decoded is not None:
        joined = decoded.list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != "")).list.join(separator)
        out = series.clone()
        out.scatter(candidates.arg_true(), joined)
        return out
    values = series.to_list()
    for index in candidates.arg_true().to_list():
        elements = serialized_list(values[index])
        if elements is not None:
            values[index] = separator.join(e.strip() for e in elements if e.strip())
    return pl.Series(series.name, values, dtype=pl.String)


def _is_list(series: pl.Series) -> pl.Series:
    candidates = (series.str.starts_with("[") & series.str.ends_with("]")).fill_null(False)
    if not candidates.any():
        return candidates
    try:  # every candidate a flat JSON array: all of them are lists
        series.filter(candidates).str.json_decode(pl.List(pl.String))
        return candidates
    except pl.exceptions.PolarsError:
        pass
    out = [False] * series.len()
    if candidates.any():
        values = series.to_list()
        for index in candidates.arg_true().to_list():
            out[index] = serialized_list(values[index]) is not None
    return pl.Series(series.name, out, dtype=pl.Boolean)


#: Field labels in the assembled text (the title needs none).
LABELS = {
    "brand": "Brand",
    "categories": "Categories",
    "genres": "Genres",
    "year": "Year",
    "features": "Features",
    "description": "Description",
}


def _unescape(series: pl.Series) -> pl.Series:
    """HTML-unescape the values that contain an entity (Python's html.unescape, only where needed)."""
    needs = series.str.contains("&", literal=True).fill_null(False)
    if not needs.any():
        return series
    values = series.to_list()
    for index in needs.arg_true().to_list():
        values[index] = html.unescape(values[index])
    return pl.Series(series.name, values, dtype=pl.String)


def is_serialized_list(value: pl.Expr) -> pl.Expr:
    """Whether each (stripped) text value is a serialized list as a whole (see :func:`serialized_list`).

    Example:
        >>> pl.DataFrame({"t": ["['a', 'b']", "[Blue] Kettle [XL]"]}).select(is_serialized_list(pl.col("t"))).to_series().to_list()
        [True, False]
    """
    return value.map_batches(_is_list, return_dtype=pl.Boolean)


def clean_field(name: str, *, separator: str = ", ") -> pl.Expr:
    """An expression cleaning text column ``name`` (see module docstring); empty becomes null.

    Args:
        name: the column.
        separator: joins the elements of a flattened list.

    Example:
        >>> pl.DataFrame({"d": ['["<b>x</b>", "y"]']}).select(clean_field("d")).item()
        'x, y'
        >>> pl.DataFrame({"d": ["[Renewed] Lamp [Blue]"]}).select(clean_field("d")).item()
        '[Renewed] Lamp [Blue]'
    """
    value = pl.col(name).cast(pl.String).str.strip_chars()
    value = value.map_batches(lambda series: _flatten_lists(series, separator), return_dtype=pl.String)
    value = value.map_batches(_unescape, return_dtype=pl.String)
    value = value.str.replace_all(HTML_TAG, " ").str.replace_all(r"\s+", " ").str.strip_chars()
    return pl.when(value == "").then(None).otherwise(value).alias(name)


#: What :func:`cleaning_flags` marks, per field: (flag name, meaning in the manifest).
CLEANING_FLAGS = ("serialized_list_flattened", "html_tags_removed", "emptied_by_cleaning")


def cleaning_flags(name: str) -> list[pl.Expr]:
    """Boolean columns ``_<flag>:<name>`` marking what cleaning does to each value of ``name``.

    - ``serialized_list_flattened``: the value was a serialized list (its brackets and quotes go);
    - ``html_tags_removed``: HTML tags or comments were removed from it;
    - ``emptied_by_cleaning``: the value had text and nothing is left (only tags, say); an
      empty list (``[]``, ``['']``) holds no text and is not counted.

    The item checks sum them into manifest.json (``counts.item_text``): no text goes unseen.
    """
    raw = pl.col(name).cast(pl.String).str.strip_chars()
    had_text = raw.str.replace_all(r"[\[\]'\",\s]", "").str.len_chars().fill_null(0) > 0  # "[]", "['']": no text
    return [
        is_serialized_list(raw).fill_null(False).alias(f"_serialized_list_flattened:{name}"),
        raw.str.contains(HTML_TAG).fill_null(False).alias(f"_html_tags_removed:{name}"),
        (had_text & clean_field(name).is_null()).fill_null(False).alias(f"_emptied_by_cleaning:{name}"),
    ]


def assemble_text(fields: list[str], *, max_chars: int | None = 2000) -> pl.Expr:
    """An expression named ``text`` joining the cleaned ``fields`` (in TEXT_FIELDS order).

    Args:
        fields: the text fields the item table has (columns already cleaned).
        max_chars: the longest text kept; longer ones are cut (descriptions come last); None keeps all.

    Example:
        >>> pl.DataFrame({"title": ["Toy Story"], "year": ["1995"]}).select(assemble_text(["title", "year"])).item()
        'Toy Story. Year: 1995.'
    """
    parts = []
    for name in TEXT_FIELDS:
        if name not in fields:
            continue
        value = pl.col(name).cast(pl.String).str.strip_chars_end(". ")
        if name == "title":
            parts.append(value + pl.lit("."))
        else:
            parts.append(pl.lit(f"{LABELS[name]}: ") + value + pl.lit("."))
    if not parts:
        return pl.lit("").alias("text")
    text = pl.concat_str(parts, separator=" ", ignore_nulls=True)
    return text.str.slice(0, max_chars).str.strip_chars().fill_null("").alias("text")
