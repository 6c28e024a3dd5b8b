"""Model bundles: atomic save, checksums verified on load, same scores after a round trip."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from recsys.bundle import load_bundle, load_item_tokens, read_manifest, save_bundle
from recsys.errors import ArtifactError
from recsys.models.setrec import LoraSettings, pad_histories
from tests.models.test_setrec import NUM_ITEMS, make_model


def items_frame() -> pl.DataFrame:
    return pl.DataFrame({"item_idx": list(range(NUM_ITEMS)), "item_id": [f"i{i}" for i in range(NUM_ITEMS)], "text": ["t"] * NUM_ITEMS})


def save(model, path):
    return save_bundle(
        model, path, beta=0.25, max_len=5, items=items_frame(), dataset_fingerprint="abc123",
        config={"model": model.config.to_dict(), "data": {"max_len": 5}}, metrics={"valid/ndcg@10": 0.5},
        text_encoder={"name": "all-MiniLM-L6-v2"},
    )


@pytest.mark.parametrize("backbone,extra", [("qwen", {}), ("t5", {}), ("qwen", {"lora": LoraSettings(rank=2)})])
def test_round_trip_gives_the_same_scores(tmp_path, backbone, extra):
    model = make_model(backbone, **extra)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    histories = pad_histories([[1, 2, 3], [4], [5, 6, 7, 8, 9, 10]], max_len=5)
    expected = model.score_all(histories, 0.25)
    path = save(model, tmp_path / "bundle")
    loaded = load_bundle(path)
    assert not loaded.training and loaded.bundle.beta == 0.25 and loaded.bundle.max_len == 5
    assert loaded.config.lora is None  # merged on export: plain backbone keys for serving
    torch.testing.assert_close(loaded.score_all(histories, loaded.bundle.beta), expected, atol=1e-4, rtol=1e-5)
    table = load_item_tokens(path)
    torch.testing.assert_close(table, model.item_table().detach(), atol=1e-6, rtol=0)
    manifest = read_manifest(path)
    assert manifest["dataset_fingerprint"] == "abc123" and manifest["text_encoder"]["name"] == "all-MiniLM-L6-v2"
    assert loaded.bundle.config["data"]["max_len"] == 5


def test_faiss_index_ranks_like_score_all(tmp_path):
    import faiss

    model = make_model("qwen")
    path = save(model, tmp_path / "b")
    loaded = load_bundle(path)
    histories = pad_histories([[1, 2, 3], [4]], max_len=5)
    queries = loaded.query_vectors(histories, loaded.bundle.beta).detach().numpy()
    scores, ids = faiss.read_index(str(loaded.bundle.index_path)).search(queries, 5)
    expected = loaded.score_all(histories, loaded.bundle.beta).topk(5)
    assert ids.tolist() == expected.indices.tolist()


def test_tampered_or_pickled_bundles_are_refused(tmp_path):
    path = save(make_model("qwen"), tmp_path / "b")
    with open(path / "item_tokens.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        load_bundle(path)
    path = save(make_model("qwen"), tmp_path / "b")  # overwrites atomically
    torch.save({"x": 1}, path / "extra.pt")
    with pytest.raises(ArtifactError, match="pickle"):
        load_bundle(path)
    (path / "extra.pt").unlink()
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"]["model.safetensors"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="model.safetensors"):
        load_bundle(path)
    with pytest.raises(ArtifactError, match="not a model bundle"):
        load_bundle(tmp_path)


def test_failed_save_leaves_the_previous_bundle(tmp_path):
    model = make_model("qwen")
    path = save(model, tmp_path / "b")
    before = read_manifest(path)
    with pytest.raises(ArtifactError, match="items has"):
        save_bundle(model, path, beta=0.1, max_len=5, items=items_frame().head(3), dataset_fingerprint="x", config={})
    assert read_manifest(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
