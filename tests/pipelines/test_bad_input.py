"""The corpus of broken sources: a located error by default, dropped and counted with --on-bad-rows drop."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from pipeline_files import jsonl, write

from recsys.errors import ConfigError, DataFormatError
from recsys.pipelines.prepare import PrepareConfig, prepare

HEADER = "user_id,item_id,timestamp\n"
GOOD_EVENTS = "u1,a,1\nu1,b,2\nu1,c,3\nu2,a,1\nu2,b,2\nu2,c,3\n"
ITEMS = [{"item_id": "a", "title": "A"}, {"item_id": "b", "title": "B"}, {"item_id": "c", "title": "C"}]


def _items(rows=ITEMS) -> str:
    return jsonl(rows)


# name -> (files, (file, line, column, reason) of the error, rows_dropped, items_dropped) under drop
CORPUS = {
    "wrong_type_ts": (
        {"interactions.csv": HEADER + GOOD_EVENTS + "u3,a,yesterday\n", "items.jsonl": _items()},
        ("interactions.csv", 8, "timestamp", "bad_type"),  # the user's column name, not the internal ts
        {"bad_type": 1},
        {},
    ),
    "wrong_type_rating": (
        {"interactions.csv": "user_id,item_id,timestamp,rating\nu1,a,1,5\nu1,b,2,five\nu1,c,3,4\n", "items.jsonl": _items()},
        ("interactions.csv", 3, "rating", "bad_type"),
        {"bad_type": 1},
        {},
    ),
    "missing_value": (
        {"interactions.csv": HEADER + GOOD_EVENTS + ",a,4\n", "items.jsonl": _items()},
        ("interactions.csv", 8, "user_id", "missing_value"),
        {"missing_value": 1},
        {},
    ),
    "bad_split_value": (
        {"interactions.csv": "user_id,item_id,timestamp,split\nu1,a,1,train\nu1,b,2,validation\nu1,c,3,test\n"},
        ("interactions.csv", 3, "split", "bad_value"),
        {"bad_value": 1},
        {},
    ),
    "missing_split_value": (
        {"interactions.csv": "user_id,item_id,timestamp,split\nu1,a,1,train\nu1,b,2,\nu1,c,3,test\n"},
        ("interactions.csv", 3, "split", "missing_value"),
        {"missing_value": 1},
        {},
    ),
    "invalid_utf8_interactions": (
        {"interactions.csv": HEADER.encode() + GOOD_EVENTS.encode() + b"u\xff3,a,4\n", "items.jsonl": _items()},
        ("interactions.csv", 8, "user_id", "bad_utf8"),
        {"bad_utf8": 1},
        {},
    ),
    "invalid_utf8_items": (
        {"interactions.csv": HEADER + GOOD_EVENTS, "items.jsonl": _items().encode() + b'{"item_id": "d", "title": "caf\xe9"}\n'},
        ("items.jsonl", 4, "title", "bad_utf8"),
        {},
        {"bad_utf8": 1},
    ),
    "truncated_json_line": (
        {"interactions.csv": HEADER + GOOD_EVENTS + "u3,d,1\n", "items.jsonl": _items() + '{"item_id": "d", "title": "Dri'},
        ("items.jsonl", 4, "title", "bad_json"),
        {"unknown_item": 1},  # item d's line is unreadable, so u3's event names an unknown item
        {"bad_json": 1},
    ),
    "json_line_not_an_object": (
        {"interactions.csv": HEADER + GOOD_EVENTS, "items.jsonl": _items() + '["d", "Drill"]\n'},
        ("items.jsonl", 4, None, "bad_json"),
        {},
        {"bad_json": 1},
    ),
    "duplicate_events": (
        {"interactions.csv": HEADER + GOOD_EVENTS + "u1,b,2\n", "items.jsonl": _items()},
        ("interactions.csv", 8, "item_id", "duplicate_event"),
        {"duplicate_event": 1},
        {},
    ),
    "unknown_item": (
        {"interactions.csv": HEADER + GOOD_EVENTS + "u2,zz,9\n", "items.jsonl": _items()},
        ("interactions.csv", 8, "item_id", "unknown_item"),
        {"unknown_item": 1},
        {},
    ),
    "item_without_text": (
        {"interactions.csv": HEADER + GOOD_EVENTS + "u2,d,9\n", "items.jsonl": _items(ITEMS + [{"item_id": "d", "title": "  ", "description": "[]"}])},
        ("items.jsonl", 4, "title", "item_without_text"),
        {"item_dropped": 1},
        {"item_without_text": 1},
    ),
    "duplicate_item": (
        {"interactions.csv": HEADER + GOOD_EVENTS, "items.jsonl": _items(ITEMS + [{"item_id": "a", "title": "A again"}])},
        ("items.jsonl", 4, "item_id", "duplicate_item"),
        {},
        {"duplicate_item": 1},
    ),
}


def _source(tmp_path: Path, files: dict) -> Path:
    folder = tmp_path / "src"
    for name, text in files.items():
        write(folder / name, text)
    return folder


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_row_is_a_located_error_by_default(tmp_path, case):
    files, (name, line, column, reason), _, _ = CORPUS[case]
    source = _source(tmp_path, files)
    with pytest.raises(DataFormatError) as error:
        prepare(PrepareConfig(source=str(source), out=str(tmp_path / "out"), kcore=0))
    assert error.value.path == str(source / name)
    assert error.value.line == line
    assert error.value.column == column
    message = str(error.value)
    assert f"[{reason}]" in message and "--on-bad-rows drop" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_rows_are_dropped_and_counted(tmp_path, case):
    files, _, rows_dropped, items_dropped = CORPUS[case]
    source = _source(tmp_path, files)
    manifest = prepare(PrepareConfig(source=str(source), out=str(tmp_path / "out"), kcore=0, on_bad_rows="drop"))
    counts = manifest["counts"]
    assert counts["rows_dropped"] == rows_dropped
    assert counts["items_dropped"] == items_dropped
    assert counts["rows_read"] == counts["rows_kept"] + sum(rows_dropped.values())
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["counts"] == counts
    assert pl.read_parquet(tmp_path / "out" / "interactions.parquet").height == counts["rows_kept"]


@pytest.mark.parametrize("policy", ["error", "drop"])
@pytest.mark.parametrize(
    ("files", "name", "column", "match"),
    [
        ({"interactions.csv": "user_id,timestamp\nu1,1\n"}, "interactions.csv", "item_id", "required column"),
        ({"interactions.csv": ""}, "interactions.csv", None, "empty"),
        ({"interactions.csv": HEADER + GOOD_EVENTS, "items.jsonl": ""}, "items.jsonl", None, "empty"),
        ({"interactions.csv": HEADER + GOOD_EVENTS, "items.jsonl": jsonl([{"id": "a", "title": "A"}])}, "items.jsonl", "item_id", "required column"),
    ],
)
def test_structural_problems_always_raise(tmp_path, policy, files, name, column, match):
    source = _source(tmp_path, files)
    with pytest.raises(DataFormatError, match=match) as error:
        prepare(PrepareConfig(source=str(source), out=str(tmp_path / "out"), kcore=0, on_bad_rows=policy))
    assert error.value.path == str(source / name)
    assert error.value.column == column


def test_header_only_file_has_no_usable_rows(tmp_path):
    source = _source(tmp_path, {"interactions.csv": HEADER})
    with pytest.raises(DataFormatError, match="no usable interaction rows"):
        prepare(PrepareConfig(source=str(source), out=str(tmp_path / "out"), kcore=0))


def test_blank_lines_are_counted_not_errors(tmp_path):
    source = _source(tmp_path, {"interactions.csv": HEADER + "u1,a,1\n\nu1,b,2\n", "items.jsonl": "\n" + _items()})
    manifest = prepare(PrepareConfig(source=str(source), out=str(tmp_path / "out"), kcore=0))
    assert manifest["counts"]["rows_dropped"] == {"blank_line": 1}
    assert manifest["counts"]["items_dropped"] == {"blank_line": 1}
    assert manifest["counts"]["items"] == 3


def _dataset_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_failed_rerun_leaves_the_previous_dataset_intact(tmp_path, monkeypatch):
    out = tmp_path / "out"
    good = _source(tmp_path, {"interactions.csv": HEADER + GOOD_EVENTS, "items.jsonl": _items()})
    prepare(PrepareConfig(source=str(good), out=str(out), kcore=0))
    before = _dataset_files(out)

    # A bad source fails before writing anything.
    bad = tmp_path / "bad"
    write(bad / "interactions.csv", HEADER + "u1,a,oops\n")
    with pytest.raises(DataFormatError):
        prepare(PrepareConfig(source=str(bad), out=str(out), kcore=0))
    assert _dataset_files(out) == before

    # A crash while writing (after the first table) leaves the old dataset and no temporary folder.
    original = pl.DataFrame.write_parquet
    calls = {"n": 0}

    def crash_on_second(self, file, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return original(self, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", crash_on_second)
    with pytest.raises(OSError, match="disk full"):
        prepare(PrepareConfig(source=str(good), out=str(out), kcore=0, max_text_chars=5))
    monkeypatch.undo()
    assert _dataset_files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "out", "src"]

    # A successful rerun replaces it.
    prepare(PrepareConfig(source=str(good), out=str(out), kcore=0, max_text_chars=5))
    assert _dataset_files(out) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "out", "src"]


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path):
    source = _source(tmp_path, {"interactions.csv": HEADER + GOOD_EVENTS})
    out = tmp_path / "home"
    write(out / "notes.txt", "keep me")
    with pytest.raises(ConfigError, match="not a prepared dataset"):
        prepare(PrepareConfig(source=str(source), out=str(out), kcore=0))
    assert (out / "notes.txt").read_text() == "keep me"


def test_truncated_review_line_names_the_source_field(tmp_path, amazon2023_source):
    reviews = amazon2023_source / "Industrial.jsonl"
    with open(reviews, "a") as handle:
        handle.write('{"rating": 4.0, "parent_asin": "P2", "user_id": "U3", "timestamp": 16000')  # download cut short
    with pytest.raises(DataFormatError, match="truncated") as error:
        prepare(PrepareConfig(source=str(amazon2023_source), out=str(tmp_path / "out"), kcore=0))
    assert (error.value.path, error.value.line, error.value.column) == (str(reviews), 4, "timestamp")
    manifest = prepare(PrepareConfig(source=str(amazon2023_source), out=str(tmp_path / "out"), kcore=0, on_bad_rows="drop"))
    assert manifest["counts"]["rows_dropped"] == {"bad_json": 1} and manifest["counts"]["rows_read"] == 4


def test_wrong_type_in_review_json_is_located(tmp_path, amazon2018_source):
    reviews = amazon2018_source / "Tools_5.json"
    with open(reviews, "a") as handle:
        handle.write(json.dumps({"overall": 5.0, "reviewerID": "R3", "asin": "B01", "unixReviewTime": "last week"}) + "\n")
    with pytest.raises(DataFormatError, match="not a number") as error:
        prepare(PrepareConfig(source=str(amazon2018_source), out=str(tmp_path / "out"), kcore=0))
    assert (error.value.path, error.value.line, error.value.column) == (str(reviews), 4, "unixReviewTime")
