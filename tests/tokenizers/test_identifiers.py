"""Set-identifier table: built from the CF and text artifacts, identical texts give identical
semantic tokens, cold items added from text are in the table and scored, health report, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.errors import ArtifactError, ConfigError, DataFormatError, UnknownItemError
from recsys.pipelines.prepared import PreparedDataset
from recsys.tokenizers.cf import import_cf_embeddings
from recsys.tokenizers.identifiers import ItemTokenTable, TableConfig, add_items_from_text, build_item_table, health_report
from recsys.tokenizers.semantic import AutoencoderPretrainConfig, SemanticConfig, build_text_embeddings

N, D = 3, 8


@pytest.fixture
def artifacts(prepared_dir, tmp_path, cache_dir, fresh_minilm):
    """CF embeddings (imported; item 3 has none) and text embeddings of the tiny dataset."""
    data = PreparedDataset.load(prepared_dir)
    vectors = np.random.default_rng(0).normal(size=(data.num_items, 6)).astype(np.float32)
    vectors[3] = 0.0
    np.save(tmp_path / "cf.npy", vectors)
    cf = import_cf_embeddings(tmp_path / "cf.npy", prepared_dir, tmp_path / "cf")
    semantic, _ = build_text_embeddings(prepared_dir, tmp_path / "semantic", SemanticConfig(cache_dir=str(cache_dir), progress=False), encoder=fresh_minilm)
    return prepared_dir, cf, semantic


def test_table_shape_and_identical_texts(artifacts):
    data_dir, cf, semantic = artifacts
    table, metrics = build_item_table(data_dir, cf, semantic, TableConfig(num_semantic_tokens=N, token_dim=D), progress=False)
    num_items = PreparedDataset.load(data_dir).num_items
    assert table.tokens.shape == (num_items, N + 1, D) and metrics == {}
    # items 0 and 6 share their text: identical semantic tokens, different CF tokens
    torch.testing.assert_close(table.tokens[0, 1:], table.tokens[6, 1:])
    assert not torch.allclose(table.tokens[0, 0], table.tokens[6, 0])
    assert not torch.allclose(table.tokens[0, 1:], table.tokens[1, 1:])
    # item 3 has no CF embedding: its CF embedding is predicted from its text (issue 13), not the zero vector
    encoder = table.encoder
    predicted = encoder.predict_cf(encoder.text_embeddings[3:4])[0]
    assert predicted.abs().sum() > 0
    torch.testing.assert_close(table.tokens[3, 0], encoder.cf_projection(predicted).detach())
    assert table.items["has_cf"].to_list() == [i != 3 for i in range(num_items)]
    assert table.items["cf_predicted"].to_list() == [i == 3 for i in range(num_items)]


def test_new_item_from_text_is_in_the_table_and_scored(artifacts, tmp_path, fresh_minilm, cache_dir):
    data_dir, cf, semantic = artifacts
    table, _ = build_item_table(data_dir, cf, semantic, TableConfig(num_semantic_tokens=N, token_dim=D), progress=False)
    table.save(tmp_path / "table")
    loaded = ItemTokenTable.load(tmp_path / "table")
    before = loaded.num_items
    existing_text = PreparedDataset.load(data_dir).items["text"][1]
    new_idx = add_items_from_text(loaded, ["NEW-1", "NEW-2"], ["Brass padlock with two keys", existing_text], text_encoder=fresh_minilm)
    assert new_idx.tolist() == [before, before + 1]
    assert loaded.num_items == before + 2 and loaded.index_of(["NEW-1"]).tolist() == [before]
    assert loaded.items.filter(loaded.items["item_id"] == "NEW-1")["has_cf"].to_list() == [False]
    # a new item with the text of item 1 gets item 1's semantic tokens and a CF token predicted from that text
    torch.testing.assert_close(loaded.tokens[before + 1, 1:], loaded.tokens[1, 1:], atol=1e-5, rtol=1e-5)
    predicted = loaded.encoder.predict_cf(loaded.encoder.text_embeddings[1:2])
    torch.testing.assert_close(loaded.tokens[before + 1, 0], loaded.encoder.cf_projection(predicted)[0].detach(), atol=1e-5, rtol=1e-5)
    assert loaded.items["cf_predicted"].to_list()[-2:] == [True, True]
    # scored: every query gets a score for the new items, the inner product with their flattened tokens
    queries = torch.randn(4, (N + 1) * D)
    scores = loaded.scores(queries)
    assert scores.shape == (4, before + 2)
    torch.testing.assert_close(scores[:, before], queries @ loaded.tokens[before].flatten())
    # a query along the new item's unit vector ranks it first among unit-normalised items
    unit = torch.nn.functional.normalize(loaded.tokens.flatten(1), dim=1)
    assert int((unit @ unit[before]).argmax()) == before
    loaded.save(tmp_path / "table2")
    again = ItemTokenTable.load(tmp_path / "table2")
    torch.testing.assert_close(again.tokens, loaded.tokens)
    assert again.items["added"].to_list()[-2:] == [True, True]


def test_cold_start_errors(artifacts, fresh_minilm):
    data_dir, cf, semantic = artifacts
    table, _ = build_item_table(data_dir, cf, semantic, TableConfig(num_semantic_tokens=N, token_dim=D), progress=False)
    with pytest.raises(DataFormatError, match=r"row 1 \(id 'B'\)"):
        add_items_from_text(table, ["A", "B"], ["a hammer", "  "], text_encoder=fresh_minilm)
    with pytest.raises(ConfigError, match="already in the table"):
        add_items_from_text(table, ["I000"], ["a hammer"], text_encoder=fresh_minilm)
    with pytest.raises(UnknownItemError, match="NOPE"):
        table.index_of(["NOPE"])
    with pytest.raises(ConfigError, match="queries must be"):
        table.scores(torch.zeros(1, 3))


def test_mismatched_artifacts_are_refused(artifacts, make_prepared, tmp_path):
    data_dir, cf, semantic = artifacts
    other = make_prepared(texts=["one text", "two texts", "three texts"], name="other")
    with pytest.raises(ArtifactError, match="rows but the catalogue has 3 items|for 8 items"):
        build_item_table(other, cf, semantic, TableConfig(num_semantic_tokens=N, token_dim=D), progress=False)
    with pytest.raises(ArtifactError, match="does not hold CF embeddings"):
        build_item_table(data_dir, semantic, semantic, progress=False)


def test_health_report_and_pretraining(artifacts):
    data_dir, cf, semantic = artifacts
    config = TableConfig(num_semantic_tokens=N, token_dim=D, pretrain=AutoencoderPretrainConfig(epochs=5, batch_size=4))
    table, metrics = build_item_table(data_dir, cf, semantic, config, progress=False)
    assert metrics and all(np.isfinite(v) for v in metrics.values())
    report = health_report(table, threshold=0.99)
    assert report.num_items == table.num_items and report.tokens_per_item == N + 1
    assert report.items_without_cf == 1 and report.added_items == 0
    assert report.reconstruction_mse >= 0 and -1 <= report.mean_cosine <= report.max_cosine <= 1 + 1e-6
    assert report.pairs_checked == table.num_items * (table.num_items - 1) // 2
    assert "near-duplicate pairs" in report.as_table()


def test_table_commands_log_their_runs_through_tracking(artifacts, tmp_path):
    """`recsys tokenize ids|table|health|add-items` each log one run (experiment ``tokenizers``) through recsys.tracking."""
    from mlflow.tracking import MlflowClient

    from recsys import tracking
    from recsys.cli import main

    data_dir, cf, semantic = artifacts
    table_dir = tmp_path / "table"
    (tmp_path / "new.jsonl").write_text('{"item_id": "new-1", "text": "a cordless drill"}\n')
    assert main(["tokenize", "ids", "--data", str(data_dir), "--semantic", str(semantic), "--out", str(tmp_path / "ids"),
                 "--levels", "2", "--codes", "4"]) == 0
    assert main(["tokenize", "table", "--data", str(data_dir), "--cf", str(cf), "--semantic", str(semantic), "--out", str(table_dir),
                 "--num-tokens", str(N), "--token-dim", str(D), "--pretrain-epochs", "1"]) == 0
    assert main(["tokenize", "health", "--table", str(table_dir)]) == 0
    assert main(["tokenize", "add-items", "--table", str(table_dir), "--items", str(tmp_path / "new.jsonl"), "--no-cache"]) == 0
    client = MlflowClient(tracking.tracking_uri())
    runs = {r.info.run_name: r for r in client.search_runs([tracking.experiment_id("tokenizers")])}
    assert set(runs) >= {"semantic-ids", "item-table", "item-table-health", "add-items"}
    assert runs["item-table"].data.metrics["health_num_items"] == runs["item-table-health"].data.metrics["health_num_items"]
    assert "collision_rate" in runs["semantic-ids"].data.metrics and runs["add-items"].data.metrics["added_items"] == 1
    assert [f.path for f in client.list_artifacts(runs["item-table"].info.run_id)] == ["manifest.json"]
    assert all(r.data.tags["git_commit"] for r in runs.values())
