"""Leakage checks on the real sample builders: no valid or test item is ever trained on, and every
model choice (epoch, beta) is made on the valid split.

The dataset gives each user a valid item and a test item that occur nowhere else, so finding
one of them in a training batch, in the CF tokenizer's trained rows or in a model-selection
batch over the wrong split is leakage, whatever the model. Each check also counts what it saw,
so a spy that never fired cannot pass.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from evaluation_data import holdout_sequences, tiny_bert, write_prepared

from recsys.pipelines.prepared import PreparedDataset

NUM_USERS, POOL, TRAIN_LEN = 16, 10, 5
TRAIN_SAMPLES = NUM_USERS * (TRAIN_LEN - 1)  # every train position but each user's first is a target


def _items(*tensors: torch.Tensor) -> set[int]:
    return {int(i) for t in tensors for i in torch.as_tensor(t).flatten().tolist() if i >= 0}


def _targets(batches) -> int:
    """Scored targets in training batches (-1 marks an unscored position of a window)."""
    return sum(int((torch.as_tensor(t) >= 0).sum()) for t in batches)


@pytest.fixture(scope="module")
def holdout(tmp_path_factory):
    sequences, num_items, valid, test = holdout_sequences(NUM_USERS, POOL, TRAIN_LEN)
    root = write_prepared(tmp_path_factory.mktemp("holdout") / "data", sequences, num_items)
    return PreparedDataset.load(root), valid, test


def _tiny_sasrec(**extra):
    from recsys.models.sasrec import SASRecConfig

    values = dict(hidden_size=16, num_heads=1, inner_size=32, max_len=8, max_epochs=2, patience=2, batch_size=16, eval_batch_size=64)
    return SASRecConfig(**{**values, **extra})


def _spy(monkeypatch, owner, name: str, record: list):
    original = getattr(owner, name)

    def spy(self, *args, **kwargs):
        record.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, spy)


def test_sasrec_trains_on_train_prefixes_and_selects_on_valid(holdout, monkeypatch):
    from recsys.training import sasrec as job

    data, valid, test = holdout
    trained, validated = [], []
    _spy(monkeypatch, job.SASRecModule, "training_step", trained)
    _spy(monkeypatch, job.SASRecModule, "validation_step", validated)
    job.fit_sasrec(data, _tiny_sasrec(), log_to_mlflow=False)
    seen = _items(*(t for args in trained for t in args[0]))  # args[0] = (histories, targets)
    assert _targets(args[0][1] for args in trained) == 2 * TRAIN_SAMPLES  # two epochs of every train target
    assert seen and not seen & (valid | test)
    gold = _items(*(args[0][1] for args in validated))
    assert gold == valid  # early stopping looks at the valid gold items, never a test item


def test_tiger_trains_on_train_prefixes_and_selects_on_valid(holdout, monkeypatch):
    from recsys.models.tiger import TigerConfig
    from recsys.training import tiger as job

    data, valid, test = holdout
    codes = torch.tensor([[i // 6, i % 6] for i in range(data.num_items)])
    trained, selected = [], []
    _spy(monkeypatch, job.TigerModule, "training_step", trained)
    original = job.evaluate_tiger
    monkeypatch.setattr(job, "evaluate_tiger", lambda model, examples, *a, **k: (selected.append(examples), original(model, examples, *a, **k))[1])
    config = TigerConfig(d_model=16, num_heads=2, d_ff=32, num_layers=1, num_decoder_layers=1, max_epochs=1,
                         batch_size=16, beam_size=5, max_history=8)
    job.fit_tiger(data, codes, config, log_to_mlflow=False)
    histories, targets = zip(*(args[0] for args in trained))
    assert _targets(targets) == TRAIN_SAMPLES
    seen = _items(*histories, *targets)
    assert seen and not seen & (valid | test)
    assert selected and all({i for g in ex.gold for i in g} == valid for ex in selected)


def test_cf_tokenizer_trains_on_train_only_and_zeroes_unseen_rows(holdout, tmp_path, monkeypatch):
    from recsys.tokenizers.cf import load_cf_embeddings, train_cf_embeddings
    from recsys.training import sasrec as job

    data, valid, test = holdout
    trained = []
    _spy(monkeypatch, job.SASRecModule, "training_step", trained)
    train_cf_embeddings(data.root, tmp_path / "cf", _tiny_sasrec(max_epochs=1), log_to_mlflow=False)
    seen = _items(*(t for args in trained for t in args[0]))
    assert _targets(args[0][1] for args in trained) == TRAIN_SAMPLES
    assert seen and not seen & (valid | test)
    embeddings, has_cf = load_cf_embeddings(tmp_path / "cf")
    held_out = sorted(valid | test)
    assert not has_cf[held_out].any() and has_cf[: POOL].all()
    assert torch.count_nonzero(embeddings[held_out]) == 0


def test_setrec_trains_on_train_only_and_picks_beta_on_valid(holdout, tmp_path, monkeypatch):
    from recsys.bundle import load_bundle
    from recsys.tokenizers.cf import train_cf_embeddings
    from recsys.tokenizers.semantic import SemanticConfig, build_text_embeddings
    from recsys.tokenizers.text_encoder import TextEncoderConfig
    from recsys.training import setrec_module
    from recsys.training.job import load_train_config, train

    data, valid, test = holdout
    train_cf_embeddings(data.root, tmp_path / "cf", _tiny_sasrec(max_epochs=1), log_to_mlflow=False)
    encoder = TextEncoderConfig(path=str(tiny_bert(tmp_path / "bert")))
    build_text_embeddings(data.root, tmp_path / "semantic", SemanticConfig(encoder=encoder, cache_dir=str(tmp_path / "cache"), progress=False))
    values = {
        "data": str(data.root), "cf": str(tmp_path / "cf"), "semantic": str(tmp_path / "semantic"),
        "model": {"backbone": "t5", "preset": "tiny", "num_semantic_tokens": 2, "num_prompt_tokens": 1, "num_response_tokens": 1},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "patience": 2, "progress_bar": False},
        "tracking": {"enabled": False},
        "beta_grid": [0.0, 0.5, 1.0], "max_len": 8, "batch_size": 16, "eval_batch_size": 64, "out_dir": str(tmp_path / "run"),
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(values))
    trained, graded = [], []
    _spy(monkeypatch, setrec_module.SetRecModule, "training_step", trained)
    original = setrec_module.GridMetrics.update

    def spy_update(self, model, batch, exclude_history):
        graded.append((tuple(self.betas), _items(batch["gold"])))
        return original(self, model, batch, exclude_history)

    monkeypatch.setattr(setrec_module.GridMetrics, "update", spy_update)
    result = train(load_train_config(tmp_path / "job.yaml"))
    histories, targets = zip(*(args[0] for args in trained))
    assert _targets(targets) == 2 * TRAIN_SAMPLES
    seen = _items(*histories, *targets)
    assert seen and not seen & (valid | test)
    choosing = [gold for betas, gold in graded if len(betas) > 1]  # every beta-grid evaluation
    assert choosing and set().union(*choosing) == valid
    testing = [(betas, gold) for betas, gold in graded if gold & test]
    assert testing and all(betas == (result.best_beta,) for betas, _ in testing)
    assert load_bundle(result.bundle_dir).bundle.beta == result.best_beta
