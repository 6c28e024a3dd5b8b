"""The cleaning and shaping steps, and item text, on tiny frames made here."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.errors import ConfigError
from recsys.pipelines.issues import RowLog
from recsys.pipelines.steps import (
    drop_repeats,
    filter_min_rating,
    kcore_mask,
    kcore_reference,
    loo_splits,
    natural_order,
    order_events,
    temporal_splits,
)
from recsys.pipelines.text import assemble_text, clean_field


def test_kcore_iterates_until_stable():
    # Dropping user 2 (1 event) leaves item 2 with 1 event, which then drops user 1's event on it,
    # and so on: only the dense block of users 0/1 x items 0/1 survives a 2-core.
    users = np.array([0, 0, 1, 1, 1, 2])
    items = np.array([0, 1, 0, 1, 2, 2])
    keep = kcore_mask(users, items, 2)
    assert keep.tolist() == [True, True, True, True, False, False]
    assert kcore_mask(users, items, 0).all() and kcore_mask(users, items, 1).all()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [2, 3, 5])
def test_kcore_fast_path_equals_reference(seed, k):
    rng = np.random.default_rng(seed)
    n = 400
    users = rng.integers(0, 60, n)
    items = (rng.pareto(1.2, n) * 5).astype(int) % 80  # skewed popularity
    expected = kcore_reference(users.tolist(), items.tolist(), k)
    assert kcore_mask(users, items, k).tolist() == expected
    kept_users = users[np.array(expected)]
    kept_items = items[np.array(expected)]
    if len(kept_users):
        assert np.bincount(kept_users)[np.unique(kept_users)].min() >= k
        assert np.bincount(kept_items)[np.unique(kept_items)].min() >= k


def test_loo_last_is_test_second_last_valid_short_users_train():
    user_idx = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    codes, short = loo_splits(user_idx)
    assert codes.tolist() == [0, 0, 1, 2, 0, 0, 0, 1, 2]
    assert short == 1


def test_temporal_cuts_are_global_and_keep_ties_together():
    ts = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 9])
    codes, cuts = temporal_splits(ts, 0.2, 0.2)
    assert (cuts["valid_from_ts"], cuts["test_from_ts"]) == (7, 9)
    assert (cuts["valid_fraction_actual"], cuts["test_fraction_actual"], cuts["warnings"]) == (0.2, 0.2, [])
    assert codes.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]
    with pytest.raises(ConfigError):
        temporal_splits(ts, 0.5, 0.5)


def test_temporal_cuts_on_tied_times_never_leave_a_split_empty():
    # 20 events, the last 6 on one time (inputs-1/temporal-cut-ties): the old cuts both fell on 500 (valid empty).
    ts = np.array([100, 110, 120, 130, 140, 150, 160, 170, 180, 190, 200, 210, 220, 230] + [500] * 6)
    codes, cuts = temporal_splits(ts, 0.1, 0.1)
    assert np.bincount(codes, minlength=3).tolist() == [12, 2, 6]
    assert (cuts["valid_from_ts"], cuts["test_from_ts"]) == (220, 500)
    assert cuts["test_fraction_actual"] == 0.3 and len(cuts["warnings"]) == 1 and "test holds 6 of 20" in cuts["warnings"][0]
    # the sizes closest to the asked fractions that the ties allow, whatever the order of the events
    rng = np.random.default_rng(0)
    for _ in range(50):
        ts = rng.integers(0, rng.integers(3, 30), rng.integers(3, 200))
        if len(np.unique(ts)) < 3:
            continue
        codes, cuts = temporal_splits(ts, 0.1, 0.2)
        sizes = np.bincount(codes, minlength=3)
        assert (sizes > 0).all()
        test_options = [int((ts >= t).sum()) for t in np.unique(ts)[2:]]
        assert abs(sizes[2] - 0.2 * len(ts)) == min(abs(o - 0.2 * len(ts)) for o in test_options)


@pytest.mark.parametrize(("ts", "valid"), [([5, 5, 5], 0.1), ([1, 2, 2], 0.1), ([7, 7], 0.0)])
def test_temporal_split_without_enough_distinct_times_is_an_error(ts, valid):
    with pytest.raises(ConfigError, match="distinct times"):
        temporal_splits(np.array(ts), valid, 0.2)


def test_natural_order_numeric_and_text():
    assert natural_order(pl.Series(["10", "9", "100", "9"])).to_list() == ["9", "10", "100"]
    assert natural_order(pl.Series(["b", "a10", "a9"])).to_list() == ["a10", "a9", "b"]


def test_min_rating_and_repeats_are_counted():
    events = pl.DataFrame(
        {"_line": [2, 3, 4, 5], "_u": [0, 0, 0, 1], "_i": [0, 1, 0, 0], "ts": [1, 2, 3, 1], "rating": [5.0, 1.0, 4.0, 3.0]}
    )
    log = RowLog("drop")
    kept = filter_min_rating(events, 3.0, log)
    assert kept["_line"].to_list() == [2, 4, 5]
    kept = drop_repeats(order_events(kept), "first", log)
    assert kept["_line"].to_list() == [2, 5]
    assert dict(log.dropped) == {"below_min_rating": 1, "repeat_interaction": 1}
    assert drop_repeats(events, "keep", log).height == 4
    with pytest.raises(ConfigError, match="no rating"):
        filter_min_rating(events.drop("rating"), 3.0, log)


def test_clean_field_flattens_unescapes_strips():
    frame = pl.DataFrame(
        {
            "x": [
                "['<b>Bold</b> &amp; brave', 'two']",
                '["it\'s", "nested"]',
                "[['a', 'b'], ['c']]",
                "  plain   text\n here ",
                "['']",
                "&lt;i&gt;escaped tag&lt;/i&gt;",
                None,
            ]
        }
    )
    out = frame.select(clean_field("x")).to_series().to_list()
    # Entities are unescaped before tags are stripped, so escaped markup goes too.
    assert out == ["Bold & brave, two", "it's, nested", "a, b, c", "plain text here", None, "escaped tag", None]


def test_assemble_text_orders_labels_and_bounds_length():
    frame = pl.DataFrame({"description": ["long " * 50], "title": ["Hammer."], "brand": [None], "year": ["1999"]})
    text = frame.select(assemble_text(["description", "title", "brand", "year"], max_chars=60)).item()
    assert text.startswith("Hammer. Year: 1999. Description: long long")
    assert len(text) <= 60
