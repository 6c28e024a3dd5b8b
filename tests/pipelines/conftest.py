"""Tiny hand-made sources, one per format, written into the test's tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_files import jsonl, write


@pytest.fixture
def generic_source(tmp_path) -> Path:
    """3 users, 4 catalogue items (d never interacted), a timestamp tie for user u1."""
    folder = tmp_path / "generic"
    write(
        folder / "interactions.csv",
        "user_id,item_id,timestamp\n"
        "u1,a,10\n"
        "u1,c,30\n"
        "u1,b,30\n"
        "u1,a,40\n"
        "u2,b,5\n"
        "u2,c,6\n"
        "u2,a,7\n"
        "u3,a,1\n",
    )
    write(
        folder / "items.jsonl",
        jsonl(
            [
                {"item_id": "a", "title": "Alpha &amp; Co", "description": "['<p>first</p>', 'second']"},
                {"item_id": "b", "title": "Beta", "categories": ["Tools", "Saws"]},
                {"item_id": "c", "title": "Gamma", "brand": "Acme"},
                {"item_id": "d", "title": "Delta (never bought)"},
            ]
        ),
    )
    return folder


@pytest.fixture
def movielens_100k_source(tmp_path) -> Path:
    """GroupLens ml-100k layout: u.data (tab) and a Latin-1 u.item with genre flags."""
    folder = tmp_path / "ml-100k"
    write(folder / "u.data", "1\t10\t5\t881250949\n1\t20\t3\t881250900\n2\t10\t4\t881250000\n2\t30\t2\t881250001\n")
    flags_10 = "|".join("1" if g in (1, 18) else "0" for g in range(19))
    flags_20 = "|".join("1" if g == 0 else "0" for g in range(19))
    flags_30 = "|".join("1" if g == 8 else "0" for g in range(19))
    text = (
        f"10|Caf\xe9 Society (1995)|01-Jan-1995||http://imdb/10|{flags_10}\n"
        f"20|Blue (1996)|01-Jan-1996||http://imdb/20|{flags_20}\n"
        f"30|Drama Time (1997)|01-Jan-1997||http://imdb/30|{flags_30}\n"
    )
    write(folder / "u.item", text.encode("latin-1"))
    return folder


@pytest.fixture
def movielens_dat_source(tmp_path) -> Path:
    """ml-1m/ml-10m layout: ratings.dat and movies.dat with '::' separators (a ':' inside a title)."""
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", "1::10::5::978300760\n1::20::3::978300700\n2::10::4::978300000\n")
    write(folder / "movies.dat", "10::Star Wars: Episode IV (1977)::Action|Sci-Fi\n20::Heat (1995)::Crime|Thriller\n".encode("latin-1"))
    return folder


@pytest.fixture
def recbole_source(tmp_path) -> Path:
    """RecBole atomic files with typed headers (ML-style item fields)."""
    folder = tmp_path / "rb"
    write(
        folder / "toy.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "7\t1\t4\t881250949\n7\t2\t3\t881250950\n8\t1\t5\t881250000\n",
    )
    write(
        folder / "toy.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n2\tGoldenEye\t1995\tAction Thriller\n",
    )
    return folder


@pytest.fixture
def amazon2018_source(tmp_path) -> Path:
    """Amazon 2018 5-core reviews JSON lines with their metadata file."""
    folder = tmp_path / "amz18"
    write(
        folder / "Tools_5.json",
        jsonl(
            [
                {"overall": 5.0, "reviewerID": "R1", "asin": "B01", "unixReviewTime": 1400000000, "style": {"Size:": "L"}},
                {"overall": 2.0, "reviewerID": "R1", "asin": "B02", "unixReviewTime": 1400000100},
                {"overall": 4.0, "reviewerID": "R2", "asin": "B01", "unixReviewTime": 1300000000},
            ]
        ),
    )
    write(
        folder / "meta_Tools.json",
        jsonl(
            [
                {"asin": "B01", "title": "Hammer &amp; Nails", "brand": "Acme", "category": ["Tools", "Hand Tools"],
                 "description": ["<b>Strong</b> hammer.", "Lasts."], "feature": ["steel"], "also_buy": ["B02"]},
                {"asin": "B02", "title": "Saw", "brand": "", "category": [], "description": []},
                {"asin": "B03", "title": "Drill", "brand": "Bosch", "category": ["Power Tools"]},
            ]
        ),
    )
    return folder


@pytest.fixture
def amazon2023_source(tmp_path) -> Path:
    """Amazon 2023 review JSONL (ms timestamps, parent_asin) with its meta JSONL."""
    folder = tmp_path / "amz23"
    write(
        folder / "Industrial.jsonl",
        jsonl(
            [
                {"rating": 5.0, "title": "ok", "text": "fine", "asin": "X1v", "parent_asin": "P1", "user_id": "U1", "timestamp": 1588687728923},
                {"rating": 3.0, "asin": "X2", "parent_asin": "P2", "user_id": "U1", "timestamp": 1588687728000},
                {"rating": 1.0, "asin": "X1", "parent_asin": "P1", "user_id": "U2", "timestamp": 1600000000000},
            ]
        ),
    )
    write(
        folder / "meta_Industrial.jsonl",
        jsonl(
            [
                {"parent_asin": "P1", "title": "Glue", "store": "Gorilla", "categories": ["Adhesives"], "features": ["strong", "fast"],
                 "description": ["Bonds wood."], "main_category": "Industrial", "price": 5.5, "details": {"a": 1}},
                {"parent_asin": "P2", "title": "Tape", "store": None, "categories": [], "features": [], "description": []},
            ]
        ),
    )
    return folder
