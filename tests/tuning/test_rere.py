"""ReRe's rewards, advantages and objective on hand-made groups (recsys.tuning.rere)."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.errors import ConfigError
from recsys.tuning.rere import (
    ReReConfig,
    categorical_kl,
    clipped_surrogate,
    group_advantages,
    kl_estimate,
    ranking_rewards,
    rere_loss,
    rere_rewards,
    rule_rewards,
    sampled_group,
    top_group,
)


def test_rule_reward_is_one_exactly_for_the_held_out_item():
    group = torch.tensor([[4, 7, 1], [2, 3, 5]])
    gold = torch.tensor([7, 9])
    assert rule_rewards(group, gold).tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]


def test_ranking_reward_penalises_higher_ranked_negatives_more_and_spares_the_gold():
    is_gold = torch.tensor([[False, True, False, False]])
    rewards = ranking_rewards(is_gold)[0]
    assert rewards[1] == 0.0
    assert rewards[0] == pytest.approx(-1.0)                 # rank 1: -1 / log2(2)
    assert rewards[2] == pytest.approx(-1 / math.log2(4))    # rank 3: -0.5
    assert rewards[0] < rewards[2] < rewards[3] < 0          # penalty shrinks with the rank


def test_rere_rewards_gold_inside_and_outside_the_group():
    group = torch.tensor([[5, 6, 7], [1, 2, 3]])
    gold = torch.tensor([6, 9])
    rewards = rere_rewards(group, gold, rank_weight=1.0)
    assert rewards[0].tolist() == pytest.approx([-1.0, 1.0, -0.5])
    assert rewards[1].tolist() == pytest.approx([-1.0, -1 / math.log2(3), -0.5])
    # rank_weight 0: the rule reward alone; a group without the gold carries no signal
    plain = rere_rewards(group, gold, rank_weight=0.0)
    assert group_advantages(plain)[1].abs().max() == 0


def test_group_advantages_are_normalised_per_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0], [-1.0, -0.5, 0.3, 0.9]])
    adv = group_advantages(rewards)
    assert adv.mean(dim=1).abs().max() < 1e-6
    assert adv[0].std(unbiased=False) == pytest.approx(1.0, abs=1e-4)
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]          # equal rewards: no preference
    assert adv[0, 0] > 0 > adv[0, 1]
    assert torch.equal(adv[2].argsort(), rewards[2].argsort())  # order preserved


def test_groups_are_distinct_allowed_items_ordered_by_probability():
    log_probs = torch.log_softmax(torch.tensor([[0.1, 3.0, -math.inf, 2.0, 1.0], [5.0, 0.0, 1.0, -math.inf, 2.0]]), dim=-1)
    assert top_group(log_probs, 3).tolist() == [[1, 3, 4], [0, 4, 2]]
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        group = sampled_group(log_probs, 3, generator)
        for row in range(2):
            items = group[row].tolist()
            assert len(set(items)) == 3 and torch.isfinite(log_probs[row, items]).all()
            assert log_probs[row, items].tolist() == sorted(log_probs[row, items].tolist(), reverse=True)
    with pytest.raises(ValueError, match="allowed items"):
        top_group(log_probs, 5)


def test_sampled_groups_follow_the_policy():
    probs = torch.tensor([[0.7, 0.2, 0.05, 0.05]])
    generator = torch.Generator().manual_seed(1)
    firsts = [int(sampled_group(probs.log(), 1, generator)[0, 0]) for _ in range(2000)]
    assert abs(firsts.count(0) / 2000 - 0.7) < 0.04


def test_surrogate_gradient_is_advantage_times_score_at_ratio_one_and_clips():
    logits = torch.zeros(1, 3, requires_grad=True)
    log_probs = torch.log_softmax(logits, dim=-1)
    advantages = torch.tensor([[1.0, -1.0, 0.0]])
    value = clipped_surrogate(log_probs, log_probs.detach(), advantages, 0.2)
    assert float(value.detach()) == pytest.approx(0.0)
    value.backward()
    # d/dlogits of mean(A * log pi) with uniform pi: (A - sum(A) pi) / 3
    assert logits.grad[0].tolist() == pytest.approx([1 / 3, -1 / 3, 0.0], abs=1e-6)
    # a ratio far above 1 + eps with a positive advantage is clipped: no gradient
    moved = torch.tensor([[0.0]], requires_grad=True)
    clipped_surrogate(moved + 1.0, torch.zeros(1, 1), torch.ones(1, 1), 0.2).backward()
    assert moved.grad.item() == 0.0


def test_kl_terms_against_the_reference():
    ref = torch.log_softmax(torch.tensor([[1.0, 0.0, -1.0, -math.inf]]), dim=-1)
    assert categorical_kl(ref, ref).item() == pytest.approx(0.0, abs=1e-7)
    policy = torch.log_softmax(torch.tensor([[0.0, 1.0, -1.0, -math.inf]]), dim=-1)
    p, q = policy.exp()[0, :3], ref.exp()[0, :3]
    assert categorical_kl(policy, ref).item() == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-6)
    estimate = kl_estimate(policy, ref)
    assert (estimate[torch.isfinite(estimate)] >= 0).all()
    assert kl_estimate(ref[:, :3], ref[:, :3]).abs().max() < 1e-7
    # sampled from pi, the estimator is unbiased for KL(pi || ref)
    draws = torch.multinomial(p, 20000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert kl_estimate(policy[0, draws], ref[0, draws]).mean().item() == pytest.approx(categorical_kl(policy, ref).item(), abs=0.01)


def test_loss_adds_the_weighted_kl():
    config = ReReConfig(kl_weight=0.5)
    log_probs = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    out = rere_loss(log_probs, log_probs, torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([0.4]), config)
    assert float(out["loss"]) == pytest.approx(-float(out["surrogate"]) + 0.2)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="rere.group_size"):
        ReReConfig(group_size=1)
    with pytest.raises(ConfigError, match="rere.sampling"):
        ReReConfig(sampling="beam")
