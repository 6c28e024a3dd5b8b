"""Metrics against hand-computed values: ties, |gold| > K, empty gold sets, ranked lists."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys.evaluation.bootstrap import bootstrap_ci, paired_bootstrap
from recsys.evaluation.metrics import (
    exclude_items,
    gold_ranks,
    list_ranks,
    loo_metrics,
    mean_metrics,
    pad_gold,
    per_user_metrics,
    set_ranks,
    set_ranks_reference,
)

LOG2_3 = math.log2(3)


def test_ties_count_against_the_gold_item():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.3]])
    # items scoring >= 0.3: 0.9, 0.3 (item 2), 0.3 (item 3) -> rank 3 for either tied item
    assert gold_ranks(scores, torch.tensor([2])).tolist() == [3]
    assert set_ranks(scores, torch.tensor([[2, 3]])).tolist() == [[3.0, 3.0]]
    m = per_user_metrics(set_ranks(scores, torch.tensor([[2]])), torch.tensor([[True]]), ks=(2, 5))
    assert m["hr@2"].item() == 0.0
    assert m["ndcg@5"].item() == pytest.approx(1 / math.log2(4))
    assert m["mrr@5"].item() == pytest.approx(1 / 3)
    # a constant scorer earns nothing
    const = torch.zeros(1, 50)
    assert per_user_metrics(set_ranks(const, torch.tensor([[7]])), torch.tensor([[True]]), ks=(20,))["recall@20"].item() == 0.0


def test_gold_set_larger_than_k():
    # ranking by score: items 0, 1, 2, 3, 4; gold {0, 2, 3} at ranks 1, 3, 4
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    gold = pad_gold([[0, 2, 3]])
    m = per_user_metrics(set_ranks(scores, gold), gold >= 0, ks=(2, 5))
    assert m["recall@2"].item() == pytest.approx(1 / 3)
    assert m["hr@2"].item() == 1.0
    assert m["mrr@2"].item() == 1.0
    # ideal DCG over min(|gold|, 2) = 2 positions
    assert m["ndcg@2"].item() == pytest.approx(1.0 / (1.0 + 1 / LOG2_3))
    dcg5 = 1.0 + 1 / math.log2(4) + 1 / math.log2(5)
    idcg5 = 1.0 + 1 / LOG2_3 + 1 / math.log2(4)
    assert m["ndcg@5"].item() == pytest.approx(dcg5 / idcg5)
    assert m["recall@5"].item() == 1.0


def test_perfect_set_ranking_has_ndcg_one_and_loo_agrees():
    scores = torch.tensor([[0.0, 3.0, 2.0, 1.0]])
    gold = pad_gold([[2, 1]])
    m = per_user_metrics(set_ranks(scores, gold), gold >= 0, ks=(2,))
    assert m["ndcg@2"].item() == pytest.approx(1.0)
    # one gold item per user: the set metrics equal the leave-one-out ones
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (30, 12), generator=gen).float()
    gold1 = torch.randint(0, 12, (30,), generator=gen)
    loo = loo_metrics(gold_ranks(scores, gold1), ks=(1, 3, 10))
    means, skipped = mean_metrics(per_user_metrics(set_ranks(scores, gold1.view(-1, 1)), torch.ones(30, 1, dtype=torch.bool), ks=(1, 3, 10)))
    assert skipped == 0
    for key, value in loo.items():
        assert means[key] == pytest.approx(value)


def test_empty_gold_sets_are_skipped_and_counted():
    scores = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    gold = pad_gold([[1], [], [0]])
    m = per_user_metrics(set_ranks(scores, gold), gold >= 0, ks=(1,))
    assert math.isnan(m["recall@1"][1].item())
    means, skipped = mean_metrics(m)
    assert skipped == 1
    assert means["recall@1"] == pytest.approx(0.5)  # (0 + 1) / 2, not / 3
    all_empty, skipped = mean_metrics(per_user_metrics(set_ranks(scores[:1], pad_gold([[]])), pad_gold([[]]) >= 0, ks=(1,)))
    assert skipped == 1 and math.isnan(all_empty["ndcg@1"])


def test_fast_ranks_equal_reference_with_ties_and_padding():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (20, 15), generator=gen).float()
    scores[0, 3] = -math.inf
    gold = pad_gold([sorted(torch.randperm(15, generator=gen)[: int(n)].tolist()) for n in torch.randint(0, 5, (20,), generator=gen)])
    gold[0, 0] = 3
    assert torch.equal(set_ranks(scores, gold), set_ranks_reference(scores, gold))


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        set_ranks(torch.tensor([[0.0, math.nan]]), torch.tensor([[0]]))


@pytest.mark.parametrize("gold_row", [[math.nan] * 4, [0.1, math.nan, 0.3, 0.2], [0.1, 0.2, 0.3, math.nan]])
def test_nan_scores_never_rank_gold_first_in_gold_ranks(gold_row):
    # A diverged SASRec scored every item NaN: gold_ranks gave rank 0, so recall@5 was 1.0 and NDCG@5 inf.
    from recsys.evaluation.metrics import DivergedScoresError

    scores = torch.tensor([[0.9, 0.1, 0.5, 0.2], gold_row])
    with pytest.raises(DivergedScoresError, match="diverged") as error:
        gold_ranks(scores, torch.tensor([0, 1]))
    assert "1 of 2 rows" in str(error.value)
    assert isinstance(error.value, ValueError)  # callers catching ValueError (as for set_ranks) still do
    # -inf (excluded items) and +inf are numbers: ranked, not refused
    assert gold_ranks(torch.tensor([[math.inf, 0.0, -math.inf]]), torch.tensor([1])).tolist() == [2]


def test_list_ranks_of_beam_output():
    ranked = torch.tensor([[4, 2, 7, -1], [1, 0, 3, 5]])
    gold = pad_gold([[7, 9], [5]])
    ranks = list_ranks(ranked, gold)
    assert ranks.tolist() == [[3.0, math.inf], [4.0, math.inf]]
    m = per_user_metrics(ranks, gold >= 0, ks=(3,))
    assert m["recall@3"].tolist() == [0.5, 0.0]
    assert m["ndcg@3"][0].item() == pytest.approx((1 / 2) / (1 + 1 / LOG2_3))


def test_exclude_items_keeps_gold_sets():
    scores = torch.arange(12, dtype=torch.float32).view(2, 6)
    exclude_items(scores, [[0, 1, 2], [5]], keep=pad_gold([[1, 2], []]))
    assert scores[0].tolist()[:3] == [-math.inf, 1.0, 2.0]
    assert scores[1, 5].item() == -math.inf
    single = torch.ones(1, 4)
    exclude_items(single, [[0, 2]], keep=torch.tensor([2]))
    assert single.tolist() == [[-math.inf, 1.0, 1.0, 1.0]]


def test_bootstrap_intervals():
    values = np.array([0.0, 1.0] * 200)
    lo, hi = bootstrap_ci(values, seed=3)
    assert lo < 0.5 < hi and hi - lo < 0.2
    same = paired_bootstrap(values, values)
    assert same["diff"] == 0.0 and same["ci"] == [0.0, 0.0]
    better = paired_bootstrap(values + 0.1, values)
    assert better["diff"] == pytest.approx(0.1) and better["ci"][0] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        paired_bootstrap(values, values[:-1])
    # users with NaN on either side are dropped from the pairing
    assert paired_bootstrap(np.array([1.0, np.nan]), np.array([0.0, 0.0]))["users"] == 1


def test_ranks_among_a_candidate_set():
    from recsys.evaluation.metrics import list_ranks_among, set_ranks_among

    scores = torch.tensor([[0.9, 0.1, 0.5, 0.7]])
    cold = torch.tensor([False, True, True, False])
    assert set_ranks_among(scores, torch.tensor([[1, 2, 0, -1]]), cold).tolist() == [[2.0, 1.0, math.inf, math.inf]]
    ranked = torch.tensor([[0, 3, 2, 1]])
    assert list_ranks_among(ranked, torch.tensor([[1, 2, 3]]), cold).tolist() == [[2.0, 1.0, math.inf]]
    assert list_ranks_among(ranked[:, :0], torch.tensor([[1]]), cold).tolist() == [[math.inf]]
