"""Source ids (text) to contiguous integer codes in their natural order.

Natural order: numeric when every id is an integer written plainly, else text order
(:func:`~recsys.pipelines.steps.natural_order`). :func:`encode_ids_reference` does it plainly
(distinct ids, sort, join); :func:`encode_ids` gives the same codes and keys faster: ids
that are all canonical decimal integers ("12", "-3"; not "012", "+3", " 3") are cast to
integers once and coded by a lookup table (or a sort when their range is huge), other ids
through their distinct values and an Enum cast. ``values`` may also be an integer column
holding canonical integers already, or an Enum whose categories are in natural order (the
row checks carry clean ids so). A test holds the two equal.

Example:
    >>> codes, keys = encode_ids(pl.Series(["10", "9", "10"]))
    >>> codes.tolist(), keys.to_list()
    ([1, 0, 1], ['9', '10'])
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recsys.pipelines.steps import code_ids, natural_order

#: 10, 100, ..., 10^18: the digit count of |v| is 1 + the number of these <= |v|.
_POWERS = 10 ** np.arange(1, 19, dtype=np.int64)
#: Largest id range coded by a lookup table (bytes of the table: 9x this).
_TABLE_LIMIT = 1 << 26


def canonical_ints(values: pl.Series) -> np.ndarray | None:
    """``values`` as int64 when each one is a canonical decimal integer, else None.

    A value parsed as integer v is canonical when its length is the length of str(v); the
    total length is compared, which suffices because no other spelling of v is as short.

    Example:
        >>> canonical_ints(pl.Series(["7", "-12"])).tolist(), canonical_ints(pl.Series(["007"]))
        ([7, -12], None)
    """
    if values.len() == 0 or values.null_count():
        return None
    ints = values.cast(pl.Int64, strict=False)
    if ints.null_count():
        return None
    array = ints.to_numpy()
    if (array == np.iinfo(np.int64).min).any():
        return None
    low, high = int(array.min()), int(array.max())
    if high - low < _TABLE_LIMIT:  # digits of each distinct value, weighted by its count
        distinct = np.arange(low, high + 1, dtype=np.int64)
        weights = np.bincount(array - low, minlength=high - low + 1)
    else:
        distinct, weights = array, np.ones(len(array), dtype=np.int64)
    digits = np.searchsorted(_POWERS, np.abs(distinct), side="right") + 1 + (distinct < 0)
    if int(digits @ weights) != int(values.str.len_bytes().sum()):
        return None
    return array


def encode_ids_reference(values: pl.Series, extra: pl.Series | None = None) -> tuple[np.ndarray, pl.Series]:
    """Codes of ``values`` and the sorted keys (distinct ids of ``values`` and ``extra``), plainly.

    Args:
        values: the ids to code (no nulls).
        extra: more ids that take part in the keys (catalogue items without events).

    Returns:
        (integer codes with ``keys[codes[j]] == values[j]``, keys as a String Series)
    """
    every = values if extra is None else pl.concat([values, extra])
    keys = natural_order(every)
    codes = code_ids(pl.DataFrame({"id": values}), "id", keys.rename("id"), "_code")["_code"]
    return codes.to_numpy().astype(np.int64), keys.rename(values.name)


def encode_ids(values: pl.Series, extra: pl.Series | None = None) -> tuple[np.ndarray, pl.Series]:
    """Same result as :func:`encode_ids_reference`, fast (see module docstring).

    Example:
        >>> encode_ids(pl.Series(["b", "a"]), extra=pl.Series(["c"]))[1].to_list()
        ['a', 'b', 'c']
    """
    if isinstance(values.dtype, pl.Enum):  # coded by the row checks, categories in natural order
        return _encode_enum(values, extra)
    if values.dtype.is_integer():  # already checked canonical by the row checks
        ints = values.cast(pl.Int64).to_numpy()
    else:
        ints = canonical_ints(values)
    extra_ints = None if extra is None or extra.len() == 0 else canonical_ints(extra)
    if ints is not None and (extra is None or extra.len() == 0 or extra_ints is not None):
        every = ints if extra_ints is None else np.concatenate([ints, extra_ints])
        low, high = int(every.min()), int(every.max())
        offset = min(low, 0)  # non-negative ids index the table directly, without a shifted copy
        if high - offset < _TABLE_LIMIT:
            present = np.zeros(high - offset + 1, dtype=bool)
            present[every if offset == 0 else every - offset] = True
            rank = np.cumsum(present, dtype=np.int32 if len(present) < 2**31 else np.int64) - 1
            codes = rank[ints if offset == 0 else ints - offset]
            key_ints = np.flatnonzero(present) + offset
        else:
            key_ints, inverse = np.unique(every, return_inverse=True)
            codes = inverse[: len(ints)]
        keys = pl.Series(values.name, key_ints, dtype=pl.Int64).cast(pl.String)
        return codes, keys
    values = values.cast(pl.String)
    distinct = values.unique() if extra is None else pl.concat([values.unique(), extra.unique()]).unique()
    keys = natural_order(distinct).rename(values.name)
    codes = values.cast(pl.Enum(keys)).to_physical().to_numpy().astype(np.int64)
    return codes, keys


def _encode_enum(values: pl.Series, extra: pl.Series | None) -> tuple[np.ndarray, pl.Series]:
    """Codes of an Enum column whose categories are in natural order; ``extra`` ids merged in."""
    keys = values.dtype.categories.rename(values.name)
    codes = values.to_physical().to_numpy().astype(np.int64)
    if extra is None or extra.len() == 0:
        return codes, keys
    merged = natural_order(pl.concat([keys, extra.cast(pl.String)])).rename(values.name)
    if merged.len() == keys.len():
        return codes, keys
    position = code_ids(pl.DataFrame({"id": keys}), "id", merged.rename("id"), "_code")["_code"].to_numpy()
    return position.astype(np.int64)[codes], merged
