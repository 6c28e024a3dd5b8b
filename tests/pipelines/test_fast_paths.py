"""Each fast path of ``recsys data prepare`` against its plain reference, on random data with ties."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.pipelines.ids import canonical_ints, encode_ids, encode_ids_reference
from recsys.pipelines.issues import RowLog
from recsys.pipelines.source import SourceTables
from recsys.pipelines.steps import (
    duplicate_events,
    duplicate_events_reference,
    kcore_mask,
    kcore_reference,
    order_events,
    order_events_reference,
)
from recsys.pipelines import validate
from recsys.pipelines.validate import _typed_if_clean, check_interactions


def _ids(rng, kind: str, n: int) -> list[str]:
    values = rng.integers(0, 50, n)
    if kind == "ints":
        return [str(v) for v in values]
    if kind == "negative":
        return [str(v - 25) for v in values]
    if kind == "huge":  # range too wide for the lookup table
        return [str(v * 10**15) for v in values]
    if kind == "padded":  # "07" and "7" are different ids that sort together
        return [f"{v:02d}" if v % 3 == 0 else str(v) for v in values]
    return [f"id{v}" for v in values]


@pytest.mark.parametrize("kind", ["ints", "negative", "huge", "padded", "text"])
@pytest.mark.parametrize("seed", range(3))
def test_encode_ids_equals_reference(kind, seed):
    rng = np.random.default_rng(seed)
    values = pl.Series("item_id", _ids(rng, kind, 300))
    extra = pl.Series("item_id", _ids(rng, kind, 20))
    for other in (None, extra):
        codes, keys = encode_ids(values, other)
        ref_codes, ref_keys = encode_ids_reference(values, other)
        assert keys.to_list() == ref_keys.to_list()
        assert codes.tolist() == ref_codes.tolist()
        assert keys.gather(codes).to_list() == values.to_list()


@pytest.mark.parametrize("kind", ["text", "padded"])
def test_encode_ids_of_an_enum_column_equals_reference(kind):
    rng = np.random.default_rng(1)
    values = pl.Series("item_id", _ids(rng, kind, 200))
    enum = values.cast(pl.Enum(encode_ids_reference(values)[1]))
    for extra in (None, pl.Series("item_id", _ids(rng, kind, 5) + ["zz", "0"]), pl.Series("item_id", values[:3])):
        codes, keys = encode_ids(enum, extra)
        ref_codes, ref_keys = encode_ids_reference(values, extra)
        assert keys.to_list() == ref_keys.to_list() and codes.tolist() == ref_codes.tolist()


def test_encode_ids_accepts_integer_columns_and_mixed_catalogues():
    codes, keys = encode_ids(pl.Series("u", [30, 4, 30]))
    assert codes.tolist() == [1, 0, 1] and keys.to_list() == ["4", "30"]
    # Integer events with a catalogue whose ids are not canonical integers: text order throughout.
    codes, keys = encode_ids(pl.Series("i", [5, 10]), pl.Series("i", ["x"]))
    assert keys.to_list() == ["10", "5", "x"] and codes.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("values", "expected"),
    [(["7", "-12", "0"], [7, -12, 0]), (["007"], None), (["+3"], None), ([" 3"], None), (["-0"], None), (["3.0"], None), (["a"], None)],
)
def test_canonical_ints(values, expected):
    found = canonical_ints(pl.Series(values))
    assert (None if found is None else found.tolist()) == expected


def _events(rng, n: int, *, users: int = 20, items: int = 15, days: int = 6) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "_line": np.arange(2, n + 2),
            "_u": rng.integers(0, users, n),
            "_i": rng.integers(0, items, n),
            "ts": 1_600_000_000 + rng.integers(0, days, n) * 86_400,  # many ties and exact duplicates
        }
    )


@pytest.mark.parametrize("seed", range(5))
def test_order_and_duplicates_equal_reference(seed):
    rng = np.random.default_rng(seed)
    events = _events(rng, 500)
    ordered = order_events(events)
    assert ordered.drop("_key").equals(order_events_reference(events))
    dup = duplicate_events(ordered)
    assert dup.sum() > 0
    assert dup.to_list() == duplicate_events_reference(ordered).to_list()
    # Without the packed key column the same mask comes from (user, ts).
    assert duplicate_events(ordered.drop("_key")).to_list() == dup.to_list()


def test_order_falls_back_when_the_key_overflows():
    events = pl.DataFrame({"_line": [1, 2, 3], "_u": [2, 0, 0], "ts": [0, 2**62, -(2**62)], "_i": [0, 0, 0]})
    assert order_events(events)["_line"].to_list() == [3, 2, 1]


@pytest.mark.parametrize("seed", range(3))
def test_kcore_equals_reference_on_dense_ties(seed):
    rng = np.random.default_rng(seed)
    events = _events(rng, 2000, users=150, items=300)
    users, items = events["_u"].to_numpy(), events["_i"].to_numpy()
    for k in (3, 5, 8):
        assert kcore_mask(users, items, k).tolist() == kcore_reference(users.tolist(), items.tolist(), k)
        present = rng.random(len(users)) < 0.9  # only these events take part
        masked = kcore_mask(users, items, k, present)
        assert not masked[~present].any()
        assert masked[present].tolist() == kcore_reference(users[present].tolist(), items[present].tolist(), k)


def _tables(frame: pl.DataFrame) -> SourceTables:
    return SourceTables("generic", frame.lazy(), None)


@pytest.mark.parametrize("ids", ["ints", "text"])
def test_clean_row_check_equals_the_row_by_row_check(ids, monkeypatch):
    rng = np.random.default_rng(0)
    n = 200
    raw = pl.DataFrame(
        {
            "_line": np.arange(2, n + 2),
            "user_id": _ids(rng, ids, n),
            "item_id": _ids(rng, ids, n),
            "ts": [str(v) for v in rng.integers(0, 10**9, n)],
            "rating": [str(v) for v in rng.integers(1, 6, n).astype(float)],
            "split": rng.choice(["train", "valid", "test"], n).tolist(),
        }
    )
    fast = _typed_if_clean(raw, has_rating=True, has_split=True)
    assert fast is not None
    checked = check_interactions(_tables(raw), RowLog("error"))
    reference = raw.with_columns(pl.col("ts").cast(pl.Int64), pl.col("rating").cast(pl.Float64))
    if ids == "ints":
        assert fast.schema["user_id"] == pl.Int64 and fast.schema["item_id"] == pl.Int64
    else:  # coded once, categories in natural order
        assert isinstance(fast.schema["user_id"], pl.Enum) and isinstance(fast.schema["item_id"], pl.Enum)
        assert fast["item_id"].dtype.categories.to_list() == encode_ids_reference(raw["item_id"])[1].to_list()
    assert fast.with_columns(pl.col("user_id", "item_id").cast(pl.String)).equals(reference)
    assert checked.equals(fast)  # clean input takes the fast path
    # The row-by-row check itself, forced: clean input never reaches it otherwise.
    monkeypatch.setattr(validate, "_typed_if_clean", lambda *args, **kwargs: None)
    log = RowLog("error")
    slow = check_interactions(_tables(raw), log)
    assert slow.schema["user_id"] == pl.String and slow.schema["item_id"] == pl.String
    assert slow.equals(reference)
    assert slow.equals(fast.with_columns(pl.col("user_id", "item_id").cast(pl.String)))


@pytest.mark.parametrize(
    ("column", "value"),
    [("user_id", " 5"), ("user_id", ""), ("item_id", "a\ufffd"), ("ts", "1.5e3"), ("ts", " 7"), ("rating", "x"), ("split", "Train"), ("split", None)],
)
def test_anything_unusual_leaves_the_fast_path(column, value):
    raw = pl.DataFrame(
        {"_line": [2, 3], "user_id": ["1", "2"], "item_id": ["a", "b"], "ts": ["5", "6"], "rating": ["1", "2"], "split": ["train", "test"]}
    )
    raw = raw.with_columns(pl.when(pl.col("_line") == 3).then(pl.lit(value)).otherwise(pl.col(column)).alias(column))
    assert _typed_if_clean(raw, has_rating=True, has_split=True) is None


def _typed_by_text(path, names: dict) -> pl.DataFrame | None:
    """The reference of read_integer_table: the text scan typed by the row checks' fast path."""
    from recsys.pipelines.tables import scan_delimited

    raw = scan_delimited(path).select("_line", *[pl.col(c).alias(a) for c, a in names.items()]).collect()
    return _typed_if_clean(raw, has_rating=False, has_split=False)


@pytest.mark.parametrize("seed", range(3))
def test_integer_table_read_equals_the_text_read(tmp_path, seed):
    from recsys.pipelines.tables import read_integer_table

    rng = np.random.default_rng(seed)
    n = 3000
    users = rng.integers(-5, 10**6, n) if seed == 1 else rng.integers(0, 300, n)
    items = rng.integers(0, 10**12, n) if seed == 2 else rng.integers(0, 80, n)
    ts = rng.integers(0, 2 * 10**9, n) if seed else 1_600_000_000 + rng.integers(0, 9, n) * 86_400
    lines = [f"{t},{u},{i}" for u, i, t in zip(users, items, ts)]
    path = tmp_path / "interactions.csv"
    names = {"user_id": "user_id", "item_id": "item_id", "timestamp": "ts"}
    for ending in ("\n", ""):  # with and without a final newline
        path.write_text("timestamp,user_id,item_id\n" + "\n".join(lines) + ending)
        fast = read_integer_table(path, separator=",", columns=names)
        assert fast is not None and fast.columns == ["_line", "user_id", "item_id", "ts"]
        assert fast.equals(_typed_by_text(path, names))


@pytest.mark.parametrize(
    "row",
    ["07,1,5", "+7,1,5", " 7,1,5", "7,1, 5", '"7",1,5', "7,1,5\r", "7,1", "7,1,5,9", ",1,5", "-0,1,5", "7,1,5.0", "7,x,5", "\n7,1,5"],
)
def test_anything_unusual_leaves_the_integer_read(tmp_path, row):
    from recsys.pipelines.tables import read_integer_table

    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id,ts\n" + "1,2,3\n" * 150 + row + "\n4,5,6\n")
    names = {"user_id": "user_id", "item_id": "item_id", "ts": "ts"}
    assert read_integer_table(path, separator=",", columns=names) is None
    path.write_text("user_id,item_id,ts\n" + row + "\n4,5,6\n")  # in the first rows too
    assert read_integer_table(path, separator=",", columns=names) is None


@pytest.mark.parametrize("case", ["step_broken_outside_the_sample", "wide_key_sorted_with_row_index", "seconds"])
def test_order_events_branches_equal_reference(case):
    rng = np.random.default_rng(7)
    n = 10_000
    events = _events(rng, n, users=300, items=50, days=20)
    if case == "step_broken_outside_the_sample":  # the sampled rows all share the day step, one row does not
        events = events.with_columns(pl.when(pl.col("_line") == 5).then(pl.col("ts") + 1).otherwise(pl.col("ts")).alias("ts"))
    elif case == "wide_key_sorted_with_row_index":  # key and row number do not fit in 63 bits together
        events = events.with_columns(pl.Series("ts", rng.integers(0, 2**50, n) * 3 + 1))
    else:
        events = events.with_columns(pl.Series("ts", rng.integers(0, 50, n) + 1_600_000_000))
    ordered = order_events(events)
    assert ordered.drop("_key").equals(order_events_reference(events))
    assert duplicate_events(ordered).to_list() == duplicate_events_reference(ordered).to_list()
    shuffled = events.sample(fraction=1.0, shuffle=True, seed=1)  # lines not in order, not contiguous after a filter
    subset = shuffled.filter(pl.col("_line") % 3 != 0)
    assert order_events(subset).drop("_key").equals(order_events_reference(subset))


@pytest.mark.parametrize("seed", range(3))
def test_split_counts_equal_reference(seed):
    from recsys.pipelines.steps import SPLIT_DTYPE, SPLITS, split_counts, split_counts_reference

    rng = np.random.default_rng(seed)
    n = 500
    splits = ["train", "valid"] if seed == 2 else list(SPLITS)  # an empty split too
    interactions = pl.DataFrame(
        {
            "user_idx": pl.Series(np.sort(rng.integers(0, 40, n)), dtype=pl.Int32),
            "item_idx": pl.Series(rng.integers(0, 60, n), dtype=pl.Int32),
            "split": pl.Series(rng.choice(splits, n), dtype=SPLIT_DTYPE),
        }
    )
    per_split, train_count = split_counts(interactions, 70)
    assert per_split == split_counts_reference(interactions)
    train_items = set(interactions.filter(pl.col("split") == "train")["item_idx"].to_list())
    assert (train_count > 0).tolist() == [j in train_items for j in range(70)]


def test_digit_total_equals_the_length_of_the_text():
    from recsys.pipelines.tables import digit_total

    rng = np.random.default_rng(0)
    for values in (
        np.array([7, -12, 100]),
        rng.integers(-(10**12), 10**15, 100_000),
        rng.integers(0, 10**6, 200_000),
        np.array([0]),
        np.array([-1, 0, 9, 10, 99, 100, -999, 10**18]),
    ):
        assert digit_total(values) == sum(len(str(int(v))) for v in values)
    assert digit_total(np.array([np.iinfo(np.int64).min])) is None


def test_a_small_integer_file_is_read_typed(tmp_path):
    from recsys.pipelines.tables import read_integer_table

    path = tmp_path / "interactions.csv"
    names = {"user_id": "user_id", "item_id": "item_id", "timestamp": "ts"}
    for text in ("user_id,item_id,timestamp\n3,1,10\n2,5,7\n", "user_id,item_id,timestamp\n3,1,10\n2,5,7"):
        path.write_text(text)
        fast = read_integer_table(path, separator=",", columns=names)
        assert fast is not None and fast.equals(_typed_by_text(path, names))
