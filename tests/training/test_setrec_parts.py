"""Parts of the training job: sampler order, seen-item masking, schedule, beta-grid metrics vs the evaluation harness."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.evaluation.metrics import exclude_items, mean_metrics, pad_gold, per_user_metrics, set_ranks_reference
from recsys.models.setrec import SetRecConfig, SetRecModel, pad_histories
from recsys.models.item_tokens import ItemTokenEncoder
from recsys.training.setrec_data import EpochSampler, EvalSets
from recsys.training.setrec_module import GridMetrics, mask_seen, warmup_cosine
from recsys.pipelines.prepared import EvalExamples


def test_epoch_sampler_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(2)
    list(b)  # consuming epoch 0 first changes nothing
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(EpochSampler(50, seed=4)) != list(EpochSampler(50, seed=3))


def test_mask_seen_hides_history_but_keeps_gold():
    scores = torch.arange(12, dtype=torch.float32).view(2, 6)
    seen = torch.tensor([[0, 2, 5], [-1, -1, 1]])
    gold = torch.tensor([[5, -1], [3, 4]])
    out = mask_seen(scores.clone(), seen, gold)
    reference = exclude_items(scores.clone(), [[0, 2, 5], [1]], keep=gold)
    torch.testing.assert_close(out, reference)
    assert out[0, 5] == 5 and math.isinf(out[0, 0]) and out[1, 0] == 6  # padding hides nothing


def test_warmup_then_cosine():
    values = [warmup_cosine(step, 4, 20, 0.1) for step in range(25)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(x >= y for x, y in zip(values[4:20], values[5:21]))
    assert values[20] == pytest.approx(0.1) and values[24] == pytest.approx(0.1)


def _tiny_model(num_items=25, token_set="all"):
    torch.manual_seed(0)
    encoder = ItemTokenEncoder(torch.randn(num_items, 6), torch.ones(num_items, dtype=torch.bool), torch.randn(num_items, 10), 2, 32)
    return SetRecModel(SetRecConfig(backbone="qwen", preset="tiny", num_semantic_tokens=2, token_set=token_set), encoder).eval()


@pytest.mark.parametrize("exclude", [True, False])
def test_grid_metrics_equal_a_per_user_reference(exclude):
    """Batched beta-grid metrics equal score_all + the plain per-user reference ranking of recsys.evaluation."""
    model = _tiny_model()
    generator = torch.Generator().manual_seed(1)
    histories = [torch.randint(0, 25, (n,), generator=generator).tolist() for n in (3, 1, 6, 4, 2)]
    gold = [[4], [7, 8], [1], [histories[3][0]], [20, 21, 22]]  # a gold item that is also in the history
    examples = EvalExamples(list(range(5)), histories, gold)
    batch = EvalSets(examples, max_len=4)(list(range(5)))
    betas = [0.0, 0.3, 1.0]
    grid = GridMetrics(betas)
    grid.update(model, batch, exclude_history=exclude)
    for beta, means in zip(betas, grid.means()):
        scores = model.score_all(pad_histories(histories, 4), beta)
        padded = pad_gold(gold)
        if exclude:
            exclude_items(scores, histories, keep=padded)
        ranks = set_ranks_reference(scores, padded)
        expected, _ = mean_metrics(per_user_metrics(ranks, padded >= 0))
        assert means == pytest.approx(expected, abs=1e-9)
    best_beta, best = grid.best()
    assert best["ndcg@10"] == max(m["ndcg@10"] for m in grid.means()) and best_beta in betas
