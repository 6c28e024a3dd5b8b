"""Model bundles: atomic save, checksums verified on load, same scores after a round trip."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from recsys.bundle import load_bundle, load_item_tokens, manifest_checksum, read_manifest, save_bundle
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
    edit_manifest(path, lambda m: m["files"].pop("model.safetensors"))
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


def edit_manifest(path, change, resign: bool = True) -> None:
    """Apply ``change`` to the bundle's manifest; ``resign`` recomputes its own checksum (a tool that knows the format)."""
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    if resign:
        manifest["manifest_sha256"] = manifest_checksum(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def rewrite_file(path, name: str, data: bytes) -> None:
    """Replace a bundle file and update its checksum in the manifest (a consistent but bad bundle)."""
    import hashlib

    (path / name).write_bytes(data)
    edit_manifest(path, lambda m: m["files"].__setitem__(name, hashlib.sha256(data).hexdigest()))


def refused(path, pattern: str) -> str:
    with pytest.raises(ArtifactError, match=pattern) as caught:
        load_bundle(path)
    message = str(caught.value)
    assert "\n" not in message and any(name in message for name in ("manifest.json", "config.yaml", "model.safetensors"))
    return message


def test_a_hand_edited_manifest_is_refused_by_its_own_checksum(tmp_path):
    path = save(make_model("qwen"), tmp_path / "b")
    assert read_manifest(path)["manifest_sha256"] == manifest_checksum(read_manifest(path))
    edit_manifest(path, lambda m: m.__setitem__("max_len", 50), resign=False)  # in range, but not what was trained
    refused(path, "does not match its manifest_sha256")
    edit_manifest(path, lambda m: m.pop("manifest_sha256"), resign=False)
    refused(path, "manifest_sha256 is missing")


@pytest.mark.parametrize(
    "change,pattern",
    [
        (lambda m: m.__setitem__("max_len", -5), "field max_len: Input should be greater than 0"),
        (lambda m: m.__setitem__("max_len", 0), "field max_len"),
        (lambda m: m.__setitem__("beta", 1.5), "field beta: Input should be less than or equal to 1"),
        (lambda m: m.__setitem__("beta", -0.1), "field beta"),
        (lambda m: m.__setitem__("beta", "0.25"), "field beta: Input should be a valid number"),
        (lambda m: m.__setitem__("beta", True), "field beta"),
        (lambda m: m.pop("shapes"), "field shapes: Field required"),
        (lambda m: m["shapes"].__setitem__("num_items", "12"), "field shapes.num_items"),
        (lambda m: m["shapes"].__setitem__("hidden_size", 0), "field shapes.hidden_size"),
        (lambda m: m.__setitem__("files", ["model.safetensors"]), "field files"),
    ],
)
def test_manifest_values_are_type_and_range_checked_before_anything_is_built(tmp_path, monkeypatch, change, pattern):
    path = save(make_model("qwen"), tmp_path / "b")
    edit_manifest(path, change)  # consistent checksum: only the values are wrong
    import recsys.models.setrec as setrec

    monkeypatch.setattr(setrec, "build_backbone", lambda *a, **k: pytest.fail("a backbone was built from a bad manifest"))
    refused(path, pattern)


def test_a_manifest_that_is_not_an_object_is_one_line(tmp_path):
    path = save(make_model("qwen"), tmp_path / "b")
    (path / "manifest.json").write_text(json.dumps([1, 2, 3]))
    refused(path, "holds a JSON list, not an object")
    (path / "manifest.json").write_text('{"kind": "setrec-bundle", ')
    refused(path, "is not valid JSON")


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("model: {backbone: qwen\n  bad: [", "not valid safe YAML"),
        ("!!python/object/apply:os.system ['echo pwned']\n", "not valid safe YAML"),
        ("- just\n- a list\n", "holds a YAML list, not a mapping"),
    ],
)
def test_a_bad_config_yaml_is_one_line(tmp_path, text, pattern):
    path = save(make_model("qwen"), tmp_path / "b")
    rewrite_file(path, "config.yaml", text.encode())
    refused(path, pattern)


def test_backbone_config_must_agree_with_the_backbone_before_weights_are_allocated(tmp_path, monkeypatch):
    import recsys.models.setrec as setrec

    qwen, sizes_lost, too_wide = (save(make_model("qwen"), tmp_path / name) for name in ("q", "q2", "q3"))
    t5 = read_manifest(save(make_model("t5"), tmp_path / "t"))
    real_init = setrec.SetRecModel.__init__
    monkeypatch.setattr(setrec.SetRecModel, "__init__", lambda *a, **k: pytest.fail("the model was built"))
    # backbone: qwen over a T5 backbone config (unchecked, this built a default 7B Qwen2 and was killed at ~20 GB)
    edit_manifest(qwen, lambda m: m.__setitem__("backbone_config", t5["backbone_config"]))
    refused(qwen, "backbone is 'qwen' but backbone_config.model_type is 't5'")
    # a Qwen2 config that lost its sizes: transformers' defaults would be a 7B model
    edit_manifest(sizes_lost, lambda m: m["backbone_config"].pop("intermediate_size"))
    refused(sizes_lost, r"does not fit the model manifest.json describes \(backbone.layers.0.mlp.down_proj.weight is \(\d+, \d+\) in the file but \(\d+, 22016\)")
    edit_manifest(sizes_lost, lambda m: m["backbone_config"].pop("num_hidden_layers"))
    refused(sizes_lost, "the backbone it describes cannot be built")
    edit_manifest(too_wide, lambda m: m["backbone_config"].__setitem__("hidden_size", 4096))
    refused(too_wide, "hidden size 4096 but shapes.hidden_size")
    monkeypatch.setattr(setrec.SetRecModel, "__init__", real_init)
    assert load_bundle(save(make_model("t5"), tmp_path / "ok")).config.backbone == "t5"


def test_schema_version_1_bundles_without_a_manifest_checksum_still_load(tmp_path):
    path = save(make_model("qwen"), tmp_path / "b")
    edit_manifest(path, lambda m: (m.pop("manifest_sha256"), m.__setitem__("schema_version", 1)), resign=False)
    assert load_bundle(path).bundle.max_len == 5
    edit_manifest(path, lambda m: m.__setitem__("max_len", -5), resign=False)
    refused(path, "field max_len")  # range checks hold for old bundles too


def test_bundle_saved_before_the_history_prior_loads_without_it(tmp_path):
    """Manifests written before ``model.history_prior`` existed lack the key: they ran the backbone alone."""
    model = make_model("qwen", history_prior="none")
    path = save(model, tmp_path / "old")
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["model_config"]["history_prior"]
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    manifest_path.write_text(json.dumps(manifest))
    loaded = load_bundle(path)
    assert loaded.config.history_prior == "none" and loaded.history_prior is None
    histories = pad_histories([[1, 2, 3], [4]], max_len=5)
    torch.testing.assert_close(loaded.score_all(histories, 0.25), model.score_all(histories, 0.25), atol=1e-4, rtol=1e-5)


def test_bundle_keeps_the_history_prior(tmp_path):
    model = make_model("t5")
    with torch.no_grad():
        model.history_prior.log_gain.add_(0.3)
        model.history_prior.raw_rate.fill_(0.2)
    loaded = load_bundle(save(model, tmp_path / "b"))
    assert loaded.config.history_prior == "recency"
    torch.testing.assert_close(loaded.history_prior.log_gain, model.history_prior.log_gain)
    histories = pad_histories([[1, 2, 3], [4]], max_len=5)
    torch.testing.assert_close(loaded.score_all(histories, 0.25), model.score_all(histories, 0.25), atol=1e-4, rtol=1e-5)
