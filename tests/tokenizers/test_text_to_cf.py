"""CF embeddings predicted from text for items without a train interaction (issue 13, ARCHITECTURE.md 3.1).

The map is fitted on warm items only (no valid or test interaction enters it), the CF artifact
records predicted rows and the map, the item encoder keeps predicted rows and predicts items added
later, and artifacts, tables and states from before the change still load.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from recsys.errors import ArtifactError
from recsys.models.sasrec import SASRecConfig
from recsys.pipelines.prepared import PreparedDataset
from recsys.tokenizers.cf import EMBEDDINGS_FILE, import_cf_embeddings, load_cf_artifact, load_cf_embeddings
from recsys.models.item_tokens import ItemTokenEncoder
from recsys.tokenizers.identifiers import ItemTokenTable, build_item_encoder
from recsys.tokenizers.text_to_cf import fit_text_to_cf
from tests.tokenizers.conftest import write_prepared_dataset

TEXTS = tuple(f"{kind} {size} model {n}" for n, (kind, size) in enumerate(
    [(k, s) for k in ("drill", "glove", "caliper", "staple", "brush") for s in ("small", "large", "medium")]))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic(n=200, dz=16, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(n, dz, generator=g)
    true_w, true_b = torch.randn(dz, k, generator=g), torch.randn(k, generator=g)
    cf = text @ true_w + true_b + 0.05 * torch.randn(n, k, generator=g)
    return text, cf


def test_ridge_recovers_a_linear_map_from_warm_rows():
    text, cf = synthetic()
    warm = torch.arange(200) < 150
    mapping = fit_text_to_cf(text, cf, warm)
    assert mapping.stats["cv_r2"] > 0.99 and mapping.stats["warm_items"] == 150
    held = mapping.predict(text[~warm])
    assert torch.nn.functional.cosine_similarity(held, cf[~warm], dim=1).mean() > 0.99


def test_rows_outside_warm_never_enter_the_fit():
    text, cf = synthetic()
    warm = torch.arange(200) < 150
    changed_cf, changed_text = cf.clone(), text.clone()
    changed_cf[~warm] = torch.randn(50, cf.shape[1]) * 100
    a, b = fit_text_to_cf(text, cf, warm), fit_text_to_cf(text, changed_cf, warm)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    changed_text[~warm] = 0.0
    assert torch.equal(fit_text_to_cf(changed_text, cf, warm).weight, a.weight)
    with pytest.raises(ArtifactError, match="warm"):
        fit_text_to_cf(text, cf, torch.zeros(200, dtype=torch.bool))


# --------------------------------------------------------------------------- artifacts on a prepared dataset


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_bert_dir):
    """A prepared dataset (some items never in train), its text embeddings and an imported CF artifact."""
    from recsys.tokenizers.semantic import SemanticConfig, build_text_embeddings
    from recsys.tokenizers.text_encoder import TextEncoderConfig

    root = tmp_path_factory.mktemp("text-to-cf")
    data_dir = write_prepared_dataset(root / "data", TEXTS, num_users=30)
    data = PreparedDataset.load(data_dir)
    semantic = root / "semantic"
    build_text_embeddings(data_dir, semantic, SemanticConfig(encoder=TextEncoderConfig(path=str(tiny_bert_dir), max_length=32),
                                                             progress=False, use_cache=False))
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(data.num_items, 8)).astype(np.float32)
    vectors[~data.train_item_mask()] = 0.0
    np.save(root / "cf.npy", vectors)
    cf_dir = import_cf_embeddings(root / "cf.npy", data_dir, root / "cf")
    return data_dir, semantic, cf_dir


def rewrite_eval_interactions(src, dst, seed: int):
    """A copy of prepared dataset ``src`` whose valid and test interactions point at other items (train rows unchanged)."""
    import hashlib
    import shutil

    shutil.copytree(src, dst)
    frame = pl.read_parquet(dst / "interactions.parquet")
    rng = np.random.default_rng(seed)
    num_items = pl.read_parquet(dst / "items.parquet").height
    evaluated = (frame["split"] != "train").to_numpy()
    items = frame["item_idx"].to_numpy().copy()
    items[evaluated] = rng.integers(0, num_items, int(evaluated.sum()))
    frame.with_columns(pl.Series("item_idx", items, dtype=pl.Int32)).write_parquet(dst / "interactions.parquet")
    digest = hashlib.sha256()
    for name in ("interactions.parquet", "items.parquet", "users.parquet"):
        digest.update((dst / name).read_bytes())
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["fingerprint"] = digest.hexdigest()[:16]
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_no_valid_or_test_interaction_enters_the_map(artifacts, tmp_path):
    """Changing every valid/test interaction leaves the map and every predicted row bit-identical."""
    data_dir, semantic, cf_dir = artifacts
    base, _ = build_item_encoder(data_dir, cf_dir, semantic, 2, 8)
    other_dir = rewrite_eval_interactions(data_dir, tmp_path / "other", seed=1)
    assert not pl.read_parquet(other_dir / "interactions.parquet").equals(pl.read_parquet(data_dir / "interactions.parquet"))
    other, _ = build_item_encoder(other_dir, cf_dir, semantic, 2, 8)
    for name in ("text_to_cf_weight", "text_to_cf_bias", "cf_embeddings", "cf_predicted"):
        assert torch.equal(getattr(base, name), getattr(other, name)), name
    # the check has teeth: the rewritten valid/test rows reach the item never in train, and a map
    # that also read the items of valid/test interactions would differ
    other_data = PreparedDataset.load(other_dir)
    touched = torch.zeros(other_data.num_items, dtype=torch.bool)
    touched[torch.as_tensor(other_data.interactions["item_idx"].to_numpy().astype(np.int64))] = True
    assert bool((touched & ~base.has_cf).any())
    leaky = fit_text_to_cf(base.text_embeddings, base.cf_embeddings, touched)
    assert not torch.equal(leaky.weight, base.text_to_cf_weight)


def test_encoder_keeps_predicted_rows_and_predicts_added_items(artifacts):
    data_dir, semantic, cf_dir = artifacts
    data = PreparedDataset.load(data_dir)
    cold = ~torch.from_numpy(data.train_item_mask())
    assert cold.any()
    encoder, _ = build_item_encoder(data_dir, cf_dir, semantic, 2, 8)
    assert torch.equal(encoder.cf_predicted, cold) and bool(encoder.has_text_to_cf)
    assert (encoder.cf_embeddings[cold].abs().sum(1) > 0).all()  # never the zero vector
    expected = encoder.predict_cf(encoder.text_embeddings[cold])
    torch.testing.assert_close(encoder.cf_embeddings[cold], expected)
    # cold items no longer share one CF token (the bias)
    cf_tokens = encoder(torch.nonzero(cold).flatten())[:, 0]
    assert cold.sum() < 2 or not torch.allclose(cf_tokens[0], cf_tokens[1])

    zero, _ = build_item_encoder(data_dir, cf_dir, semantic, 2, 8, cold_cf="zero")
    assert not zero.cf_predicted.any() and zero.cf_embeddings[cold].abs().sum() == 0 and not bool(zero.has_text_to_cf)

    text = encoder.text_embeddings[:2] + 0.01
    new = encoder.add_items(text)
    assert encoder.cf_predicted[new].all() and not encoder.has_cf[new].any()
    torch.testing.assert_close(encoder.cf_embeddings[new], encoder.predict_cf(text))
    new_zero = zero.add_items(text)
    assert zero.cf_embeddings[new_zero].abs().sum() == 0 and not zero.cf_predicted[new_zero].any()


def test_the_map_travels_in_the_state_and_old_states_load(artifacts, tmp_path):
    data_dir, semantic, cf_dir = artifacts
    encoder, items = build_item_encoder(data_dir, cf_dir, semantic, 2, 8)
    clone = ItemTokenEncoder.from_state_dict(encoder.state_dict(), 2, 8, "projection")
    text = torch.randn(1, encoder.text_embeddings.shape[1])
    torch.testing.assert_close(clone.predict_cf(text), encoder.predict_cf(text))
    torch.testing.assert_close(clone.table(), encoder.table())

    old_state = {k: v for k, v in encoder.state_dict().items() if k not in ItemTokenEncoder.OPTIONAL_STATE}
    old = ItemTokenEncoder.from_state_dict(old_state, 2, 8, "projection")
    assert not old.cf_predicted.any() and not bool(old.has_text_to_cf)
    assert old.add_items(text).tolist() == [encoder.num_items] and old.cf_embeddings[-1].abs().sum() == 0

    table = ItemTokenTable.from_encoder(encoder, items["item_id"].to_list())
    assert table.items["cf_predicted"].to_list() == encoder.cf_predicted.tolist()
    table.save(tmp_path / "table")
    loaded = ItemTokenTable.load(tmp_path / "table")
    assert loaded.items["cf_predicted"].to_list() == encoder.cf_predicted.tolist()
    loaded.add_items(["NEW"], text)
    assert loaded.items["cf_predicted"][-1] and loaded.encoder.cf_predicted[-1]


def test_old_cf_artifact_without_predicted_loads(artifacts, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from recsys.tokenizers.artifact_io import sha256_file

    _, _, cf_dir = artifacts
    old = tmp_path / "old-cf"
    shutil.copytree(cf_dir, old)
    tensors = load_file(str(old / EMBEDDINGS_FILE))
    save_file({"embeddings": tensors["embeddings"], "has_cf": tensors["has_cf"]}, str(old / EMBEDDINGS_FILE))
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["files"][EMBEDDINGS_FILE]["sha256"] = sha256_file(old / EMBEDDINGS_FILE)
    (old / "manifest.json").write_text(json.dumps(manifest))
    artifact = load_cf_artifact(old)
    assert not artifact.predicted.any() and artifact.text_to_cf is None
    embeddings, has_cf = load_cf_embeddings(old)
    assert torch.equal(has_cf, artifact.has_cf)


@pytest.mark.slow
def test_cli_trains_rlmrec_cf_with_predicted_rows(artifacts, tmp_path, capsys):
    """``recsys tokenize cf --align con --semantic S``: trains, predicts every cold row, stores the map."""
    from recsys.cli import main

    data_dir, semantic, _ = artifacts
    out = tmp_path / "cf-con"
    code = main(["tokenize", "cf", "--data", str(data_dir), "--out", str(out), "--semantic", str(semantic), "--align", "con",
                 "--epochs", "2", "--patience", "1", "--dim", "8", "--layers", "1", "--heads", "1", "--max-len", "6",
                 "--window-batch-size", "4", "--accelerator", "cpu", "--threads", "1", "--no-mlflow"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "predicted from text" in printed and "text->CF map" in printed
    artifact = load_cf_artifact(out)
    data = PreparedDataset.load(data_dir)
    cold = ~torch.from_numpy(data.train_item_mask())
    assert torch.equal(artifact.predicted, cold) and torch.equal(artifact.has_cf, ~cold)
    assert (artifact.embeddings[cold].abs().sum(1) > 0).all()
    torch.testing.assert_close(artifact.embeddings[cold], artifact.text_to_cf.predict(
        __import__("recsys.tokenizers.semantic", fromlist=["x"]).load_text_embeddings(semantic, data.num_items)[cold]))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["align"] == "con" and manifest["counts"]["predicted"] == int(cold.sum())
    zeroed, _ = load_cf_embeddings(out)
    assert zeroed[cold].abs().sum() == 0
    # align needs the text embeddings; none does not
    assert main(["tokenize", "cf", "--data", str(data_dir), "--out", str(tmp_path / "x"), "--align", "gen", "--no-mlflow"]) == 2
    cfg = SASRecConfig(hidden_size=8, num_layers=1, num_heads=1, inner_size=16, max_len=6, max_epochs=1, patience=1,
                       window_batch_size=4, accelerator="cpu")
    from recsys.tokenizers.cf import train_cf_embeddings

    plain = train_cf_embeddings(data_dir, tmp_path / "plain", cfg, log_to_mlflow=False)
    assert not load_cf_artifact(plain).predicted.any()
