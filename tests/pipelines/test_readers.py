"""Each reader and the format detection on tiny hand-made files (fixtures in conftest.py)."""

from __future__ import annotations

import polars as pl
import pytest

from recsys.errors import DataFormatError
from recsys.pipelines.detect import detect
from recsys.pipelines.issues import RowLog
from recsys.pipelines.readers import read_source

from pipeline_files import jsonl, write


def _events(tables) -> pl.DataFrame:
    return tables.interactions.collect().sort("_line")


def test_generic_reads_interactions_and_items(generic_source):
    tables = read_source(generic_source, "auto", RowLog())
    assert tables.format == "generic" and tables.ts_kind == "time"
    events = _events(tables)
    assert events.columns == ["_line", "user_id", "item_id", "ts"]
    assert events["_line"].to_list() == list(range(2, 10))  # header is line 1
    items = tables.items.collect()
    assert items["item_id"].to_list() == ["a", "b", "c", "d"]
    assert items["_line"].to_list() == [1, 2, 3, 4]


def test_generic_position_column_orders_events(tmp_path):
    write(tmp_path / "interactions.csv", "user_id,item_id,position\nu,b,1\nu,a,0\n")
    tables = read_source(tmp_path, "generic", RowLog())
    assert tables.ts_kind == "position"
    assert _events(tables)["ts"].to_list() == ["1", "0"]


def test_generic_parquet_with_split_column(tmp_path):
    pl.DataFrame({"user_id": [1, 1], "item_id": [3, 4], "timestamp": [5, 6], "split": ["train", "test"]}).write_parquet(
        tmp_path / "interactions.parquet"
    )
    pl.DataFrame({"item_id": [3, 4], "title": ["x", "y"]}).write_parquet(tmp_path / "items.parquet")
    tables = read_source(tmp_path, "auto", RowLog())
    events = _events(tables)
    assert events["split"].to_list() == ["train", "test"]
    assert events["_line"].to_list() == [1, 2]
    assert tables.items.collect()["title"].to_list() == ["x", "y"]


def test_generic_without_time_column_is_a_located_error(tmp_path):
    path = write(tmp_path / "interactions.csv", "user_id,item_id\nu,a\n")
    with pytest.raises(DataFormatError, match="timestamp") as error:
        read_source(tmp_path, "generic", RowLog())
    assert error.value.path == str(path) and error.value.line == 1


def test_movielens_100k_decodes_latin1_and_names_genres(movielens_100k_source):
    tables = read_source(movielens_100k_source, "auto", RowLog())
    assert tables.format == "movielens-100k"
    assert tables.notes == {"item_file_encoding": "latin-1"}
    events = _events(tables)
    assert events.select("user_id", "item_id", "rating", "ts").row(0) == ("1", "10", "5", "881250949")
    items = tables.items.collect()
    first = items.row(0, named=True)
    assert first["title"] == "Café Society (1995)"
    assert first["year"] == "1995"
    assert first["genres"] == "Action, Western"
    assert items["genres"].to_list()[1:] == ["unknown", "Drama"]


def test_movielens_dat_keeps_colons_inside_titles(movielens_dat_source):
    tables = read_source(movielens_dat_source, "auto", RowLog())
    assert tables.format == "movielens-dat"
    assert _events(tables).select("user_id", "item_id", "rating", "ts").row(0) == ("1", "10", "5", "978300760")
    items = tables.items.collect()
    assert items["title"].to_list() == ["Star Wars: Episode IV (1977)", "Heat (1995)"]
    assert items["genres"].to_list() == ["Action, Sci-Fi", "Crime, Thriller"]
    assert items["year"].to_list() == ["1977", "1995"]


def test_recbole_typed_headers_are_mapped(recbole_source):
    tables = read_source(recbole_source, "auto", RowLog())
    assert tables.format == "recbole"
    assert _events(tables).columns == ["_line", "user_id", "item_id", "ts", "rating"]
    items = tables.items.collect()
    assert items.columns == ["_line", "item_id", "title", "year", "genres"]
    assert items["genres"].to_list() == ["Animation, Children's, Comedy", "Action, Thriller"]


def test_recbole_header_without_types_is_rejected(tmp_path):
    write(tmp_path / "x.inter", "user_id\titem_id:token\ttimestamp:float\n1\t2\t3\n")
    with pytest.raises(DataFormatError, match="name:type"):
        read_source(tmp_path, "recbole", RowLog())


def test_amazon2018_reviews_and_metadata(amazon2018_source):
    tables = read_source(amazon2018_source, "auto", RowLog())
    assert tables.format == "amazon2018"
    row = _events(tables).select("user_id", "item_id", "rating", "ts").row(0)
    assert row[:2] == ("R1", "B01") and float(row[2]) == 5.0 and row[3] == "1400000000"
    items = tables.items.collect()
    assert items["item_id"].to_list() == ["B01", "B02", "B03"]
    assert "Hand Tools" in items["categories"][0]  # the JSON list, flattened later by the text step
    assert {"title", "brand", "categories", "features", "description"} <= set(items.columns)
    assert "also_buy" not in items.columns


def test_amazon2018_ratings_csv(tmp_path):
    write(tmp_path / "Tools.csv", "B01,R1,5.0,1400000000\nB02,R1,3.0,1400000100\n")
    write(tmp_path / "meta_Tools.json", jsonl([{"asin": "B01", "title": "Hammer"}, {"asin": "B02", "title": "Saw"}]))
    assert detect(tmp_path) == "amazon2018"
    tables = read_source(tmp_path, "auto", RowLog())
    events = _events(tables)
    assert events.select("user_id", "item_id", "ts", "rating").row(1) == ("R1", "B02", "1400000100", "3.0")
    assert tables.items_file.name == "meta_Tools.json"


def test_amazon2023_reviews_and_metadata(amazon2023_source):
    tables = read_source(amazon2023_source, "auto", RowLog())
    assert tables.format == "amazon2023"
    events = _events(tables)
    assert events["item_id"].to_list() == ["P1", "P2", "P1"]  # parent_asin, not asin
    assert events["ts"].to_list()[0] == "1588687728923"  # milliseconds kept
    items = tables.items.collect()
    assert items.filter(pl.col("item_id") == "P1")["brand"].item() == "Gorilla"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"u.data": "1\t2\t3\t4\n"}, "movielens-100k"),
        ({"ratings.dat": "1::2::3::4\n"}, "movielens-dat"),
        ({"a.inter": "user_id:token\n"}, "recbole"),
        ({"interactions.csv": "user_id,item_id,timestamp\n"}, "generic"),
        ({"r.jsonl": '{"user_id": "u", "parent_asin": "p", "timestamp": 1}\n'}, "amazon2023"),
        ({"r.json": '{"reviewerID": "u", "asin": "p", "unixReviewTime": 1}\n'}, "amazon2018"),
        ({"r.csv": "B01,R1,5.0,1400000000\n"}, "amazon2018"),
    ],
)
def test_detect_formats(tmp_path, files, expected):
    for name, text in files.items():
        write(tmp_path / name, text)
    assert detect(tmp_path) == expected
    assert detect(tmp_path / next(iter(files))) == expected


def test_detect_unknown_lists_the_expected_layouts(tmp_path):
    write(tmp_path / "notes.txt", "hello\n")
    with pytest.raises(DataFormatError, match="pass --format"):
        detect(tmp_path)


def _two_layouts(root):
    """A folder that detects as MovieLens-100k (u.data) and also holds a generic table with other events."""
    write(root / "u.data", "1\t10\t5\t881250949\n1\t20\t3\t881250950\n1\t30\t4\t881250951\n")
    write(root / "interactions.csv", "user_id,item_id,timestamp\nalice,hammer,1\nalice,saw,2\nalice,drill,3\n")
    return root


def test_format_override_reads_a_source_that_detects_as_another_format(tmp_path):
    source = _two_layouts(tmp_path)
    assert detect(source) == "movielens-100k"
    auto = read_source(source, "auto", RowLog())
    assert auto.format == "movielens-100k" and _events(auto)["item_id"].to_list() == ["10", "20", "30"]
    forced = read_source(source, "generic", RowLog())
    assert forced.format == "generic"
    assert _events(forced).select("user_id", "item_id").rows() == [("alice", "hammer"), ("alice", "saw"), ("alice", "drill")]


def test_format_flag_of_data_prepare_beats_detection(tmp_path):
    from recsys.cli import main
    from recsys.pipelines.prepared import PreparedDataset

    source = _two_layouts(tmp_path / "source")
    out = tmp_path / "out"
    assert main(["data", "prepare", "--source", str(source), "--out", str(out), "--kcore", "0", "--format", "generic"]) == 0
    data = PreparedDataset.load(out)
    assert data.manifest["source"]["format"] == "generic"
    assert sorted(data.items["item_id"].to_list()) == ["drill", "hammer", "saw"]
