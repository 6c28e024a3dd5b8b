"""The training job with long-history selection (``history.selection: dare``, issue 17): the bundle
keeps the rule and the table, and its selector reproduces the job's test metrics."""

from __future__ import annotations

import pytest
import torch

from recsys.bundle import load_bundle
from recsys.models.history_selection import HistoryConfig
from recsys.training.job import history_selector, train
from recsys.training.setrec_config import config_from_dict

from training_jobs import job_values

pytestmark = pytest.mark.slow


def test_dare_job_trains_and_its_bundle_selects_as_the_job_evaluated(industrial_artifacts, tmp_path):
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.tokenizers.cf import load_cf_artifact
    from recsys.training.setrec_data import SelectedWindowBatches, SetRecDataModule
    from recsys.training.setrec_module import evaluate_beta_grid

    values = job_values(industrial_artifacts, tmp_path / "job", "qwen", tracking={"enabled": False})
    values["trainer"].update(max_epochs=1, limit_train_batches=3)
    cfg = config_from_dict(values, {"history.selection": "dare", "history.search_k": 2})
    selector = history_selector(cfg)
    artifact = load_cf_artifact(cfg.cf)
    assert getattr(artifact, "attention", None) is None and selector.source == "embeddings"  # SVD import: CF embeddings
    torch.testing.assert_close(selector.attention, artifact.embeddings)

    data = PreparedDataset.load(cfg.data)
    test = data.eval_examples("test")
    long = [h for h in test.histories if len(h) > cfg.max_len]
    assert long and any(selector([h])[0] != h[-cfg.max_len:] for h in long)  # the rule changes what is read

    result = train(cfg)
    model = load_bundle(result.bundle_dir)
    assert model.bundle.history == HistoryConfig("dare", 2) and model.bundle.attention_source == "embeddings"
    torch.testing.assert_close(model.bundle.attention, selector.attention, rtol=0, atol=0)
    from_bundle = model.bundle.history_selector()
    assert from_bundle(test.histories) == selector(test.histories)

    module = SetRecDataModule(data, cfg.max_len, cfg.batch_size, cfg.eval_batch_size, cfg.seed, selector=from_bundle)
    assert isinstance(module.train, SelectedWindowBatches)
    metrics = evaluate_beta_grid(model, module.test_dataloader(), [model.bundle.beta], cfg.exclude_history).means()[0]
    assert metrics["ndcg@10"] == pytest.approx(result.test_metrics["ndcg@10"], abs=1e-6)
