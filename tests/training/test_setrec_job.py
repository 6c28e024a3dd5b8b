"""End-to-end training jobs on a real slice of amazon-industrial: both backbones, bundle, MLflow, registry."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from recsys.bundle import load_bundle
from recsys.models.setrec import pad_histories
from recsys.training.job import train
from recsys.training.setrec_config import config_from_dict

from training_jobs import job_values

pytestmark = pytest.mark.slow


def _scores(model, histories):
    return model.score_all(pad_histories(histories, model.bundle.max_len), model.bundle.beta)


def test_train_writes_a_tracked_bundle_and_registers_it(industrial_artifacts, tmp_path, backbone="t5"):
    """T5 here; the Qwen backbone trains end to end in test_resume_and_ddp.py (bundle loaded there too)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from recsys.cli import main
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.training.registry import resolve_model_uri

    cfg = config_from_dict(job_values(industrial_artifacts, tmp_path / "job", backbone))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg)
    # one MLflow name per metric (recsys.tracking.metric_name): Lightning's logger never has to rename one
    assert [str(w.message) for w in caught if "MLFlow only allows" in str(w.message)] == []

    assert result.best_beta in cfg.beta_grid
    for metrics in (result.valid_metrics, result.test_metrics):
        assert 0.0 <= metrics["ndcg@10"] <= metrics["recall@10"] <= 1.0
    saved = json.loads((tmp_path / "job" / "result.json").read_text())
    assert saved["best_beta"] == result.best_beta and saved["run_id"] == result.run_id

    model = load_bundle(result.bundle_dir)
    assert model.bundle.beta == result.best_beta and model.bundle.max_len == cfg.max_len
    data = PreparedDataset.load(cfg.data)
    assert model.bundle.manifest["dataset_fingerprint"] == data.fingerprint
    assert model.bundle.manifest["metrics"]["valid/ndcg@10"] == pytest.approx(result.valid_metrics["ndcg@10"])
    assert model.bundle.config["model"]["backbone"] == backbone

    client = MlflowClient(mlflow.get_tracking_uri())
    run = client.get_run(result.run_id)
    assert run.data.params["model.backbone"] == backbone and run.data.params["optim.alpha"] == "0.1"
    assert run.data.tags["dataset"] == data.fingerprint and run.data.tags["git_commit"]
    epochs = client.get_metric_history(result.run_id, "valid/ndcg10")
    assert len(epochs) == cfg.trainer.max_epochs  # one value per epoch
    assert client.get_run(result.run_id).data.metrics["test/ndcg10"] == pytest.approx(result.test_metrics["ndcg@10"])
    assert {f.path for f in client.list_artifacts(result.run_id, "bundle")} >= {"bundle/manifest.json", "bundle/model.safetensors"}

    assert main(["register", "--run", result.run_id, "--name", "setrec", "--alias", "champion"]) == 0
    registered = load_bundle(resolve_model_uri("models:/setrec@champion", tmp_path / "download"))
    histories = PreparedDataset.load(cfg.data).eval_examples("test").histories[:16]
    torch.testing.assert_close(_scores(registered, histories), _scores(model, histories), rtol=0, atol=0)
