"""The cleaning and shaping steps of ``recsys data prepare``, each a small function.

Order (see :mod:`recsys.pipelines.prepare`): chronological order with the source line as the
stable tie-break, duplicate events, rating filter, repeats, iterative k-core, splits. Steps
with a fast path keep a plain ``*_reference`` twin that tests hold equal. Every step that
removes rows counts them in the :class:`~recsys.pipelines.issues.RowLog`.

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


def drop_repeats(events: pl.DataFrame, policy: str, log: RowLog, *, user: str = "_u", item: str = "_i") -> pl.DataFrame:
    """Repeated (user, item) pairs: "keep" them all, or keep only the "first" by (ts, line).

    Args:
        events: events sorted by (user, ts, line) (see :func:`order_events`).
        policy: "keep" or "first".
        log: counts the repeats dropped (``repeat_interaction``).
        user, item: the id (or code) columns.

    Example:
        >>> drop_repeats(order_events(events), "first", RowLog()).height
    """
    if policy == "keep":
        return events
    if policy != "first":
        raise ConfigError(f"repeats must be 'keep' or 'first', got {policy!r}")
    kept = events.filter(pl.struct(user, item).is_first_distinct())
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
        # Equal numbers ("7", "07") are ordered by their text, so the order never depends on hashing.
        return pl.DataFrame({"id": unique, "n": as_int}).sort(["n", "id"])["id"].rename(ids.name)
    return unique.sort()


def code_ids(events: pl.DataFrame, column: str, keys: pl.Series, code: str) -> pl.DataFrame:
    """Add integer column ``code``: the position of ``events[column]`` in ``keys``."""
    table = pl.DataFrame({column: keys}).with_row_index(code)
    return events.join(table, on=column, how="left", maintain_order="left")


def order_events_reference(events: pl.DataFrame) -> pl.DataFrame:
    """Sort events by user code ``_u``, then ``ts``, then source line (the stable tie-break)."""
    return events.sort(["_u", "ts", LINE])


def order_events(events: pl.DataFrame) -> pl.DataFrame:
    """Same order as :func:`order_events_reference`, by one sort of packed int64 keys.

    ``_u * span + (ts - min ts) / step`` orders like (``_u``, ``ts``), where ``step`` is the
    greatest common divisor of the ts offsets (86400 for day-resolution times). When that key
    and the row number fit in 63 bits together, ``key << bits | row`` is unique and a plain
    single-threaded sort of these values gives the stable order; otherwise the key alone is
    sorted stably with a row index (rows are in line order, so ties keep line order). The
    sorted key is kept as column ``_key`` (equal keys: same user and ts;
    :func:`duplicate_events` uses it). When the key does not fit in int64, the reference runs.

    Example:
        >>> order_events(pl.DataFrame({"_line": [1, 2], "_u": [1, 0], "ts": [5, 9]}))["_line"].to_list()
        [2, 1]
    """
    if events.height == 0:
        return events
    if not events[LINE].is_sorted():
        events = events.sort(LINE)
    n = events.height
    users = events["_u"].to_numpy()
    ts = events["ts"].to_numpy()
    low, high = int(ts.min()), int(ts.max())
    if high - low > np.iinfo(np.int64).max:
        return order_events_reference(events)
    step = _common_step(ts, low)
    span = (high - low) // step + 1
    n_users = int(users.max()) + 1
    if n_users > (np.iinfo(np.int64).max - span) // span:
        return order_events_reference(events)
    row_bits = max(1, (n - 1).bit_length())
    packs = n_users * span < (1 << (63 - row_bits))
    # Blocks of _BLOCK rows: the temporaries stay small and reused, only the outputs are allocated.
    key = np.empty(n, dtype=np.int64)
    for start in range(0, n, _BLOCK):
        part = slice(start, start + _BLOCK)
        offset = ts[part] - low
        if step > 1:
            offset //= step  # by a scalar: libdivide
        out = np.multiply(users[part], span, out=key[part], dtype=np.int64, casting="unsafe")
        out += offset
        if packs:
            out <<= row_bits
            out |= np.arange(start, start + len(out), dtype=np.int64)
    # One thread: on a shared 2-core machine it costs a third less CPU and is no slower.
    if packs:  # unique values: a plain sort is stable
        packed = pl.Series(key).sort(multithreaded=False).to_numpy()
        rows = np.empty(n, dtype=np.int64)
        for start in range(0, n, _BLOCK):
            part = slice(start, start + _BLOCK)
            np.bitwise_and(packed[part], (1 << row_bits) - 1, out=rows[part])
            np.right_shift(packed[part], row_bits, out=key[part])
        del packed
    else:
        ordered = pl.DataFrame({"_key": key}).with_row_index("_row").sort("_key", maintain_order=True, multithreaded=False)
        rows = ordered["_row"].to_numpy().astype(np.int64)
        key = ordered["_key"].to_numpy()
    # Gather only what the key does not hold: user and ts come back from it, contiguous lines from the rows.
    user = np.empty(n, dtype=np.int32 if n_users <= np.iinfo(np.int32).max else np.int64)
    ts_sorted = np.empty(n, dtype=np.int64)
    for start in range(0, n, _BLOCK):
        part = slice(start, start + _BLOCK)
        u = key[part] // span
        user[part] = u
        t = np.multiply(u, span, out=ts_sorted[part])
        np.subtract(key[part], t, out=t)
        if step > 1:
            t *= step
        t += low
    line = events[LINE].to_numpy()
    row_series = pl.Series("_row", rows)
    columns = {}
    for name, dtype in events.schema.items():
        if name == "_u":
            columns[name] = pl.Series(name, user, dtype=dtype)
        elif name == "ts":
            columns[name] = pl.Series(name, ts_sorted, dtype=dtype)
        elif name != LINE or not _is_contiguous(line):
            columns[name] = events[name].gather(row_series)
    if LINE not in columns:
        rows += int(line[0])  # the line of each sorted row
        columns[LINE] = pl.Series(LINE, rows, dtype=events.schema[LINE])
    return pl.DataFrame([columns[name] for name in events.columns]).with_columns(pl.Series("_key", key))


def _is_contiguous(values: np.ndarray, block: int = 1 << 18) -> bool:
    """Whether ``values`` are v, v + 1, v + 2, ... (checked in blocks: no large temporaries)."""
    if int(values[-1]) - int(values[0]) != len(values) - 1:
        return False
    for start in range(0, len(values) - 1, block):
        part = values[start : start + block + 1]
        if not (part[1:] - part[:-1] == 1).all():
            return False
    return True


#: Rows per block of the element-wise passes of :func:`order_events`.
_BLOCK = 1 << 16


def _common_step(ts: np.ndarray, low: int) -> int:
    """The greatest common divisor of ``ts - low`` (1 when all are equal): the unit the times are written in."""
    sample = ts[:: max(1, len(ts) // 4096)] - low
    step = int(np.gcd.reduce(sample)) if len(sample) else 1
    if step <= 1:
        return 1
    for start in range(0, len(ts), _BLOCK):  # the sample's divisor must divide every offset
        offset = ts[start : start + _BLOCK] - low
        if (offset - offset // step * step).any():
            return 1
    return step


def duplicate_events_reference(events: pl.DataFrame) -> pl.Series:
    """Mask of events repeating an earlier line's user, item and ts exactly (events in any order)."""
    by_line = events.with_row_index("_row").sort(LINE)
    later = by_line.select("_row", (~pl.struct("_u", "_i", "ts").is_first_distinct()).alias("dup"))
    return later.sort("_row")["dup"]


def duplicate_events(events: pl.DataFrame) -> pl.Series:
    """Same mask as :func:`duplicate_events_reference` for events sorted by :func:`order_events`.

    Exact duplicates share (user, ts), so they sit in runs of equal (user, ts); only the
    rows of runs longer than one are hashed.
    """
    mask = np.zeros(events.height, dtype=bool)
    if events.height < 2:
        return pl.Series("dup", mask)
    if "_key" in events.columns:
        key = events["_key"].to_numpy()
        same = key[1:] == key[:-1]
    else:
        users = events["_u"].to_numpy()
        ts = events["ts"].to_numpy()
        same = (users[1:] == users[:-1]) & (ts[1:] == ts[:-1])
    in_run = np.zeros(events.height, dtype=bool)
    in_run[1:] |= same
    in_run[:-1] |= same
    rows = np.flatnonzero(in_run)
    if len(rows):
        items = events["_i"].to_numpy()[rows].astype(np.int64)
        low, high = int(items.min()), int(items.max())
        runs = np.cumsum(~same[rows[1:] - 1]) if len(rows) > 1 else np.zeros(0, dtype=np.int64)
        run = np.concatenate([[0], runs])  # candidate runs numbered 0, 1, ...
        if (high - low + 1) * (int(run[-1]) + 1) < 2**62:  # (run, item) packed in one int64
            packed = run * (high - low + 1) + (items - low)
            mask[rows] = (~pl.Series(packed).is_first_distinct()).to_numpy()
        else:
            candidates = events.select("_u", "_i", "ts")[rows].select(~pl.struct("_u", "_i", "ts").is_first_distinct())
            mask[rows] = candidates.to_series().to_numpy()
    return pl.Series("dup", mask)


def drop_duplicate_events(events: pl.DataFrame, log: RowLog, path) -> pl.DataFrame:
    """Report (policy "error") or drop and count (``duplicate_event``) exact repeats of an earlier line.

    Args:
        events: events sorted by :func:`order_events`, with ``_u``, ``_i``, ``ts``, ``_line``.
        log: the bad-row policy and counts.
        path: the interactions file, for the message.
    """
    dup = report_duplicate_events(events, log, path)
    return events if dup is None else events.filter(~pl.Series(dup))


def report_duplicate_events(events: pl.DataFrame, log: RowLog, path) -> np.ndarray | None:
    """The rows :func:`drop_duplicate_events` drops (None when none), reported the same way, nothing filtered."""
    dup = duplicate_events(events)
    if not dup.any():
        return None
    later = events.filter(dup).sort(LINE)
    first = later.row(0, named=True)
    original = events.filter(
        (pl.col("_u") == first["_u"]) & (pl.col("_i") == first["_i"]) & (pl.col("ts") == first["ts"])
    )[LINE].min()
    detail = f"the same user, item and ts as line {original} (a duplicate event)"
    log.bad("duplicate_event", later.height, path=path, line=first[LINE], column="item_id", detail=detail)
    return dup.to_numpy()


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


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int, present: np.ndarray | None = None) -> np.ndarray:
    """Iterative k-core (same result as :func:`kcore_reference`) with counts by ``np.bincount``.

    Args:
        users, items: non-negative integer codes of each event.
        k: the minimum number of events per user and per item.
        present: events taking part (None: all); the others are as if absent, and not kept.
            ``kcore_mask(u, i, k, m)[m]`` equals ``kcore_mask(u[m], i[m], k)``.

    Returns:
        a boolean mask of the events kept.
    """
    keep = np.ones(len(users), dtype=bool) if present is None else present.copy()
    if k <= 1 or len(users) == 0:
        return keep
    n_users = int(users.max()) + 1
    n_items = int(items.max()) + 1
    users, items = users.astype(np.int32, copy=False), items.astype(np.int32, copy=False)
    counted_users, counted_items = (users, items) if present is None else (users[present], items[present])
    user_count = np.bincount(counted_users, minlength=n_users)
    item_count = np.bincount(counted_items, minlength=n_items)
    del counted_users, counted_items
    while True:  # each round removes the events of users and items below k, then updates the counts
        bad = (user_count < k)[users] | (item_count < k)[items]  # small boolean tables: cache-friendly
        bad &= keep
        removed = np.flatnonzero(bad)
        if len(removed) == 0:
            return keep
        keep[removed] = False
        user_count -= np.bincount(users[removed], minlength=n_users)
        item_count -= np.bincount(items[removed], minlength=n_items)


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
    ends = np.append(np.flatnonzero(user_idx[1:] != user_idx[:-1]), len(user_idx) - 1)  # last row per user
    lengths = np.diff(ends, prepend=-1)
    long_enough = ends[lengths >= 3]
    codes[long_enough - 1] = 1
    codes[long_enough] = 2
    short_users = int((lengths < 3).sum())
    return codes, short_users


def temporal_splits(ts: np.ndarray, valid_fraction: float, test_fraction: float) -> tuple[np.ndarray, dict]:
    """Global time cuts: about the latest ``test_fraction`` of events is test, the ``valid_fraction`` before it valid.

    An event at or after the test cut time is test; at or after the valid cut time, valid.
    Equal times always land in the same split, so the cuts are chosen among the distinct
    times: the test cut gives the test split the size closest to ``test_fraction`` of the
    events (never empty), then the valid cut the valid size closest to ``valid_fraction``
    among the earlier times (never empty when ``valid_fraction`` > 0; train is never empty).
    With many events on one time (a bulk import), a split can come out far from its
    fraction: ``warnings`` in the returned facts then says so (manifest.json and the
    command's output carry it).

    Args:
        ts: the time of each event (any order).
        valid_fraction, test_fraction: the asked shares of all events.

    Returns:
        split codes (0 train, 1 valid, 2 test) and the facts: cut times, asked and actual
        fractions, warnings.

    Raises:
        ConfigError: the times cannot give non-empty train, valid (when asked) and test
            splits (too few distinct times); the message says how many there are.

    Example:
        >>> codes, facts = temporal_splits(np.array([1, 2, 3, 4, 5, 5, 5]), 0.15, 0.15)
        >>> codes.tolist(), facts["test_from_ts"]
        ([0, 0, 0, 1, 2, 2, 2], 5)
    """
    if not (0 <= valid_fraction < 1 and 0 < test_fraction < 1 and valid_fraction + test_fraction < 1):
        raise ConfigError("temporal split fractions must satisfy 0 <= valid, 0 < test and valid + test < 1")
    n = len(ts)
    values, counts = np.unique(ts, return_counts=True)
    needed = 3 if valid_fraction > 0 else 2
    if len(values) < needed:
        raise ConfigError(
            f"a temporal split needs at least {needed} distinct times (train, {'valid, ' if needed == 3 else ''}test); "
            f"the {n:,} events have {len(values)}: equal times always share a split. Use --split loo"
        )
    at_or_after = np.cumsum(counts[::-1])[::-1]  # events at or after each distinct time
    test_target = test_fraction * n
    # the test cut: index 1..m-1 (m-2 when valid needs a time before it); ties go to the larger split
    last = len(values) - 1
    first_test = 2 if valid_fraction > 0 else 1
    options = np.arange(first_test, last + 1)
    test_at = int(options[np.lexsort((-at_or_after[options], np.abs(at_or_after[options] - test_target)))[0]])
    test_size = int(at_or_after[test_at])
    if valid_fraction > 0:
        options = np.arange(1, test_at)
        sizes = at_or_after[options] - test_size
        valid_at = int(options[np.lexsort((-sizes, np.abs(sizes - valid_fraction * n)))[0]])
    else:
        valid_at = test_at
    valid_cut, test_cut = values[valid_at], values[test_at]
    codes = np.zeros(n, dtype=np.int8)
    codes[ts >= valid_cut] = 1
    codes[ts >= test_cut] = 2
    valid_size = int(at_or_after[valid_at]) - test_size
    facts = {
        "valid_from_ts": int(valid_cut),
        "test_from_ts": int(test_cut),
        "valid_fraction_asked": valid_fraction,
        "valid_fraction_actual": round(valid_size / n, 6),
        "test_fraction_asked": test_fraction,
        "test_fraction_actual": round(test_size / n, 6),
        "warnings": [],
    }
    for split, asked, size in (("valid", valid_fraction, valid_size), ("test", test_fraction, test_size)):
        if asked > 0 and abs(size / n - asked) > 0.5 * asked:
            facts["warnings"].append(
                f"temporal split: {split} holds {size:,} of {n:,} events ({size / n:.1%}), asked {asked:.1%}: "
                f"many events share the times at the cuts (equal times always share a split)"
            )
    return codes, facts


def split_counts_reference(interactions: pl.DataFrame) -> dict:
    """Per split: interactions, distinct users and distinct items (``split`` an Enum of :data:`SPLITS`)."""
    per_split = {}
    for split in SPLITS:
        part = interactions.filter(pl.col("split") == split)
        per_split[split] = {"interactions": part.height, "users": part["user_idx"].n_unique(), "items": part["item_idx"].n_unique()}
    return per_split


def split_counts(interactions: pl.DataFrame, n_items: int) -> tuple[dict, np.ndarray]:
    """Same counts as :func:`split_counts_reference` by ``np.bincount``, and the train events of each item.

    Args:
        interactions: ``user_idx``, ``item_idx`` (non-negative) and ``split`` (Enum of :data:`SPLITS`).
        n_items: items in the item table (``item_idx`` < n_items).

    Returns:
        (per split counts, the number of train events of each item_idx 0..n_items-1)
    """
    codes = interactions["split"].cast(SPLIT_DTYPE).to_physical().to_numpy()
    users = interactions["user_idx"].to_numpy()
    items = interactions["item_idx"].to_numpy()
    n_users = int(users.max()) + 1 if len(users) else 0
    per_split = {}
    train_count = np.zeros(n_items, dtype=np.int64)
    for code, split in enumerate(SPLITS):
        rows = codes == code
        part_users, part_items = users[rows], items[rows]
        item_count = np.bincount(part_items, minlength=n_items)
        per_split[split] = {
            "interactions": len(part_users),
            "users": int(np.count_nonzero(np.bincount(part_users, minlength=n_users))),
            "items": int(np.count_nonzero(item_count)),
        }
        if split == "train":
            train_count = item_count
    return per_split, train_count
