"""The failing inputs of ``../shared/cases/inputs-1`` (copied to ``cases/inputs-1``), each with the right outcome,
and the same KIND of fault in every reader, field and time form that shares it."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import polars as pl
import pytest
from pipeline_files import jsonl, write

from recsys.cli import main
from recsys.errors import ConfigError, DataFormatError
from recsys.pipelines.prepare import PrepareConfig, prepare

CASES = Path(__file__).parent / "cases" / "inputs-1"


def _prepare(source, tmp_path, **kwargs) -> dict:
    return prepare(PrepareConfig(source=str(source), out=str(tmp_path / "out"), kcore=kwargs.pop("kcore", 0), **kwargs))


def _history(out: Path, user: str) -> list[tuple[str, int]]:
    """(item id, ts) of one user's events in the written order."""
    events = pl.read_parquet(out / "interactions.parquet")
    users = pl.read_parquet(out / "users.parquet")
    items = pl.read_parquet(out / "items.parquet").select("item_idx", "item_id")
    rows = events.join(users, on="user_idx", maintain_order="left").join(items, on="item_idx", maintain_order="left")
    return [(r["item_id"], r["ts"]) for r in rows.filter(pl.col("user_id") == user).iter_rows(named=True)]


# ----------------------------------------------------------------------------------------------- ragged rows
def test_ragged_rows_case_is_an_error_naming_file_line_and_field_counts(tmp_path):
    source = CASES / "ragged-rows"
    with pytest.raises(DataFormatError) as error:
        _prepare(source, tmp_path)
    assert (error.value.path, error.value.line) == (str(source / "interactions.csv"), 3)
    assert "expected 3 fields, found 4" in str(error.value) and "[ragged_row]" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_ragged_rows_case_drops_and_counts(tmp_path):
    manifest = _prepare(CASES / "ragged-rows", tmp_path, on_bad_rows="drop")
    assert manifest["counts"]["rows_dropped"] == {"ragged_row": 2}
    assert manifest["counts"]["rows_read"] == 6 and manifest["counts"]["rows_kept"] == 4
    # nothing of the broken rows is left: no item "12", no event at ts 34 at the front of a history
    assert _history(tmp_path / "out", "u1") == [("A-100", 1700000001), ("B-200", 1700000003)]
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")["item_id"].to_list()
    assert "12" not in items


def _ragged_layouts(tmp_path: Path) -> dict[str, tuple[Path, Path, int, str]]:
    """A ragged row in every delimited reader: name -> (source, file, line, 'expected N fields, found M')."""
    cases = {}
    d = tmp_path / "tsv"
    f = write(d / "interactions.tsv", "user_id\titem_id\ttimestamp\nu\ta\t1\nu\tb\t2\t9\nu\tc\t3\n")
    cases["generic tsv, extra field"] = (d, f, 3, "expected 3 fields, found 4")
    d = tmp_path / "short"
    f = write(d / "interactions.csv", "user_id,item_id,timestamp,rating\nu,a,1,5\nu,b,2\nu,c,3,4\n")
    cases["generic csv, missing optional field"] = (d, f, 3, "expected 4 fields, found 3")
    d = tmp_path / "rb"
    f = write(d / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t3\t4\t5\n1\t4\t5\n")
    cases["recbole .inter"] = (d, f, 3, "expected 3 fields, found 4")
    d = tmp_path / "rbitem"
    write(d / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t3\t4\n")
    f = write(d / "x.item", "item_id:token\tmovie_title:token_seq\n2\tRed\n3\tBlue\textra\n")
    cases["recbole .item"] = (d, f, 3, "expected 2 fields, found 3")
    d = tmp_path / "ml100k"
    f = write(d / "u.data", "1\t10\t5\t881250949\n1\t20\t3\t8\t881250900\n")
    cases["movielens u.data"] = (d, f, 2, "expected 4 fields, found 5")
    d = tmp_path / "ml1m"
    f = write(d / "ratings.dat", "1::10::5::978300760\n1::20::3::978300700::1\n")
    cases["movielens ratings.dat"] = (d, f, 2, "expected 4 fields, found 5")
    d = tmp_path / "ml1m-movies"
    write(d / "ratings.dat", "1::10::5::978300760\n")
    f = write(d / "movies.dat", "10::Heat::Crime\n20::Heat 2\n")
    cases["movielens movies.dat"] = (d, f, 2, "expected 3 fields (id::title::genres), found 2")
    d = tmp_path / "ml100k-items"
    write(d / "u.data", "1\t10\t5\t881250949\n")
    flags = "|".join(["0"] * 19)
    f = write(d / "u.item", f"10|Heat (1995)|01-Jan-1995||http://x|{flags}\n20|Ro|nin (1998)|01-Jan-1998||http://y|{flags}\n")
    cases["movielens u.item"] = (d, f, 2, "expected 24 fields, found 25")
    d = tmp_path / "amz"
    write(d / "meta_Tools.json", jsonl([{"asin": "B01", "title": "Hammer"}]))
    f = write(d / "Tools.csv", "B01,R1,5.0,1400000000\nB01,R2,5.0,14,1400000100\n")
    cases["amazon2018 ratings csv"] = (d, f, 2, "expected 4 fields, found 5")
    d = tmp_path / "items"
    write(d / "interactions.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\n")
    f = write(d / "items.csv", "item_id,title,brand\na,Kettle,Acme\nb,Mug, large,Acme\n")
    cases["generic items.csv"] = (d, f, 3, "expected 3 fields, found 4")
    return cases


@pytest.mark.parametrize(
    "case",
    ["generic tsv, extra field", "generic csv, missing optional field", "recbole .inter", "recbole .item", "movielens u.data",
     "movielens ratings.dat", "movielens movies.dat", "movielens u.item", "amazon2018 ratings csv", "generic items.csv"],
)
def test_every_delimited_reader_reports_and_drops_ragged_rows(tmp_path, case):
    source, path, line, message = _ragged_layouts(tmp_path)[case]
    with pytest.raises(DataFormatError, match="ragged_row") as error:
        _prepare(source, tmp_path)
    assert (error.value.path, error.value.line) == (str(path), line)
    assert message in str(error.value)
    manifest = _prepare(source, tmp_path, on_bad_rows="drop")
    counts = manifest["counts"]
    is_item_file = path.name in ("x.item", "movies.dat", "u.item", "items.csv")
    assert (counts["items_dropped"] if is_item_file else counts["rows_dropped"]).get("ragged_row") == 1


def test_quoted_separators_blank_lines_and_crlf_are_not_ragged(tmp_path):
    write(tmp_path / "interactions.csv", 'user_id,item_id,timestamp\r\nu,"a,1",1\r\n\r\nu,b,2\r\n  \r\nu,"c ""x""",3')
    write(tmp_path / "items.csv", 'item_id,title\n"a,1","Kettle, large"\nb,"two\nlines"\nc "x",Mug\n')
    manifest = _prepare(tmp_path, tmp_path)
    assert manifest["counts"]["rows_dropped"] == {"blank_line": 2}
    assert [item for item, _ in _history(tmp_path / "out", "u")] == ["a,1", "b", 'c "x"']


# ----------------------------------------------------------------------------------------------- bracketed titles
def test_bracketed_titles_amazon2018_are_kept_verbatim(tmp_path):
    manifest = _prepare(CASES / "bracketed-titles" / "amazon2018", tmp_path)
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    titles = dict(zip(items["item_id"], items["title"]))
    assert titles == {
        "0000000001": "[ { THE LANTERN KEEPER } ] by Doe, Jane (AUTHOR) Apr-16-2002 [ Paperback ]",
        "0000000002": "[The River Atlas] [By: Roe, Sam] [May, 2011]",
        "0000000003": "Plain Book Title",
        "0000000004": "[Renewed] Reading Lamp [Blue]",
    }
    text = dict(zip(items["item_id"], items["text"]))
    assert text["0000000004"] == "[Renewed] Reading Lamp [Blue]."  # its only text: not "without text"
    assert text["0000000002"] == "[The River Atlas] [By: Roe, Sam] [May, 2011]. Categories: Books, Travel."
    assert manifest["counts"]["items_dropped"] == {} and manifest["counts"]["items"] == 4
    # the real serialized lists (category) were flattened, and that is counted; no title was touched
    assert manifest["counts"]["item_text"] == {"serialized_list_flattened": {"category": 3}}


@pytest.mark.parametrize("policy", ["error", "drop"])
def test_bracketed_titles_generic_are_kept_verbatim(tmp_path, policy):
    manifest = _prepare(CASES / "bracketed-titles" / "generic", tmp_path, on_bad_rows=policy)
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items["title"].to_list() == ["[Blue] Kettle [XL]", "Mug", "Lamp"]
    assert items["description"].to_list() == ["Boils water", "[Note] dishwasher safe [2 pack]", "Warm light"]
    assert manifest["counts"]["interactions"] == 3 and manifest["counts"]["items_dropped"] == {}


def test_only_real_serialized_lists_are_flattened_and_removed_text_is_counted(tmp_path):
    write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\nu,d,4\n")
    write(tmp_path / "items.jsonl", jsonl([
        {"item_id": "a", "title": "['Kettle', 'Steel']", "features": [["x", "y"], ["z"]]},
        {"item_id": "b", "title": "[Used] Lamp", "description": "<p>Bright</p> <br/>", "brand": "size <10 and >5"},
        {"item_id": "c", "title": "Mug", "description": "<br>", "categories": []},
        {"item_id": "d", "title": "Pan " * 10},
    ]))
    manifest = _prepare(tmp_path, tmp_path, max_text_chars=20)
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    got = {r["item_id"]: r for r in items.iter_rows(named=True)}
    assert got["a"]["title"] == "Kettle, Steel" and got["a"]["features"] == "x, y, z"
    assert got["b"]["title"] == "[Used] Lamp" and got["b"]["description"] == "Bright"
    assert got["b"]["brand"] == "size <10 and >5"  # not a tag
    assert got["c"]["description"] is None
    assert manifest["counts"]["item_text"] == {
        "serialized_list_flattened": {"title": 1, "features": 1, "categories": 1},
        "html_tags_removed": {"description": 2},
        "emptied_by_cleaning": {"description": 1},
        "cut_to_max_text_chars": 3,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("['Tools', 'Saws']", "Tools, Saws"),
        ('[["Tools", "Hand"], ["x"]]', "Tools, Hand, x"),
        ("['Fits it's rack', 'Screws not included']", "Fits it's rack, Screws not included"),  # old code erased both
        ("['Line one\\n', 'Line two']", "Line one, Line two"),  # escapes decoded, not left as \\n
        ("[1, 2.5]", "1, 2.5"),
        ('["Quoted"] Title ["x"]', '["Quoted"] Title ["x"]'),  # not one list: verbatim
        ("[Blue] Kettle [XL]", "[Blue] Kettle [XL]"),
        ("Current <100mA, voltage >5V", "Current <100mA, voltage >5V"),  # not tags: old code cut the text between
    ],
)
def test_list_and_tag_cleaning_never_loses_text(value, expected):
    from recsys.pipelines.text import clean_field

    assert pl.DataFrame({"v": [value]}).select(clean_field("v")).item() == expected


# ----------------------------------------------------------------------------------------------- time columns
def test_recbole_float_time_case_is_read_and_ordered_by_the_float_value(tmp_path):
    manifest = _prepare(CASES / "recbole-float-time", tmp_path)
    assert manifest["counts"]["rows_dropped"] == {}
    time = manifest["source"]["time"]
    assert (time["column"], time["kind"], time["unit"], time["source_unit"]) == ("timestamp", "unix_fractional", "us", "s")
    assert _history(tmp_path / "out", "u1") == [
        ("i1", 1_600_000_000_250_000), ("i2", 1_600_000_000_750_000), ("i3", 1_600_000_001_500_000), ("i4", 1_600_000_002_000_000),
    ]


def test_a_bad_time_names_the_users_column_in_every_reader(tmp_path):
    write(tmp_path / "rb" / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t1600000000.5\n1\t3\tlater\n")
    with pytest.raises(DataFormatError, match="'later' is not a number") as error:
        _prepare(tmp_path / "rb", tmp_path)
    assert (error.value.line, error.value.column) == (3, "timestamp")
    write(tmp_path / "a23" / "R.jsonl", jsonl([{"user_id": "U", "parent_asin": "P", "timestamp": "x"}]))
    with pytest.raises(DataFormatError) as error:
        _prepare(tmp_path / "a23", tmp_path)
    assert error.value.column == "timestamp"
    write(tmp_path / "ml" / "u.data", "1\t10\t5\tsoon\n")
    with pytest.raises(DataFormatError) as error:
        _prepare(tmp_path / "ml", tmp_path)
    assert error.value.column == "timestamp (field 4)"


ORDER = ["c", "a", "b"]  # the items in time order in every form below


@pytest.mark.parametrize(
    ("form", "values", "kind", "unit"),
    [
        ("integer seconds", ["1600000200", "1600000000", "1600000100"], "unix", "s"),
        ("integer milliseconds", ["1600000000200", "1600000000000", "1600000000100"], "unix", "ms"),
        ("float seconds", ["1600000000.2", "1600000000.0", "1600000000.1"], "unix_fractional", "us"),
        ("float seconds in exponent form", ["1.6000002e9", "1.6e9", "1.6000001e9"], "unix", "s"),
        ("ISO date-time", ["2021-03-04T10:00:00Z", "2021-03-04 08:00:00", "2021-03-04T10:30:00+02:00"], "datetime", "us"),
        ("ISO date-time with fractions", ["2021-03-04T08:00:00.3", "2021-03-04T08:00:00.1", "2021-03-04T08:00:00.2"], "datetime", "us"),
        ("ISO date", ["2021-03-06", "2021-03-04", "2021-03-05"], "date", "s"),
    ],
)
def test_every_time_form_in_text_is_read_in_order(tmp_path, form, values, kind, unit):
    rows = "".join(f"u,{item},{value}\n" for item, value in zip(["b", "c", "a"], values))
    write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n" + rows)
    manifest = _prepare(tmp_path, tmp_path)
    assert [item for item, _ in _history(tmp_path / "out", "u")] == ORDER
    time = manifest["source"]["time"]
    assert (time["column"], time["kind"], time["unit"]) == ("timestamp", kind, unit)


@pytest.mark.parametrize(
    ("series", "kind", "unit"),
    [
        (pl.Series([datetime.datetime(2021, 3, 6), datetime.datetime(2021, 3, 4), datetime.datetime(2021, 3, 5)]), "datetime", "us"),
        (pl.Series([datetime.datetime(2021, 3, 6), datetime.datetime(2021, 3, 4), datetime.datetime(2021, 3, 5)]).dt.replace_time_zone("Europe/Berlin"), "datetime", "us"),
        (pl.Series([datetime.date(2021, 3, 6), datetime.date(2021, 3, 4), datetime.date(2021, 3, 5)]), "date", "s"),
        (pl.Series([1600000000.2, 1600000000.0, 1600000000.1]), "unix_fractional", "us"),
        (pl.Series([1600000002000, 1600000000000, 1600000001000]), "unix", "ms"),
    ],
)
def test_parquet_time_types_are_read_in_order(tmp_path, series, kind, unit):
    pl.DataFrame({"user_id": ["u"] * 3, "item_id": ["b", "c", "a"], "timestamp": series}).write_parquet(tmp_path / "interactions.parquet")
    manifest = _prepare(tmp_path, tmp_path)
    assert [item for item, _ in _history(tmp_path / "out", "u")] == ORDER
    assert (manifest["source"]["time"]["kind"], manifest["source"]["time"]["unit"]) == (kind, unit)
    if kind == "datetime":
        first = _history(tmp_path / "out", "u")[0][1]
        offset = 3600 * 10**6 if series.dtype.time_zone else 0  # Berlin midnight is 23:00 UTC the day before
        assert first == int(datetime.datetime(2021, 3, 4, tzinfo=datetime.timezone.utc).timestamp()) * 10**6 - offset


def test_negative_time_case_is_a_bad_row(tmp_path):
    source = CASES / "negative-time"
    with pytest.raises(DataFormatError, match="1919") as error:
        _prepare(source, tmp_path)
    assert (error.value.path, error.value.line, error.value.column) == (str(source / "Toys.jsonl"), 6, "timestamp")
    assert "[time_out_of_range]" in str(error.value)
    manifest = _prepare(source, tmp_path, on_bad_rows="drop")
    assert manifest["counts"]["rows_dropped"] == {"time_out_of_range": 1}
    assert all(ts > 0 for _, ts in _history(tmp_path / "out", "AE01"))
    assert [item for item, _ in _history(tmp_path / "out", "AE01")] == ["P01", "P03", "P04"]


@pytest.mark.parametrize(
    ("rows", "line"),
    [
        ("u,a,1600000000\nu,b,1600000100000\nu,c,1600000200\n", 3),  # a millisecond value in a seconds column
        ("u,a,1600000000\nu,b,-5\nu,c,1600000200\n", 3),  # negative seconds, on the typed integer fast path
        ("u,a,2021-03-04\nu,b,1850-01-01\nu,c,2021-03-05\n", 3),  # ISO date before 1970
        ("u,a,1600000000.5\nu,b,-1.5\nu,c,1600000200\n", 3),
    ],
)
def test_out_of_range_times_are_bad_rows_in_every_form(tmp_path, rows, line):
    write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n" + rows)
    with pytest.raises(DataFormatError, match="time_out_of_range") as error:
        _prepare(tmp_path, tmp_path)
    assert (error.value.line, error.value.column) == (line, "timestamp")
    manifest = _prepare(tmp_path, tmp_path, on_bad_rows="drop")
    assert manifest["counts"]["rows_dropped"] == {"time_out_of_range": 1}


def test_positions_are_not_bounded(tmp_path):
    write(tmp_path / "interactions.csv", "user_id,item_id,position\nu,a,-3\nu,b,0\nu,c,7\n")
    manifest = _prepare(tmp_path, tmp_path)
    assert manifest["source"]["time"]["kind"] == "position" and manifest["counts"]["rows_dropped"] == {}


# ----------------------------------------------------------------------------------------------- temporal cut ties
def test_temporal_cut_ties_case_leaves_no_split_empty_and_warns(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["data", "prepare", "--source", str(CASES / "temporal-cut-ties"), "--out", str(out), "--kcore", "0", "--split", "temporal"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    splits = manifest["counts"]["splits"]
    assert (splits["train"]["interactions"], splits["valid"]["interactions"], splits["test"]["interactions"]) == (12, 2, 6)
    cuts = manifest["parameters"]["temporal_cuts"]
    assert (cuts["valid_from_ts"], cuts["test_from_ts"], cuts["test_fraction_actual"]) == (220, 500, 0.3)
    assert len(manifest["warnings"]) == 1 and "test holds 6 of 20 events" in manifest["warnings"][0]
    assert "warning: temporal split: test holds 6 of 20 events" in capsys.readouterr().err


def test_temporal_split_of_one_timestamp_is_an_error(tmp_path):
    write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\nu,a,5\nu,b,5\nv,a,5\n")
    with pytest.raises(ConfigError, match="distinct times"):
        _prepare(tmp_path, tmp_path, split="temporal")


# ----------------------------------------------------------------------------------------------- encodings
def test_mixed_encoding_case_decodes_every_title(tmp_path):
    manifest = _prepare(CASES / "mixed-encoding", tmp_path)
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items["title"].to_list() == [
        "Café Noir (1994)", "Niño del Sol, El (1997)", "Über Alles (2000)", "Plain Title (1999)", "Misérables, Les (1995)",
    ]
    assert manifest["source"]["notes"]["item_file_encoding"].startswith("mixed: 1 Latin-1 line(s) (lines 2)")


# ----------------------------------------------------------------------------------------------- separators
def test_space_separated_recbole_case_says_atomic_files_are_tab_separated(tmp_path):
    source = CASES / "recbole-space-separated"
    with pytest.raises(DataFormatError) as error:
        _prepare(source, tmp_path, on_bad_rows="drop")
    message = str(error.value)
    assert (error.value.path, error.value.line) == (str(source / "shop.inter"), 1)
    assert "the header is one field" in message and "separated by spaces" in message and "tab-separated" in message
    assert "missing" not in message


@pytest.mark.parametrize(
    ("name", "text", "found"),
    [
        ("interactions.csv", "user_id;item_id;timestamp\nu;a;1\n", "semicolons"),
        ("interactions.csv", "user_id\titem_id\ttimestamp\nu\ta\t1\n", "tabs"),
        ("interactions.tsv", "user_id,item_id,timestamp\nu,a,1\n", "commas"),
    ],
)
def test_a_header_in_another_separator_is_named(tmp_path, name, text, found):
    write(tmp_path / name, text)
    with pytest.raises(DataFormatError, match=f"the header is one field .* separated by {found}"):
        _prepare(tmp_path, tmp_path)


# ----------------------------------------------------------------------------------------------- pre-split input
def test_a_given_split_reports_what_the_kcore_removed_from_it(tmp_path, capsys):
    rows = ["user_id,item_id,timestamp,split"]
    for user in ("u1", "u2", "u3"):
        rows += [f"{user},a,1,train", f"{user},b,2,train", f"{user},c,3,valid", f"{user},d,4,test"]
    rows += ["u4,a,1,train", "u4,z,2,valid", "u4,y,3,test"]  # items z and y have one event: a 2-core removes them, then u4
    write(tmp_path / "interactions.csv", "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["data", "prepare", "--source", str(tmp_path), "--out", str(out), "--kcore", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["kcore_removed_per_split"] == {"train": 1, "valid": 1, "test": 1}
    assert "--kcore 0" in manifest["warnings"][0] and "1 valid and 1 test rows" in manifest["warnings"][0]
    captured = capsys.readouterr()
    assert "the k-core removed 1 train, 1 valid and 1 test rows" in captured.out and "--kcore 0" in captured.err
    kept = _prepare(tmp_path, tmp_path, kcore=0)
    assert kept["counts"]["kcore_removed_per_split"] == {"train": 0, "valid": 0, "test": 0} and kept["warnings"] == []
