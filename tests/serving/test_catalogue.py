"""The catalogue store: committed before the answer, replayed at start, shared by replicas (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recsys.serving.catalogue import Catalogue, CatalogueStore, CatalogueUnavailableError, DuplicateItemError
from recsys.errors import ConfigError, UnknownItemError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.db'}"
    url = request.getfixturevalue("postgres_url")
    # a fresh catalogue name per test keeps tests apart on the shared server
    return url


def fresh_name(prefix: str = "t") -> str:
    return f"{prefix}-{time.time_ns()}"


def test_store_log_order_duplicates_and_removals(store_url):
    name = fresh_name()
    store = CatalogueStore(store_url, name)
    pending, first = store.commit("add", "a", text="first item", title="A", after=0)
    assert pending == [] and first.op == "add" and first.seq > 0
    other = CatalogueStore(store_url, name)  # a second replica's handle
    pending, second = other.commit("add", "b/with/slashes", text="second", after=0)
    assert [c.item_id for c in pending] == ["a"] and second.seq > first.seq  # it learns what it missed, in order
    with pytest.raises(DuplicateItemError, match="'a' is already"):
        other.commit("add", "a", text="again", after=second.seq)
    _, removed = store.commit("remove", "a", after=second.seq)
    assert removed is not None
    assert store.commit("remove", "a", after=removed.seq)[1] is None  # removing twice records nothing
    assert [(c.op, c.item_id, c.title) for c in store.changes(0)] == [("add", "a", "A"), ("add", "b/with/slashes", None), ("remove", "a", None)]
    assert CatalogueStore(store_url, fresh_name("other")).changes(0) == []  # catalogues of other datasets stay apart
    store.close()
    other.close()


WRITER = """
import sys
from recsys.serving.catalogue import CatalogueStore, DuplicateItemError
store = CatalogueStore(sys.argv[1], sys.argv[2])
for i in range(int(sys.argv[4])):
    try:
        store.commit("add", f"{sys.argv[3]}-{i}", text="t", after=0)
        store.commit("add", f"shared-{i}", text="t", after=0)   # both writers race for these ids
    except DuplicateItemError:
        pass
"""


def test_two_processes_write_at_once_and_every_reader_sees_one_ordered_log(store_url):
    name, count = fresh_name(), 15
    CatalogueStore(store_url, name).close()  # the table exists before the race
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, store_url, name, tag, str(count)], env=env) for tag in ("p", "q")]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    changes = CatalogueStore(store_url, name).changes(0)
    ids = [c.item_id for c in changes]
    assert len(ids) == len(set(ids)) == 3 * count  # each shared id was added exactly once
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)


def test_a_store_that_cannot_be_opened_or_reached_is_one_clear_error(tmp_path, postgres_url):
    with pytest.raises(ConfigError, match="only sqlite:// and postgresql://"):
        CatalogueStore("mysql://x/y", "n")
    with pytest.raises(ConfigError, match="cannot open the catalogue store"):
        CatalogueStore(f"sqlite:///{tmp_path / 'no-such-folder' / 'c.db'}", "n")
    with pytest.raises(ConfigError, match="cannot open") as caught:
        CatalogueStore("postgresql://setrec:secret-password@127.0.0.1:9/setrec", "n")
    assert "secret-password" not in str(caught.value)
    store = CatalogueStore(postgres_url, fresh_name())
    store.engine.dispose()
    store.engine = __import__("sqlalchemy").create_engine("postgresql+psycopg://nobody@127.0.0.1:9/none")  # the server went away
    with pytest.raises(CatalogueUnavailableError, match="cannot be written.*retry"):
        store.commit("add", "x", text="t", after=0)


# ---------------------------------------------------------------- replicas in one process

@pytest.fixture(scope="module")
def replicas(qwen_bundle):
    """Two recommenders on the same bundle (two replicas); closed at the end."""
    from recsys.serving.service import Recommender

    pair = [Recommender.from_bundle(qwen_bundle, "torch", check_table=False) for _ in range(2)]
    yield pair
    for rec in pair:
        rec.close()


def top_ids(rec, history, k=5, candidates=None):
    from recsys.serving.service import Query

    return rec.recommend([Query(history, k=k, exclude_history=False, candidates=candidates)])[0].ids


def test_replicas_converge_and_a_restart_replays_the_log(replicas, qwen_bundle, store_url):
    from recsys.serving.service import Recommender

    a, b = replicas
    name = fresh_name()
    ca = Catalogue(a, CatalogueStore(store_url, name), poll_s=0.05)
    cb = Catalogue(b, CatalogueStore(store_url, name), poll_s=0.05)
    cb.start()
    try:
        item = f"new-{name}"
        info = ca.add(item, "A heist comedy set in 1920s Chicago", title="The Sting II")
        assert info["added"] and info["available"]
        # poll_s plus embedding one text on a low-priority thread: 2 s failed once on this 2-core machine at
        # load 4 (full test suite beside two benchmark runs), so the bound leaves room for a loaded CI host
        deadline = time.monotonic() + 10.0
        while not b.has(item):
            assert time.monotonic() < deadline, "replica b did not see the new item within 10 s"
            time.sleep(0.02)
        pool = [item, "1", "2", "3"]
        assert top_ids(a, ["1", item], candidates=pool) == top_ids(b, ["1", item], candidates=pool)
        assert b.item(item)["title"] == "The Sting II"
        with pytest.raises(DuplicateItemError):
            cb.add(item, "same id through the other replica")
        with pytest.raises(DuplicateItemError):
            ca.add("1", "a bundle item")
        cb.remove("2")
        ca.sync()
        assert not a.item("2")["available"] and "2" not in top_ids(a, ["1", item], k=2000)
        assert top_ids(a, ["2", "1"], k=3)  # still accepted in histories
        with pytest.raises(UnknownItemError):
            ca.remove("never-existed")
    finally:
        cb.stop()
    # a restart: a fresh recommender replays adds and removals onto the bundle's items
    fresh = Recommender.from_bundle(qwen_bundle, "torch", check_table=False)
    try:
        Catalogue(fresh, CatalogueStore(store_url, name), poll_s=0)
        assert fresh.has(item) and not fresh.item("2")["available"] and fresh.item(item)["added"]
        vectors = [rec.engine.query_vectors([[rec._row["1"], rec._row[item]]]) for rec in (fresh, a)]
        np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-5, atol=1e-5)  # the replayed item has the same tokens
    finally:
        fresh.close()
        a._unavailable.clear()
        b._unavailable.clear()


def test_text_is_embedded_outside_the_readers_lock(replicas, tmp_path):
    """A slow text encoder must not hold up recommendations (it did: 472 -> 85 req/s with one admin client)."""
    a, _ = replicas
    catalogue = Catalogue(a, CatalogueStore(f"sqlite:///{tmp_path / 'c.db'}", "lock"), poll_s=0)
    a.embed_texts(["warm up the encoder"])
    encoder = a._encoder()
    real = encoder.encode_batch
    started = threading.Event()

    niceness = {}

    def slow(texts):
        niceness["encoder"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        started.set()
        time.sleep(1.0)
        return real(texts)

    encoder.encode_batch = slow
    try:
        adder = threading.Thread(target=catalogue.add, args=(f"slow-{time.time_ns()}", "slowly embedded"))
        adder.start()
        assert started.wait(5)
        begin = time.perf_counter()
        top_ids(a, ["1", "2"])
        waited = time.perf_counter() - begin
        adder.join()
    finally:
        encoder.encode_batch = real
    assert waited < 0.5, f"a recommendation waited {waited:.2f} s for an item's text to be embedded"
    # and on a busy CPU the encoding thread yields to the serving threads (Linux per-thread nice)
    assert niceness["encoder"] == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10) or os.getpriority(os.PRIO_PROCESS, 0) == 19


def test_a_moved_bundle_finds_its_text_encoder_by_fingerprint_and_never_shows_server_paths(qwen_bundle, serving_root, tmp_path):
    from recsys.bundle import manifest_checksum
    from recsys.serving.service import Recommender, TextEncoderUnavailableError

    moved = shutil.copytree(qwen_bundle, tmp_path / "moved")
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["text_encoder"]["path"] = "/srv/train-env/encoders/bert"  # the training machine's path
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    (moved / "manifest.json").write_text(json.dumps(manifest))
    lost = Recommender.from_bundle(moved, "torch", check_table=False)
    try:
        with pytest.raises(TextEncoderUnavailableError, match="--text-encoder") as caught:
            lost.add_item("m1", "text")
        assert "/srv" not in str(caught.value) and str(serving_root) not in str(caught.value)
    finally:
        lost.close()
    wrong = tmp_path / "other-encoder"
    shutil.copytree(serving_root / "bert", wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))  # another model
    found = Recommender.from_bundle(moved, "torch", check_table=False, text_encoder_dir=wrong)
    try:
        with pytest.raises(TextEncoderUnavailableError, match="--text-encoder: fingerprint"):
            found.add_item("m1", "text")
        found.text_encoder_dir = serving_root / "bert"  # the right one, wherever it lives
        assert found.add_item("m1", "a film")["added"]
    finally:
        found.close()
