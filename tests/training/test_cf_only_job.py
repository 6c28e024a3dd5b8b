"""The CF-only set-identifier model (``model.token_set: cf``) on interaction-only data (issue 14, item 6).

An interaction-only source (user_id,item_id,timestamp; no item file, so no item text) goes through
the commands a user runs: ``recsys data prepare``, ``recsys tokenize cf``, ``recsys train`` with
``model.token_set: cf`` (one epoch, tiny T5) and ``recsys evaluate``. No text artifact exists at any
point. The full token set on the same data is refused by name before any training.
"""

from __future__ import annotations

import json
import random

import pytest
import yaml

from recsys.cli import main

pytestmark = pytest.mark.slow

TRAIN_FLAGS = ["--model.backbone", "t5", "--model.preset", "tiny", "--model.num_semantic_tokens", "2",
               "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.progress_bar", "false",
               "--tracking.enabled", "false", "--max_len", "6", "--batch_size", "64", "--beta_grid", "[0.0, 0.5]"]


@pytest.fixture(scope="module")
def interaction_only(tmp_path_factory):
    """A prepared interaction-only dataset and its CF embeddings, made through the CLI."""
    root = tmp_path_factory.mktemp("cf-only")
    source = root / "source"
    source.mkdir()
    rng = random.Random(0)
    rows = ["user_id,item_id,timestamp"]
    for user in range(60):
        time = 1_600_000_000
        for step in range(rng.randint(5, 9)):
            time += rng.randint(1, 3600)
            rows.append(f"u{user},i{(user * 3 + step * 7) % 40},{time}")
    (source / "interactions.csv").write_text("\n".join(rows) + "\n")
    assert main(["data", "prepare", "--source", str(source), "--out", str(root / "data"), "--kcore", "0"]) == 0
    assert main(["tokenize", "cf", "--data", str(root / "data"), "--out", str(root / "cf"), "--dim", "16", "--layers", "1",
                 "--heads", "1", "--max-len", "6", "--epochs", "1", "--no-mlflow"]) == 0
    return root


def test_cf_only_model_trains_evaluates_and_ranks_without_text(interaction_only, capsys):
    import polars as pl

    root = interaction_only
    assert (pl.read_parquet(root / "data" / "items.parquet")["text"].fill_null("") == "").all()  # no item text at all
    out = root / "run"
    code = main(["train", "--data", str(root / "data"), "--cf", str(root / "cf"), "--semantic", str(root / "no-semantic"),
                 "--model.token_set", "cf", "--out_dir", str(out), *TRAIN_FLAGS])
    assert code == 0, capsys.readouterr().err
    assert "no item text" in capsys.readouterr().out  # the cold-item rule it falls back to is said
    result = json.loads((out / "result.json").read_text())
    assert 0.0 <= result["test_metrics"]["ndcg@10"] <= 1.0 and result["epochs_run"] >= 0
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["model_config"]["token_set"] == "cf" and manifest["text_encoder"] == {}
    assert manifest["shapes"]["tokens_per_item"] == 1
    assert yaml.safe_load((out / "bundle" / "config.yaml").read_text())["cold_cf"] == "zero"  # what the job did
    assert not (root / "no-semantic").exists()

    assert main(["evaluate", "--bundle", str(out / "bundle"), "--data", str(root / "data"), "--out", str(root / "eval")]) == 0
    summary = json.loads((root / "eval" / "summary.json").read_text())
    assert summary["dataset_check"]["same"] and summary["users"] == 60
    # recsys evaluate ranks the whole catalogue as the job's test did, so the two agree
    assert summary["summary"]["all"]["ndcg@10"] == pytest.approx(result["test_metrics"]["ndcg@10"], abs=1e-6)

    from recsys.bundle import load_bundle
    from recsys.models.setrec import pad_histories

    model = load_bundle(out / "bundle")
    scores = model.score_all(pad_histories([[0, 1, 2], [5]], model.bundle.max_len), model.bundle.beta)
    assert scores.shape == (2, 40) and bool(scores.isfinite().all())
    assert scores.argsort(dim=1, descending=True).shape == (2, 40)  # a full ranking of the catalogue


def test_a_token_set_that_needs_text_is_refused_by_name(interaction_only, capsys):
    root = interaction_only
    code = main(["train", "--data", str(root / "data"), "--cf", str(root / "cf"), "--semantic", str(root / "no-semantic"),
                 "--model.token_set", "all", "--out_dir", str(root / "refused"), *TRAIN_FLAGS])
    err = capsys.readouterr().err
    assert code == 2
    assert "items.parquet" in err and "`text` column" in err and "model.token_set: cf" in err
    assert not (root / "refused").exists()  # refused before any training
