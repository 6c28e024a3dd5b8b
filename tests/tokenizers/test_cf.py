"""CF embeddings: training writes the artifact with the unseen-item rule, imports round-trip, bad imports fail clearly."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from recsys.errors import ArtifactError, ConfigError, DataFormatError, UnknownItemError
from recsys.models.sasrec import SASRecConfig
from recsys.pipelines.prepared import PreparedDataset
from recsys.tokenizers.cf import (
    EMBEDDINGS_FILE,
    import_cf_embeddings,
    load_cf_embeddings,
)

@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a busy 2-core machine two threads spin-wait on each other (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = dict(hidden_size=8, num_layers=1, num_heads=1, inner_size=16, max_len=6, max_epochs=2, patience=1, window_batch_size=4, accelerator="cpu")


@pytest.fixture(scope="module")
def trained_cf(tmp_path_factory):
    """A tiny dataset (its last item never in train) and CF embeddings trained on it, with MLflow logging."""
    import os

    from tests.tokenizers.conftest import write_prepared_dataset
    from recsys.tokenizers.cf import train_cf_embeddings

    root = tmp_path_factory.mktemp("cf")
    data_dir = write_prepared_dataset(root / "data", num_users=16)
    store = root / "mlruns.db"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before the per-test thread fixture
    try:
        out = train_cf_embeddings(data_dir, root / "cf", SASRecConfig(**TINY), log_to_mlflow=True)
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return data_dir, out, store


def test_training_writes_embeddings_with_the_unseen_rule(trained_cf):
    data_dir, out, _ = trained_cf
    data = PreparedDataset.load(data_dir)
    embeddings, has_cf = load_cf_embeddings(out)
    assert embeddings.shape == (data.num_items, TINY["hidden_size"]) and embeddings.dtype == torch.float32
    assert has_cf.dtype == torch.bool
    expected = torch.from_numpy(data.train_item_mask())
    assert torch.equal(has_cf, expected)
    assert not has_cf[-1]  # the fixture's last item never occurs in train
    assert torch.all(embeddings[~has_cf] == 0)
    assert torch.all(embeddings[has_cf].norm(dim=1) > 0)
    # the trained rows are the saved SASRec's embedding rows
    from recsys.training.sasrec import load_sasrec

    model, _ = load_sasrec(out / "sasrec")
    assert torch.allclose(embeddings[has_cf], model.item_embeddings()[has_cf])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "sasrec"
    assert manifest["dataset"]["fingerprint"] == data.fingerprint
    assert manifest["config"]["hidden_size"] == TINY["hidden_size"]
    assert {"ndcg@10", "recall@10"} <= set(manifest["metrics"]["test"])
    assert manifest["counts"]["no_cf"] == int((~expected).sum())


def test_training_is_logged_to_mlflow(trained_cf):
    from mlflow.tracking import MlflowClient

    _, out, store = trained_cf
    run_id = json.loads((out / "manifest.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    run = client.get_run(run_id)
    assert run.data.params["hidden_size"] == str(TINY["hidden_size"])
    assert "valid/ndcg10" in run.data.metrics and "test/ndcg10" in run.data.metrics  # MLflow drops the "@"
    assert run.data.metrics["cf/items_without_cf"] >= 1
    names = {f.path for f in client.list_artifacts(run_id, "cf")}
    assert f"cf/{EMBEDDINGS_FILE}" in names
    assert client.get_experiment(run.info.experiment_id).name == "tokenizers"


def test_load_detects_a_changed_file(trained_cf, tmp_path):
    import shutil

    _, out, _ = trained_cf
    copy = tmp_path / "cf"
    shutil.copytree(out, copy)
    blob = bytearray((copy / EMBEDDINGS_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (copy / EMBEDDINGS_FILE).write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="corrupt"):
        load_cf_embeddings(copy)


def _catalogue(data_dir):
    data = PreparedDataset.load(data_dir)
    return data, data.items["item_id"].to_list()


@pytest.mark.parametrize("fmt", ["npy", "safetensors", "parquet"])
def test_import_round_trip(prepared_dir, tmp_path, fmt):
    data, ids = _catalogue(prepared_dir)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(data.num_items, 5)).astype(np.float32)
    vectors[2] = 0.0  # an item without a vector
    path = tmp_path / f"emb.{fmt}"
    if fmt == "npy":
        np.save(path, vectors)
    elif fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file({"embeddings": vectors}, str(path))
    else:
        order = rng.permutation(data.num_items)  # rows in any order, matched by item_id
        keep = [i for i in order if i != 2]  # item 2 absent from the file
        pl.DataFrame({"item_id": [ids[i] for i in keep], "vector": [vectors[i].tolist() for i in keep]}).write_parquet(path)
    out = import_cf_embeddings(path, prepared_dir, tmp_path / "cf")
    embeddings, has_cf = load_cf_embeddings(out)
    assert np.allclose(embeddings.numpy(), vectors)
    assert has_cf.tolist() == [i != 2 for i in range(data.num_items)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "import" and manifest["counts"]["zero_or_missing_rows"] == 1
    # export -> import again gives the same artifact contents
    again = import_cf_embeddings(out / EMBEDDINGS_FILE, prepared_dir, tmp_path / "cf2")
    embeddings2, has_cf2 = load_cf_embeddings(again)
    assert torch.equal(embeddings, embeddings2) and torch.equal(has_cf, has_cf2)


def test_import_wrong_shape(prepared_dir, tmp_path):
    data, _ = _catalogue(prepared_dir)
    np.save(tmp_path / "short.npy", np.ones((data.num_items - 1, 4), dtype=np.float32))
    with pytest.raises(DataFormatError, match=rf"has {data.num_items - 1} rows but the catalogue .* has {data.num_items} items"):
        import_cf_embeddings(tmp_path / "short.npy", prepared_dir, tmp_path / "cf")
    np.save(tmp_path / "flat.npy", np.ones(data.num_items, dtype=np.float32))
    with pytest.raises(DataFormatError, match="must be 2-D"):
        import_cf_embeddings(tmp_path / "flat.npy", prepared_dir, tmp_path / "cf")
    bad = np.ones((data.num_items, 3), dtype=np.float32)
    bad[4, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataFormatError, match=r"item_idx \[4\]"):
        import_cf_embeddings(tmp_path / "nan.npy", prepared_dir, tmp_path / "cf")
    assert not (tmp_path / "cf").exists()  # nothing half-written


def test_import_unknown_and_duplicate_ids(prepared_dir, tmp_path):
    _, ids = _catalogue(prepared_dir)
    path = tmp_path / "emb.parquet"
    pl.DataFrame({"item_id": [ids[0], "NOPE-1"], "vector": [[1.0, 2.0], [3.0, 4.0]]}).write_parquet(path)
    with pytest.raises(UnknownItemError, match="NOPE-1"):
        import_cf_embeddings(path, prepared_dir, tmp_path / "cf")
    pl.DataFrame({"item_id": [ids[0], ids[0]], "vector": [[1.0, 2.0], [3.0, 4.0]]}).write_parquet(path)
    with pytest.raises(DataFormatError, match="duplicate item_id"):
        import_cf_embeddings(path, prepared_dir, tmp_path / "cf")
    pl.DataFrame({"item_id": [ids[0], ids[1]], "vector": [[1.0, 2.0], [3.0]]}).write_parquet(path)
    with pytest.raises(DataFormatError, match="row 2 has 1 values"):
        import_cf_embeddings(path, prepared_dir, tmp_path / "cf")
    pl.DataFrame({"item_id": [ids[0]], "score": [1.0]}).write_parquet(path)
    with pytest.raises(DataFormatError, match="which column holds the vectors"):
        import_cf_embeddings(path, prepared_dir, tmp_path / "cf")


def test_import_refuses_pickles_and_other_folders(prepared_dir, tmp_path):
    data, _ = _catalogue(prepared_dir)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * data.num_items, dtype=object))
    with pytest.raises(DataFormatError, match="allow_pickle"):
        import_cf_embeddings(tmp_path / "obj.npy", prepared_dir, tmp_path / "cf")
    (tmp_path / "emb.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="pickles are refused"):
        import_cf_embeddings(tmp_path / "emb.pt", prepared_dir, tmp_path / "cf")
    np.save(tmp_path / "ok.npy", np.ones((data.num_items, 2), dtype=np.float32))
    with pytest.raises(ArtifactError, match="another artifact"):
        import_cf_embeddings(tmp_path / "ok.npy", prepared_dir, prepared_dir)  # a prepared dataset folder
    with pytest.raises(ArtifactError, match="does not hold CF embeddings"):
        load_cf_embeddings(prepared_dir)


def test_cli_cf_import(prepared_dir, tmp_path, capsys):
    from recsys.cli import main

    data, _ = _catalogue(prepared_dir)
    np.save(tmp_path / "emb.npy", np.ones((data.num_items, 3), dtype=np.float32))
    assert main(["tokenize", "cf", "--data", str(prepared_dir), "--out", str(tmp_path / "cf"), "--import", str(tmp_path / "emb.npy")]) == 0
    assert f"({data.num_items}, 3)" in capsys.readouterr().out
    assert load_cf_embeddings(tmp_path / "cf")[0].shape == (data.num_items, 3)
    assert main(["tokenize", "cf", "--data", str(prepared_dir), "--out", str(tmp_path / "cf"), "--import", str(tmp_path / "emb.npy"), "--dim", "8"]) == 2
