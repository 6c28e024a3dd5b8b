"""Job options for the semantic autoencoder: pre-training on train items' texts, and freezing it.

They apply where an autoencoder makes the semantic tokens (``model.semantic_tokens: autoencoder`` or
``residual``); the default text projection has none, and the job refuses pre-training for it.
"""

from __future__ import annotations

import pytest
import torch

from recsys.errors import ConfigError
from recsys.training.job import build_model, prepare_autoencoder
from recsys.training.setrec_config import config_from_dict

from training_jobs import job_values


def _setup(artifacts, tmp_path, **top):
    from recsys.pipelines.prepared import PreparedDataset

    values = job_values(artifacts, tmp_path / "job", "t5", **top)
    values["model"]["semantic_tokens"] = "autoencoder"
    cfg = config_from_dict(values)
    model, _ = build_model(cfg)
    return cfg, model, PreparedDataset.load(cfg.data)


def test_pretraining_lowers_the_reconstruction_error_of_train_items_and_freezing_stops_gradients(industrial_artifacts, tmp_path):
    from recsys.tokenizers.semantic import reconstruction_mse

    cfg, model, data = _setup(industrial_artifacts, tmp_path, autoencoder_pretrain_epochs=20, freeze_autoencoder=True)
    encoder = model.item_encoder
    train_texts = encoder.text_embeddings[torch.from_numpy(data.train_item_mask())]
    assert 0 < train_texts.shape[0] < data.num_items  # the slice has items without a train interaction
    before = reconstruction_mse(encoder.autoencoder, train_texts)
    mses = prepare_autoencoder(model, data, cfg)
    assert mses["autoencoder/initial_mse"] == pytest.approx(before)
    assert mses["autoencoder/final_mse"] < 0.5 * before
    assert encoder.autoencoder.training == model.training  # the mode it had before pre-training
    assert mses["autoencoder/final_mse"] == pytest.approx(reconstruction_mse(encoder.autoencoder, train_texts))

    frozen = {name: p.detach().clone() for name, p in encoder.autoencoder.named_parameters()}
    histories = torch.tensor([[-1, 3, 5], [1, 2, 4]])
    model.loss(histories, torch.tensor([7, 9]), alpha=1.0)["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in encoder.autoencoder.parameters())
    assert any(p.grad is not None for p in encoder.cf_projection.parameters())  # the rest still learns
    for name, p in encoder.autoencoder.named_parameters():
        torch.testing.assert_close(p, frozen[name], rtol=0, atol=0)


def test_defaults_leave_the_autoencoder_untouched_and_trainable(industrial_artifacts, tmp_path):
    cfg, model, data = _setup(industrial_artifacts, tmp_path)
    before = {name: p.detach().clone() for name, p in model.item_encoder.autoencoder.named_parameters()}
    assert prepare_autoencoder(model, data, cfg) == {}
    for name, p in model.item_encoder.autoencoder.named_parameters():
        assert p.requires_grad and torch.equal(p, before[name])


def test_pretraining_needs_semantic_tokens(industrial_artifacts, tmp_path):
    values = job_values(industrial_artifacts, tmp_path / "job", "t5", autoencoder_pretrain_epochs=2)
    values["model"]["token_set"] = "cf"
    values["model"]["semantic_tokens"] = "autoencoder"
    cfg = config_from_dict(values)
    model, _ = build_model(cfg)
    from recsys.pipelines.prepared import PreparedDataset

    with pytest.raises(ConfigError, match="token_set is 'cf'"):
        prepare_autoencoder(model, PreparedDataset.load(cfg.data), cfg)


def test_the_default_text_projection_has_no_autoencoder_to_pretrain(industrial_artifacts, tmp_path):
    values = job_values(industrial_artifacts, tmp_path / "job", "t5", autoencoder_pretrain_epochs=2)
    with pytest.raises(ConfigError, match="needs an autoencoder"):
        config_from_dict(values)
    cfg = config_from_dict(job_values(industrial_artifacts, tmp_path / "job", "t5"))
    model, _ = build_model(cfg)
    assert cfg.model.semantic_tokens == "projection"
    assert not any(p.requires_grad for p in model.item_encoder.autoencoder.parameters())  # unused, frozen
    assert model.item_encoder.log_text_gain.requires_grad  # the gain still learns
