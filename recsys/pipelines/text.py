"""Item text: clean each source field and assemble one bounded text per item.

Cleaning, per field: stringified lists (``"['a', 'b']"``, JSON arrays, nested lists) are
flattened into their elements, HTML entities are unescaped, tags are removed, whitespace
is collapsed. The text is ``Title. Brand: ... Categories: ... Description: ...`` over the
:data:`~recsys.pipelines.source.TEXT_FIELDS` present, cut to ``max_chars`` characters.

Example:
    >>> frame = pl.DataFrame({"title": ["Saw &amp; Blade"], "categories": ["['Tools', 'Saws']"]})
    >>> frame.lazy().select(clean_field("title"), clean_field("categories")).collect().row(0)
    ('Saw & Blade', 'Tools, Saws')
    >>> assemble_text(["title", "categories"], max_chars=100)  # an expression named "text"
"""

from __future__ import annotations

import html

import polars as pl

from recsys.pipelines.source import TEXT_FIELDS

#: A quoted element of a stringified Python list or JSON array.
_QUOTED = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
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


def clean_field(name: str, *, separator: str = ", ") -> pl.Expr:
    """An expression cleaning text column ``name`` (see module docstring); empty becomes null.

    Args:
        name: the column.
        separator: joins the elements of a flattened list.

    Example:
        >>> pl.DataFrame({"d": ['["<b>x</b>", "y"]']}).select(clean_field("d")).item()
        'x, y'
    """
    value = pl.col(name).cast(pl.String).str.strip_chars()
    is_list = value.str.starts_with("[") & value.str.ends_with("]")
    elements = (
        value.str.extract_all(_QUOTED)
        .list.eval(pl.element().str.slice(1, pl.element().str.len_chars() - 2).str.replace_all(r"\\(['\"])", "$1"))
        .list.eval(pl.element().filter(pl.element().str.strip_chars() != ""))
        .list.join(separator)
    )
    value = pl.when(is_list).then(elements).otherwise(value)
    value = value.map_batches(_unescape, return_dtype=pl.String)
    value = value.str.replace_all(r"<[^>]*>", " ").str.replace_all(r"\s+", " ").str.strip_chars()
    return pl.when(value == "").then(None).otherwise(value).alias(name)


def assemble_text(fields: list[str], *, max_chars: int = 2000) -> pl.Expr:
    """An expression named ``text`` joining the cleaned ``fields`` (in TEXT_FIELDS order).

    Args:
        fields: the text fields the item table has (columns already cleaned).
        max_chars: the longest text kept; longer ones are cut (descriptions come last).

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
