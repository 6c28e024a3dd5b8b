"""The harness against hand-computed values: groups, history exclusion, list vs score paths, per-user Parquet."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from recsys.evaluation.evaluate import evaluate
from recsys.evaluation.groups import ItemGroups, history_bucket
from recsys.evaluation.recommenders import RankingRecommender, ScoringRecommender
from recsys.pipelines.prepared import EvalExamples

# train counts [3, 2, 1, 1, 0, 0]: items 4 and 5 are cold; warm by (count, index): 2, 3 | 1 | 0
TRAIN_ITEMS = np.array([0, 0, 0, 1, 1, 2, 3])
SCORES = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
EXAMPLES = EvalExamples(
    user_idx=[10, 11, 12],
    histories=[[0], [1, 2], [0, 1, 2, 3, 0, 1]],
    gold=[[4], [1], [5, 2]],
)
KS = (1, 5)
EDGES = (1, 5)


def fixed_scorer() -> ScoringRecommender:
    return ScoringRecommender("fixed", lambda h: SCORES.expand(len(h), -1).clone(), num_items=6)


def test_groups_from_train_counts():
    groups = ItemGroups.from_train_items(TRAIN_ITEMS, num_items=6)
    masks = groups.item_masks()
    assert masks["cold"].tolist() == [False, False, False, False, True, True]
    assert groups.popularity_tercile.tolist() == [2, 1, 0, 0, -1, -1]
    assert (history_bucket(1, EDGES), history_bucket(2, EDGES), history_bucket(6, EDGES)) == ("hist_1-1", "hist_2-5", "hist_6+")


def test_evaluate_matches_hand_computed_values_per_group():
    groups = ItemGroups.from_train_items(TRAIN_ITEMS, num_items=6)
    result = evaluate(fixed_scorer(), EXAMPLES, groups, ks=KS, exclude_history=True, batch_size=2, history_edges=EDGES)
    # user 10: item 0 excluded -> gold 4 at rank 4; user 11: item 2 excluded, gold 1 (in history) kept -> rank 2;
    # user 12: items 0, 1, 3 excluded -> gold 2 rank 1, gold 5 rank 3
    ndcg5 = {10: 1 / math.log2(5), 11: 1 / math.log2(3), 12: (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))}
    assert result.metric("ndcg@5").tolist() == pytest.approx([ndcg5[10], ndcg5[11], ndcg5[12]])
    assert result.metric("recall@1").tolist() == [0.0, 0.0, 0.5]
    assert result.metric("mrr@5").tolist() == pytest.approx([1 / 4, 1 / 2, 1.0])
    assert result.summary["all"]["ndcg@5"] == pytest.approx(np.mean(list(ndcg5.values())))
    # cold gold: user 10 (item 4, rank 4), user 12 (item 5, rank 3, ideal DCG over one item); user 11 skipped
    assert result.counts["cold"] == {"users": 2, "skipped_empty_gold": 1}
    assert result.summary["cold"]["ndcg@5"] == pytest.approx((1 / math.log2(5) + 1 / math.log2(4)) / 2)
    assert result.summary["warm"]["recall@1"] == pytest.approx(0.5)  # user 11 rank 2, user 12 item 2 rank 1
    # popularity terciles: item 0 is the only "high" item and never a gold item
    assert result.counts["pop_high"] == {"users": 0, "skipped_empty_gold": 3}
    assert math.isnan(result.summary["pop_high"]["ndcg@5"])
    assert result.counts["pop_mid"]["users"] == 1 and result.summary["pop_mid"]["mrr@5"] == pytest.approx(0.5)
    assert result.summary["pop_low"]["hr@1"] == 1.0
    # history-length buckets hold users, not items
    assert {g: result.counts[g]["users"] for g in ("hist_1-1", "hist_2-5", "hist_6+")} == {"hist_1-1": 1, "hist_2-5": 1, "hist_6+": 1}
    assert result.summary["hist_6+"]["ndcg@5"] == pytest.approx(ndcg5[12])
    assert result.inference_seconds > 0 and result.num_users == 3


def test_cold_and_warm_gold_ranked_among_their_own_group_only():
    """The SETRec paper's protocol next to the full-catalogue one (issue 13): hand-computed ranks."""
    groups = ItemGroups.from_train_items(TRAIN_ITEMS, num_items=6)
    scorer = fixed_scorer()
    lists = RankingRecommender("lists", scorer.rank, num_items=6, max_k=6)
    for recommender in (scorer, lists):
        result = evaluate(recommender, EXAMPLES, groups, ks=KS, exclude_history=True, history_edges=EDGES)
        # cold items {4: 2.0, 5: 1.0}. user 10: gold 4 is 4th of all items, 1st of the cold ones;
        # user 12: gold 5 is 3rd of the non-excluded items, 2nd of the cold ones
        assert result.metric("recall@1", "cold").tolist()[::2] == [0.0, 0.0]
        assert result.metric("recall@1", "cold_only").tolist()[::2] == [1.0, 0.0]
        assert result.summary["cold_only"]["mrr@5"] == pytest.approx((1 + 1 / 2) / 2)
        assert result.counts["cold_only"] == result.counts["cold"]
        # warm items {0..3}: user 11 gold 1 behind item 0 (rank 2); user 12 gold 2, the others excluded (rank 1)
        assert result.metric("recall@1", "warm_only").tolist()[1:] == [0.0, 1.0]
        assert result.summary["warm_only"]["recall@1"] == pytest.approx(0.5)
    # a list generator is ranked inside the list it produced: a cold item it did not list stays unranked
    short = RankingRecommender("short", scorer.rank, num_items=6, max_k=2)  # user 10 gets [1, 2], user 12 [2, 4]
    c = evaluate(short, EXAMPLES, groups, ks=(5,), exclude_history=True, history_edges=EDGES)
    assert c.metric("recall@5", "cold_only").tolist()[::2] == [0.0, 0.0]


def test_history_items_rank_when_not_excluded():
    groups = ItemGroups.from_train_items(TRAIN_ITEMS, num_items=6)
    result = evaluate(fixed_scorer(), EXAMPLES, groups, ks=KS, exclude_history=False, history_edges=EDGES)
    assert result.metric("mrr@5").tolist() == pytest.approx([1 / 5, 1 / 2, 1 / 3])


def test_ranked_list_path_equals_score_path_when_the_list_covers_the_catalogue():
    groups = ItemGroups.from_train_items(TRAIN_ITEMS, num_items=6)
    scorer = fixed_scorer()
    lists = RankingRecommender("lists", scorer.rank, num_items=6, max_k=6)
    for exclude in (True, False):
        a = evaluate(scorer, EXAMPLES, groups, ks=(1, 3, 6), exclude_history=exclude, history_edges=EDGES)
        b = evaluate(lists, EXAMPLES, groups, ks=(1, 3, 6), exclude_history=exclude, history_edges=EDGES)
        assert a.per_user.drop("group").equals(b.per_user.drop("group"), null_equal=True)
    # a short list: gold items past its end have rank infinity, so they earn nothing
    short = RankingRecommender("short", scorer.rank, num_items=6, max_k=2)
    c = evaluate(short, EXAMPLES, groups, ks=(5,), exclude_history=True, history_edges=EDGES)
    assert c.metric("recall@5").tolist() == [0.0, 1.0, 0.5]


def test_per_user_table_round_trips_through_parquet(tmp_path):
    groups = ItemGroups.from_train_items(TRAIN_ITEMS, num_items=6)
    result = evaluate(fixed_scorer(), EXAMPLES, groups, ks=KS, history_edges=EDGES)
    path = tmp_path / "per_user.parquet"
    result.per_user.write_parquet(path)
    back = pl.read_parquet(path)
    # 3 users x (all, warm, cold, 3 terciles, cold_only, warm_only) + one bucket row per user
    assert back.height == 3 * 8 + 3
    assert set(back.columns) >= {"user_idx", "group", "history_len", "num_gold", "ndcg@5", "recall@1"}
    cold = back.filter(pl.col("group") == "cold").sort("user_idx")
    assert cold["num_gold"].to_list() == [1, 0, 1]


def test_catalogue_size_mismatch_is_refused():
    groups = ItemGroups.from_train_items(TRAIN_ITEMS, num_items=6)
    wrong = ScoringRecommender("wrong", lambda h: torch.zeros(len(h), 5), num_items=5)
    with pytest.raises(ValueError, match="5 items"):
        evaluate(wrong, EXAMPLES, groups)
