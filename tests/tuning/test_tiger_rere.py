"""ReRe tuning of TIGER: sequence log-probabilities equal to the beam search's scores, train-only prefixes, a tiny
tuning run that raises a weak model's train-set group reward, the KL to the reference, validation-only selection."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.models.tiger import Tiger, TigerConfig
from recsys.pipelines.prepared import PreparedDataset
from recsys.training.tiger import load_tiger, save_tiger
from recsys.tuning.rere import ReReConfig
from recsys.tuning.tiger_rere import TuningPrefixes, mean_group_reward, rere_step_loss, tune_tiger, tune_tiger_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
from evaluation_data import write_prepared  # noqa: E402

SMALL = dict(d_model=16, num_heads=2, d_ff=32, num_layers=1, num_decoder_layers=1, dropout=0.0)
NUM_ITEMS = 12
CODES = torch.tensor([[i // 4, i % 4] for i in range(NUM_ITEMS)])
RERE = ReReConfig(group_size=4, batch_size=64, windows="all", lr=1e-2, kl_weight=0.01, max_epochs=4, eval_every=4,
                  patience=20, seed=0)


def weak_model(seed: int = 0) -> Tiger:
    """An untrained tiny TIGER over 12 items (2-digit codes): its groups rarely rank the next item first."""
    torch.manual_seed(seed)
    return Tiger(CODES, TigerConfig(beam_size=10, max_history=3, eval_batch_size=64, **SMALL)).eval()


def walks(num_users: int = 40, length: int = 8) -> list[list[int]]:
    """Users walk the catalogue in order (item i then i+1): a pattern the tuning can reward."""
    return [[(user % NUM_ITEMS + step) % NUM_ITEMS for step in range(length)] for user in range(num_users)]


def walk_dataset(root: Path, test_shift: int = 0) -> PreparedDataset:
    """Leave-one-out walks (6 train, 1 valid, 1 test items); ``test_shift`` moves every test item (a corrupt test split)."""
    sequences = walks()
    for seq in sequences:
        seq[-1] = (seq[-1] + test_shift) % NUM_ITEMS
    return PreparedDataset.load(write_prepared(root, sequences, NUM_ITEMS))


@pytest.fixture(scope="module")
def tuned_walks(tmp_path_factory):
    data = walk_dataset(tmp_path_factory.mktemp("walks"))
    start = weak_model()
    model = copy.deepcopy(start)
    return data, start, tune_tiger_model(model, data, RERE)


def test_sequence_log_probs_equal_beam_search_scores_and_have_gradients():
    model = weak_model(seed=3)
    histories = [[1, 2, 3], [4], [0, 5, 6, 7, 8]]
    for exclude in (None, [[2], [], [5, 8]]):
        items, scores = model.beam_search(histories, beam_size=6, exclude=exclude)
        log_probs = model.sequence_log_probs(histories, items)
        assert torch.allclose(log_probs, scores, atol=1e-5)
    # a beam wider than the reachable items pads with -1, which gets -inf; a full-width beam is the exact ranking
    wide, _ = model.beam_search(histories, beam_size=14)
    assert torch.isinf(model.sequence_log_probs(histories, wide)[:, 12:]).all()
    assert torch.allclose(model.sequence_log_probs(histories, wide[:, :12]), model.sequence_scores(histories).gather(1, wide[:, :12]), atol=1e-5)
    # every item's log-probability under the trie sums to one over the catalogue
    everything = torch.arange(NUM_ITEMS).expand(3, -1)
    assert torch.allclose(model.sequence_log_probs(histories, everything).exp().sum(dim=1), torch.ones(3), atol=1e-5)
    log_probs = model.sequence_log_probs(histories, items)
    log_probs.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_prefixes_come_from_train_with_history_exclusions():
    sequences = [[0, 1, 2, 3], [5, 6], [7]]
    last = TuningPrefixes(sequences, max_history=2, windows="last")
    assert len(last) == 2  # users with at least two train items; each user's last target
    histories, targets, exclude = last(np.arange(2))
    assert targets.tolist() == [3, 6]
    assert histories.tolist() == [[1, 2], [-1, 5]]
    assert exclude == [[0, 1, 2], [5]]  # the whole prefix history, not only the items the model reads
    all_prefixes = TuningPrefixes(sequences, max_history=2, windows="all", exclude_history=False)
    assert len(all_prefixes) == 3 + 1
    _, targets, exclude = all_prefixes(np.arange(4))
    assert sorted(targets.tolist()) == [1, 2, 3, 6] and exclude is None
    # a target the user saw before stays allowed in its group (the harness never excludes gold items)
    _, _, exclude = TuningPrefixes([[4, 5, 4]], 5, "last")([0])
    assert exclude == [[5]]


def test_kl_is_zero_against_itself_and_positive_after_tuning(tuned_walks):
    data, start, tuned = tuned_walks
    prefixes = TuningPrefixes(data.train_sequences(), start.config.max_history, "last")
    histories, targets, exclude = prefixes(np.arange(len(prefixes)))
    policy = copy.deepcopy(start)
    at_start = rere_step_loss(policy, copy.deepcopy(start).requires_grad_(False), histories, targets, exclude, RERE)
    assert abs(float(at_start["kl"])) < 1e-6  # policy == reference (up to kernel rounding)
    at_start["loss"].backward()  # the surrogate still carries a gradient at step 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    after = rere_step_loss(tuned.model, start, histories, targets, exclude, RERE)
    assert float(after["kl"]) > 1e-4
    assert all(row["train/kl"] > 0 for row in tuned.history[1:])


def test_tuning_raises_a_weak_models_train_group_reward(tuned_walks):
    data, start, tuned = tuned_walks
    prefixes = TuningPrefixes(data.train_sequences(), start.config.max_history, "all")
    before, after = mean_group_reward(start, prefixes, RERE), mean_group_reward(tuned.model, prefixes, RERE)
    assert tuned.best_step > 0 and tuned.steps >= tuned.best_step
    assert after > before + 0.05, (before, after, tuned.history)
    assert tuned.valid_metrics["ndcg@10"] > tuned.start_valid_metrics["ndcg@10"]
    assert tuned.valid_metrics["ndcg@10"] == pytest.approx(max(row["valid/ndcg@10"] for row in tuned.history))
    assert tuned.prefixes == 40 * 5 and tuned.test_metrics


def test_test_split_never_influences_the_kept_step(tuned_walks, tmp_path):
    data, start, tuned = tuned_walks
    corrupt = walk_dataset(tmp_path / "corrupt", test_shift=5)
    assert data.eval_examples("valid").gold == corrupt.eval_examples("valid").gold
    assert data.eval_examples("test").gold != corrupt.eval_examples("test").gold
    again = tune_tiger_model(copy.deepcopy(start), corrupt, RERE)
    assert again.best_step == tuned.best_step and again.history == tuned.history
    assert again.test_metrics != tuned.test_metrics
    for name, value in tuned.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name


def test_unimprovable_validation_keeps_the_start(tmp_path):
    """Valid gold = every item outside the history: with history excluded, any model's NDCG@10 is 1, so no step wins."""
    sequences, splits = [], []
    for seq in walks(num_users=24, length=6):
        rest = [item for item in range(NUM_ITEMS) if item not in seq]
        sequences.append(seq + rest + [seq[0]])
        splits.append(["train"] * len(seq) + ["valid"] * len(rest) + ["test"])
    data_dir = write_prepared(tmp_path / "data", sequences, NUM_ITEMS, splits)
    start = weak_model(seed=1)
    save_tiger(start, tmp_path / "tiger", extra={"dataset": PreparedDataset.load(data_dir).fingerprint})
    config = ReReConfig(group_size=4, batch_size=32, windows="all", lr=1e-2, max_epochs=2, eval_every=2, patience=2)
    result = tune_tiger(tmp_path / "tiger", data_dir, config, tmp_path / "out")
    assert result.start_valid_metrics["ndcg@10"] == pytest.approx(1.0)
    assert result.steps > 0 and result.best_step == 0 and len(result.history) > 1
    tuned = load_tiger(result.bundle_dir)
    for name, value in start.state_dict().items():
        assert torch.equal(value, tuned.state_dict()[name]), name
    written = json.loads((tmp_path / "out" / "result.json").read_text())
    assert written["best_step"] == 0 and written["bundle_dir"] == str(tmp_path / "out" / "model")
    # a model trained on another dataset is refused
    save_tiger(start, tmp_path / "other", extra={"dataset": "another"})
    with pytest.raises(Exception, match="trained on dataset"):
        tune_tiger(tmp_path / "other", data_dir, config, tmp_path / "out2")
