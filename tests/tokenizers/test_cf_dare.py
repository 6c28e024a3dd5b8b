"""CF embeddings of a SASRec with decoupled embeddings (DARE): the artifact also holds the attention table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recsys.errors import ArtifactError
from recsys.pipelines.prepared import PreparedDataset
from recsys.tokenizers.cf import EMBEDDINGS_FILE, import_cf_embeddings, load_cf_artifact, load_cf_embeddings, write_cf_embeddings


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a busy 2-core machine two threads spin-wait on each other (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY_FLAGS = ["--dim", "8", "--layers", "1", "--heads", "1", "--max-len", "6", "--epochs", "1", "--patience", "1",
              "--window-batch-size", "4", "--accelerator", "cpu", "--set", "inner_size=16", "--no-mlflow"]


def test_decoupled_cf_artifact_holds_the_attention_table(prepared_dir, tmp_path, capsys):
    from recsys.cli import main
    from recsys.training.sasrec import load_sasrec

    out = tmp_path / "cf"
    argv = ["tokenize", "cf", "--data", str(prepared_dir), "--out", str(out), *TINY_FLAGS]
    assert main([*argv, "--embeddings", "decoupled", "--attention-size", "4"]) == 0
    assert "attention embeddings (8, 4)" in capsys.readouterr().out
    data = PreparedDataset.load(prepared_dir)
    artifact = load_cf_artifact(out)
    assert artifact.embeddings.shape == (data.num_items, 8)  # the CF embedding stays the representation table
    assert artifact.attention is not None and artifact.attention.shape == (data.num_items, 4)
    assert artifact.attention.dtype == torch.float32
    has_cf = artifact.has_cf
    assert not has_cf[-1] and torch.all(artifact.attention[~has_cf] == 0)
    model, config = load_sasrec(out / "sasrec")
    assert config.embeddings == "decoupled" and config.attention_size == 4
    assert torch.equal(artifact.attention[has_cf], model.attention_embeddings()[has_cf])
    assert torch.equal(artifact.embeddings[has_cf], model.item_embeddings()[has_cf])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["attention_shape"] == [data.num_items, 4] and manifest["config"]["embeddings"] == "decoupled"
    # the older interface still returns the representation table only
    embeddings, _ = load_cf_embeddings(out)
    assert embeddings.shape == (data.num_items, 8)
    # an attention table the manifest does not describe is refused (the checksum covers the whole file)
    manifest["attention_shape"] = [data.num_items, 5]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="attention shape"):
        load_cf_artifact(out)
    # shared embeddings: no attention table; attention_size alone is refused, naming the key
    assert main([*argv, "--out", str(tmp_path / "shared")]) == 0
    assert load_cf_artifact(tmp_path / "shared").attention is None
    assert "attention_embeddings" not in json.loads((tmp_path / "shared" / "manifest.json").read_text())
    assert main([*argv, "--out", str(tmp_path / "bad"), "--attention-size", "4"]) == 2
    assert "attention_size" in capsys.readouterr().err


def test_attention_rows_follow_the_unseen_rule_and_imports_have_none(prepared_dir, tmp_path):
    data = PreparedDataset.load(prepared_dir)
    has_cf = torch.from_numpy(data.train_item_mask())
    attention = torch.randn(data.num_items, 3)
    out = write_cf_embeddings(tmp_path / "cf", torch.randn(data.num_items, 6), has_cf, data, {"source": "test"}, attention=attention)
    artifact = load_cf_artifact(out)
    assert torch.equal(artifact.attention[has_cf], attention[has_cf]) and torch.all(artifact.attention[~has_cf] == 0)
    with pytest.raises(ArtifactError, match="attention embeddings"):
        write_cf_embeddings(tmp_path / "bad", torch.randn(data.num_items, 6), has_cf, data, {"source": "test"},
                            attention=torch.randn(data.num_items - 1, 3))
    np.save(tmp_path / "emb.npy", np.ones((data.num_items, 3), dtype=np.float32))
    assert load_cf_artifact(import_cf_embeddings(tmp_path / "emb.npy", prepared_dir, tmp_path / "imported")).attention is None
    # re-importing a decoupled artifact's file takes its 'embeddings' tensor
    again = import_cf_embeddings(out / EMBEDDINGS_FILE, prepared_dir, tmp_path / "again")
    assert load_cf_artifact(again).embeddings.shape == (data.num_items, 6)
