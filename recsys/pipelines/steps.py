"""The cleaning and shaping steps of ``recsys data prepare``, each a small function.

Order: rating filter, repeats, integer codes, iterative k-core, chronological order with the
source line as the stable tie-break, contiguous ids, splits. Every step that removes rows
counts them in the :class:`~recsys.pipelines.issues.RowLog`.

Example:
    >>> keep = kcore_mask(np.array([0, 0, 1]), np.array([0, 1, 0]), k=2)
    >>> keep.tolist()
    [True, False, False]
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl

from recsys.errors import ConfigError
from recsys.pipelines.issues import RowLog
from recsys.pipelines.tables import LINE

SPLITS = ("train", "valid", "test")
SPLIT_DTYPE = pl.Enum(list(SPLITS))


def filter_min_rating(events: pl.DataFrame, min_rating: float | None, log: RowLog) -> pl.DataFrame:
    """Keep events rated at least ``min_rating`` (None keeps all); count the others."""
    if min_rating is None:
        return events
    if "rating" not in events.columns:
        raise ConfigError("--min-rating was given but the source has no rating column; drop the option")
    keep = pl.col("rating").fill_null(float("-inf")) >= min_rating
    log.count("below_min_rating", events.height - int(events.select(keep.sum()).item()))
    return events.filter(keep)


def drop_repeats(events: pl.DataFrame, policy: str, log: RowLog) -> pl.DataFrame:
    """Repeated (user, item) pairs: "keep" them all, or keep only the "first" by (ts, line).

    Example:
        >>> drop_repeats(events, "first", RowLog()).height
    """
    if policy == "keep":
        return events
    if policy != "first":
        raise ConfigError(f"repeats must be 'keep' or 'first', got {policy!r}")
    ordered = events.sort(["ts", LINE])
    first = pl.struct("user_id", "item_id").is_first_distinct()
    kept = ordered.filter(first).sort(LINE)
    log.count("repeat_interaction", events.height - kept.height)
    return kept


def natural_order(ids: pl.Series) -> pl.Series:
    """Distinct ``ids`` sorted numerically when all are integers, else as text.

    Example:
        >>> natural_order(pl.Series(["10", "9", "10"])).to_list()
        ['9', '10']
    """
    unique = ids.unique()
    as_int = unique.cast(pl.Int64, strict=False)
    if as_int.null_count() == 0 and unique.str.strip_chars().str.len_chars().eq(unique.str.len_chars()).all():
        return pl.DataFrame({"id": unique, "n": as_int}).sort("n")["id"].rename(ids.name)
    return unique.sort()


def code_ids(events: pl.DataFrame, column: str, keys: pl.Series, code: str) -> pl.DataFrame:
    """Add integer column ``code``: the position of ``events[column]`` in ``keys``."""
    table = pl.DataFrame({column: keys}).with_row_index(code)
    return events.join(table, on=column, how="left", maintain_order="left")


def kcore_reference(users: list[int], items: list[int], k: int) -> list[bool]:
    """Iterative k-core, plainly: drop users and items with fewer than ``k`` events until none.

    Args:
        users, items: the user and item of each event.
        k: the minimum number of events per user and per item (0 or 1 keeps everything).
    """
    keep = [True] * len(users)
    while True:
        user_count = Counter(u for u, kept in zip(users, keep) if kept)
        item_count = Counter(i for i, kept in zip(items, keep) if kept)
        changed = False
        for row, (u, i) in enumerate(zip(users, items)):
            if keep[row] and (user_count[u] < k or item_count[i] < k):
                keep[row] = False
                changed = True
        if not changed:
            return keep


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Iterative k-core (same result as :func:`kcore_reference`) with counts by ``np.bincount``.

    Args:
        users, items: non-negative integer codes of each event.
        k: the minimum number of events per user and per item.

    Returns:
        a boolean mask of the events kept.
    """
    keep = np.ones(len(users), dtype=bool)
    if k <= 1 or len(users) == 0:
        return keep
    n_users = int(users.max()) + 1
    n_items = int(items.max()) + 1
    while True:
        user_count = np.bincount(users[keep], minlength=n_users)
        item_count = np.bincount(items[keep], minlength=n_items)
        bad = keep & ((user_count[users] < k) | (item_count[items] < k))
        if not bad.any():
            return keep
        keep &= ~bad


def loo_splits(user_idx: np.ndarray) -> tuple[np.ndarray, int]:
    """Leave-one-out split codes (0 train, 1 valid, 2 test) for events sorted by user, then time.

    Per user the last event is test and the second last valid; users with fewer than three
    events have no valid and test items (all train): there would be no training history.

    Returns:
        the split code of each event and the number of such short users.
    """
    codes = np.zeros(len(user_idx), dtype=np.int8)
    if len(user_idx) == 0:
        return codes, 0
    counts = np.bincount(user_idx)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    from_end = starts[user_idx] + counts[user_idx] - 1 - np.arange(len(user_idx))
    long_enough = counts[user_idx] >= 3
    codes[(from_end == 1) & long_enough] = 1
    codes[(from_end == 0) & long_enough] = 2
    short_users = int(((counts > 0) & (counts < 3)).sum())
    return codes, short_users


def temporal_splits(ts: np.ndarray, valid_fraction: float, test_fraction: float) -> tuple[np.ndarray, dict]:
    """Global time cuts: the latest ``test_fraction`` of events is test, the ``valid_fraction`` before it valid.

    An event at or after the test cut time is test; at or after the valid cut time, valid.
    Equal times always land in the same split, so split sizes can differ from the fractions.

    Returns:
        split codes (0 train, 1 valid, 2 test) and the cut times.
    """
    if not (0 <= valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ConfigError("temporal split fractions must satisfy 0 <= valid, 0 < test and valid + test < 1")
    ordered = np.sort(ts)
    n = len(ordered)
    test_cut = int(ordered[min(n - 1, int(np.floor(n * (1 - test_fraction))))])
    valid_cut = int(ordered[min(n - 1, int(np.floor(n * (1 - test_fraction - valid_fraction))))])
    codes = np.zeros(n, dtype=np.int8)
    codes[ts >= valid_cut] = 1
    codes[ts >= test_cut] = 2
    return codes, {"valid_from_ts": valid_cut, "test_from_ts": test_cut}
