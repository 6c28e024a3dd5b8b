"""``recsys data prepare`` and ``recsys data stats`` end to end: every format, ML-100K, amazon-industrial."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from pipeline_files import write

from recsys.cli import main
from recsys.errors import ArtifactError, ConfigError
from recsys.pipelines.embedded import DatasetUnavailableError, ensure_ml100k
from recsys.pipelines.prepare import PrepareConfig, check_output, prepare
from recsys.pipelines.prepared import PreparedDataset
from recsys.pipelines.stats import dataset_stats


def _tables(out: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict]:
    check_output(out)
    return (
        pl.read_parquet(out / "interactions.parquet"),
        pl.read_parquet(out / "items.parquet"),
        pl.read_parquet(out / "users.parquet"),
        json.loads((out / "manifest.json").read_text()),
    )


def _with_ids(out: Path) -> pl.DataFrame:
    """interactions.parquet in file order, with the source user and item ids."""
    interactions, items, users, _ = _tables(out)
    return interactions.join(users, on="user_idx", maintain_order="left").join(
        items.select("item_idx", "item_id"), on="item_idx", maintain_order="left"
    )


def _check_contract(out: Path) -> None:
    """ARCHITECTURE.md section 2: dtypes, contiguous ids, per-user chronological order."""
    interactions, items, users, manifest = _tables(out)
    assert interactions.schema["user_idx"] == pl.Int32 and interactions.schema["item_idx"] == pl.Int32
    assert interactions.schema["ts"] == pl.Int64 and interactions.schema["split"] == pl.Enum(["train", "valid", "test"])
    assert items["item_idx"].to_list() == list(range(items.height))
    assert users["user_idx"].to_list() == list(range(users.height))
    assert items.schema["is_cold"] == pl.Boolean and items["text"].null_count() == 0
    ordered = interactions.with_row_index("row").sort(["user_idx", "ts"], maintain_order=True)
    assert ordered["row"].to_list() == list(range(interactions.height))
    counts = manifest["counts"]
    assert counts["interactions"] == interactions.height and counts["users"] == users.height
    assert counts["items"] == items.height and counts["cold_items"] == items["is_cold"].sum()
    trained = interactions.filter(pl.col("split") == "train")["item_idx"].unique()
    assert items.filter(~pl.col("item_idx").is_in(trained.implode()))["is_cold"].all()


@pytest.mark.parametrize(
    ("fixture", "fmt", "texts"),
    [
        ("generic_source", "generic", {"a": "Alpha & Co. Description: first second.", "b": "Beta. Categories: Tools, Saws."}),
        ("movielens_100k_source", "movielens-100k", {"10": "Café Society (1995). Year: 1995. Genres: Action, Western."}),
        ("movielens_dat_source", "movielens-dat", {"10": "Star Wars: Episode IV (1977). Year: 1977. Genres: Action, Sci-Fi."}),
        ("recbole_source", "recbole", {"1": "Toy Story. Year: 1995. Genres: Animation, Children's, Comedy."}),
        (
            "amazon2018_source",
            "amazon2018",
            {"B01": "Hammer & Nails. Brand: Acme. Categories: Tools, Hand Tools. Features: steel. Description: Strong hammer. Lasts.",
             "B02": "Saw."},
        ),
        ("amazon2023_source", "amazon2023", {"P1": "Glue. Brand: Gorilla. Categories: Adhesives. Features: strong, fast. Description: Bonds wood."}),
    ],
)
def test_every_format_prepares_through_the_command_line(request, tmp_path, fixture, fmt, texts):
    source = request.getfixturevalue(fixture)
    out = tmp_path / "out"
    assert main(["data", "prepare", "--source", str(source), "--out", str(out), "--kcore", "0"]) == 0
    _check_contract(out)
    _, items, _, manifest = _tables(out)
    assert manifest["source"]["format"] == fmt
    assert all(len(f["sha256"]) == 64 for f in manifest["source"]["files"])
    found = dict(items.select("item_id", "text").iter_rows())
    assert {k: found[k] for k in texts} == texts


def test_amazon2018_ratings_csv_with_metadata(tmp_path):
    write(tmp_path / "Tools.csv", "B01,R1,5.0,1400000000\nB02,R1,2.0,1400000100\nB01,R2,4.0,1300000000\nB03,R1,1.0,1400000200\n")
    write(tmp_path / "meta_Tools.json", '{"asin": "B01", "title": "Hammer", "category": ["Tools"]}\n{"asin": "B02", "title": "Saw"}\n'
          '{"asin": "B03", "title": "Drill"}\n{"asin": "B04", "title": "Level"}\n')
    manifest = prepare(PrepareConfig(source=str(tmp_path), out=str(tmp_path / "out"), kcore=0, min_rating=2.0))
    assert manifest["source"]["format"] == "amazon2018"
    assert manifest["counts"]["rows_dropped"] == {"below_min_rating": 1}
    events = _with_ids(tmp_path / "out")
    assert events.filter(pl.col("user_id") == "R1")["item_id"].to_list() == ["B01", "B02"]
    items = _tables(tmp_path / "out")[1]
    # B03's only event was rated too low and B04 has none: both stay in the catalogue, cold.
    assert items["item_id"].to_list() == ["B01", "B02", "B03", "B04"]
    assert items["is_cold"].to_list() == [False, False, True, True]
    assert manifest["counts"]["items_dropped"] == {}


def test_generic_split_column_and_position_are_kept(tmp_path):
    # u1's test item is not its last event: a given split is kept, not recomputed.
    write(
        tmp_path / "interactions.csv",
        "user_id,item_id,position,split\n"
        "u1,c,2,test\nu1,a,0,train\nu1,b,1,train\nu1,d,2,valid\n"  # tie at position 2: file line breaks it
        "u2,a,0,train\nu2,b,1,valid\n",
    )
    write(tmp_path / "items.csv", "item_id,title\na,A\nb,B\nc,C\nd,D\n")
    out = tmp_path / "out"
    manifest = prepare(PrepareConfig(source=str(tmp_path), out=str(out), kcore=0))
    assert manifest["parameters"]["split_used"] == "source" and manifest["source"]["ts_kind"] == "position"
    events = _with_ids(out)
    u1 = events.filter(pl.col("user_id") == "u1")
    assert u1["item_id"].to_list() == ["a", "b", "c", "d"]
    assert u1["ts"].to_list() == [0, 1, 2, 2]
    assert u1["split"].cast(pl.String).to_list() == ["train", "train", "test", "valid"]
    assert manifest["counts"]["splits"]["test"]["interactions"] == 1
    # Without a split column, a temporal split needs wall-clock time, which positions are not.
    write(tmp_path / "interactions.csv", "user_id,item_id,position\nu1,a,0\nu1,b,1\n")
    with pytest.raises(ConfigError, match="position"):
        prepare(PrepareConfig(source=str(tmp_path), out=str(tmp_path / "t"), kcore=0, split="temporal"))


def test_temporal_split_labels_users_and_cold_items(tmp_path):
    rows = "".join(f"u{u},i{(u + k) % 6},{10 * k + u}\n" for u in range(4) for k in range(5))
    write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n" + rows + "u0,new,100\n")
    out = tmp_path / "out"
    manifest = prepare(PrepareConfig(source=str(tmp_path / "interactions.csv"), out=str(out), kcore=0, split="temporal",
                                     valid_fraction=0.2, test_fraction=0.2))
    interactions, items, _, _ = _tables(out)
    cuts = manifest["parameters"]["temporal_cuts"]
    split = interactions["split"].cast(pl.String)
    assert (interactions.filter(split == "test")["ts"] >= cuts["test_from_ts"]).all()
    assert (interactions.filter(split == "train")["ts"] < cuts["valid_from_ts"]).all()
    assert items.filter(pl.col("item_id") == "new")["is_cold"].item()  # only seen in the test period
    warm = PreparedDataset.load(out).train_item_mask()  # the training softmax's items
    assert warm.tolist() == (~items.sort("item_idx")["is_cold"].to_numpy()).tolist()
    assert not warm[items.filter(pl.col("item_id") == "new")["item_idx"].item()]
    _check_contract(out)

    # a hand-edited interactions table naming an item outside the catalogue gets a clear error
    interactions.with_columns(pl.col("item_idx") + items.height).write_parquet(out / "interactions.parquet")
    with pytest.raises(ArtifactError, match=r"interactions.parquet: item_idx outside 0\.\."):
        PreparedDataset.load(out).train_item_mask()


def test_stats_command_prints_the_table(tmp_path, generic_source, capsys):
    out = tmp_path / "out"
    prepare(PrepareConfig(source=str(generic_source), out=str(out), kcore=0))
    assert main(["data", "stats", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(out)
    assert lines[1].split() == ["all", "train", "valid", "test"]
    table = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    # u1: 4 events (train 2, valid 1, test 1), u2: 3 (1/1/1), u3: 1 (train); item d is catalogue-only.
    assert table["users"] == ["3", "3", "2", "2"]
    assert table["items"] == ["4", "3", "2", "1"]
    assert table["interactions"] == ["8", "4", "2", "2"]
    assert table["seq_len_p50"] == ["3.00", "1.00", "1.00", "1.00"]
    assert table["seq_len_max"] == ["4", "2", "1", "1"]
    assert table["cold_items"] == ["1", "0", "0", "0"]
    assert {"seq_len_p90", "seq_len_p99", "seq_len_mean", "seq_len_min"} <= set(table)
    assert main(["data", "stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == dataset_stats(out)


def test_bad_input_through_the_command_line_exits_2_with_the_location(tmp_path, capsys):
    write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\nu1,a,1\nu1,b,soon\n")
    assert main(["data", "prepare", "--source", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'interactions.csv'}, line 3, column 'timestamp'" in err and "--on-bad-rows drop" in err
    assert main(["data", "prepare", "--source", str(tmp_path), "--out", str(tmp_path / "out"), "--on-bad-rows", "drop",
                 "--kcore", "0"]) == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["counts"]["rows_dropped"] == {"bad_type": 1}


@pytest.fixture(scope="module")
def ml100k() -> Path:
    try:
        return ensure_ml100k()
    except DatasetUnavailableError as error:
        pytest.skip(f"MovieLens-100k is neither cached nor downloadable here: {error}")


@pytest.mark.slow
def test_ml100k_end_to_end(ml100k, tmp_path):
    out = tmp_path / "ml"
    assert main(["data", "prepare", "--source", "ml-100k", "--out", str(out), "--kcore", "0", "--split", "loo"]) == 0
    _check_contract(out)
    interactions, items, users, manifest = _tables(out)
    counts = manifest["counts"]
    assert (counts["rows_read"], counts["users"], counts["items"], counts["interactions"]) == (100_000, 943, 1_682, 100_000)
    assert counts["rows_dropped"] == {}

    # Every user has exactly one valid and one test item: the latest two by time (file line breaks ties).
    per_user = interactions.group_by("user_idx").agg((pl.col("split") == "valid").sum().alias("v"), (pl.col("split") == "test").sum().alias("t"))
    assert per_user.height == 943 and (per_user["v"] == 1).all() and (per_user["t"] == 1).all()
    raw = pl.read_csv(ml100k / "ml-100k.inter", separator="\t", schema_overrides={"user_id:token": pl.String, "item_id:token": pl.String})
    raw = raw.rename(lambda c: c.split(":")[0]).with_row_index("line")
    latest = (
        raw.sort(["user_id", "timestamp", "line"])
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("item_id").get(-1).alias("test"), pl.col("item_id").get(-2).alias("valid"))
    )
    events = _with_ids(out)
    got = events.filter(pl.col("split") != "train").pivot("split", index="user_id", values="item_id")
    assert latest.join(got, on="user_id", suffix="_got").select(
        ((pl.col("test") == pl.col("test_got")) & (pl.col("valid") == pl.col("valid_got"))).all()
    ).item()

    # The default 5-core run reads the same 100,000 rows and keeps only users and items with >= 5 events.
    core = tmp_path / "ml5"
    manifest5 = prepare(PrepareConfig(source="ml-100k", out=str(core)))
    assert manifest5["counts"]["rows_read"] == 100_000
    kept = pl.read_parquet(core / "interactions.parquet")
    assert kept.group_by("user_idx").len()["len"].min() >= 5 and kept.group_by("item_idx").len()["len"].min() >= 5
    assert manifest5["counts"]["rows_kept"] + manifest5["counts"]["rows_dropped"]["kcore"] == 100_000
    data = PreparedDataset.load(core)
    assert len(data.eval_examples("test")) == 943


@pytest.mark.slow
def test_amazon_industrial_end_to_end(amazon_industrial_dir, tmp_path):
    out = tmp_path / "ai"
    manifest = prepare(PrepareConfig(source=str(amazon_industrial_dir), out=str(out), kcore=0))
    _check_contract(out)
    counts = manifest["counts"]
    assert manifest["source"]["ts_kind"] == "position"
    assert (counts["users"], counts["interactions"], counts["items"]) == (3_285, 22_743, 3_686)

    # position orders each user's events, and becomes ts.
    raw = pl.read_csv(amazon_industrial_dir / "interactions.csv", schema_overrides={"user_id": pl.String, "item_id": pl.String})
    expected = raw.sort(["user_id", "position"]).group_by("user_id", maintain_order=True).agg("item_id", "position")
    got = _with_ids(out).group_by("user_id", maintain_order=True).agg("item_id", pl.col("ts").alias("position"))
    assert expected.sort("user_id").equals(got.sort("user_id"))

    # Catalogue-only items are present and cold; every item has text.
    _, items, _, _ = _tables(out)
    catalogue = pl.read_ndjson(amazon_industrial_dir / "items.jsonl", schema={"item_id": pl.String})["item_id"]
    only = set(catalogue.to_list()) - set(raw["item_id"].to_list())
    assert len(only) == counts["catalogue_only_items"] > 0
    assert items.filter(pl.col("item_id").is_in(list(only)))["is_cold"].all()
    assert items.filter(pl.col("item_id").is_in(list(only))).height == len(only)
    assert (items["text"].str.len_chars() > 0).all()
    assert not items["text"].str.contains("<[a-zA-Z/][^>]*>").any()  # HTML stripped
