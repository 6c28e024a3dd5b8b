"""The history prior (recsys.models.history_prior): recency pooling, prefix-only, its own loss, what it scores."""

import pytest
import torch

from recsys.errors import ConfigError
from recsys.models.history_prior import HistoryPrior
from recsys.models.item_tokens import ItemTokenEncoder
from recsys.models.setrec import SetRecConfig, SetRecModel, pad_histories


def left_padded(batch=3, length=6, k=3, d=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, k, d, generator=generator)
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[1, :2] = False
    valid[2, :5] = False
    return tokens * valid[..., None, None], valid


def test_one_prefix_pools_recency_weighted_tokens():
    prior = HistoryPrior(3, initial_rate=0.5)
    with torch.no_grad():
        prior.log_gain.copy_(torch.log(torch.tensor([0.5, 1.0, 2.0])))
    tokens, valid = left_padded()
    out = prior(tokens, valid)
    for row in range(3):
        idx = valid[row].nonzero().flatten()
        w = torch.exp(-0.5 * (5 - idx).float())
        pooled = (w[:, None, None] * tokens[row, idx]).sum(0) / w.sum()
        torch.testing.assert_close(out[row], pooled * torch.tensor([0.5, 1.0, 2.0])[:, None], atol=1e-6, rtol=0)


def test_packed_equals_each_prefix_alone_and_reads_no_later_item():
    prior = HistoryPrior(3, initial_rate=0.7)
    tokens, valid = left_padded()
    packed = prior.packed(tokens, valid)
    for row in range(3):
        for p in range(6):
            if not valid[row, p]:
                continue
            prefix_tokens = torch.zeros_like(tokens[row : row + 1])
            prefix_valid = torch.zeros_like(valid[row : row + 1])
            prefix_tokens[0, 5 - p :] = tokens[row, : p + 1]  # the prefix ending at p, left-padded
            prefix_valid[0, 5 - p :] = valid[row, : p + 1]
            torch.testing.assert_close(packed[row, p], prior(prefix_tokens, prefix_valid)[0], atol=1e-6, rtol=0)
    changed = tokens.clone()
    changed[:, 4:] += 10.0  # items after position 3 must not move the prefixes ending at <= 3
    torch.testing.assert_close(prior.packed(changed, valid)[:, :4], packed[:, :4])


def make_model(backbone="qwen", items=30, dz=12, **overrides):
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(items, dz), dim=1)
    encoder = ItemTokenEncoder(torch.randn(items, 8), torch.ones(items, dtype=torch.bool), text, 4, 32)
    return SetRecModel(SetRecConfig(backbone=backbone, num_semantic_tokens=4, **overrides), encoder).eval(), text


def test_semantic_prior_scores_are_text_similarity():
    """With projection tokens and equal gains, the prior's semantic scores are the text similarity of the recent history."""
    model, text = make_model()
    with torch.no_grad():
        model.history_prior.log_gain.zero_()  # the calibrated gain is tested below; here: the geometry
    tokens, valid = model.history_tokens(pad_histories([[3, 7, 11]], max_len=5))
    prior = model.history_prior(tokens, valid)
    semantic = torch.einsum("bkd,ikd->bi", prior[:, 1:], model.item_table()[:, 1:])
    w = torch.exp(-torch.tensor([2.0, 1.0, 0.0]))
    expected = (w @ text[[3, 7, 11]]) / w.sum() @ text.T
    gain = model.item_encoder.log_text_gain.exp() ** 2
    torch.testing.assert_close(semantic[0], (gain * expected).detach(), atol=1e-4, rtol=1e-3)


def test_calibration_sets_the_temperature():
    model, _ = make_model()
    table = model.item_table()
    norm2 = table.pow(2).sum(-1).mean(0)
    torch.testing.assert_close(model.history_prior.gain * norm2 * HistoryPrior.TEMPERATURE, torch.ones(5), rtol=1e-4, atol=0)


@pytest.mark.parametrize("backbone", ["qwen", "t5"])
def test_model_scores_with_the_sum_and_trains_each_expert_on_its_own(backbone):
    model, _ = make_model(backbone)
    histories = pad_histories([[3, 7, 11], [2, 5]], max_len=4)
    targets = torch.tensor([4, 9])
    backbone_states, prior = model.expert_states(histories)
    torch.testing.assert_close(model.query_states(histories), backbone_states + prior)
    tokens, valid = model.history_tokens(histories)
    torch.testing.assert_close(model.apply_history_prior(model.fast_query_states(tokens, valid), tokens, valid),
                               model.query_states(histories), atol=1e-5, rtol=0)  # what the serving engines run
    table = model.item_table()
    expected = model._expert_ce(backbone_states, table, targets, None) + model._expert_ce(prior, table, targets, None)
    losses, _ = model.target_losses(histories, targets)
    torch.testing.assert_close(losses, expected)
    # the backbone's loss does not reach the prior's parameters; the prior's loss does
    model.train()
    model.zero_grad()
    states, _ = model.expert_states(histories)
    model._expert_ce(states, model.item_table(), targets, None).sum().backward()
    assert model.history_prior.log_gain.grad is None or bool((model.history_prior.log_gain.grad == 0).all())
    model.zero_grad()
    _, prior = model.expert_states(histories)
    model._expert_ce(prior, model.item_table(), targets, None).sum().backward()
    assert bool((model.history_prior.log_gain.grad != 0).all()) and float(model.history_prior.raw_rate.grad) != 0.0


@pytest.mark.parametrize("overrides", [{}, {"token_set": "cf"}, {"token_set": "semantic"}, {"generation": "autoregressive"}])
@pytest.mark.parametrize("backbone", ["qwen", "t5"])
def test_every_trainable_parameter_gets_a_gradient(backbone, overrides):
    """DDP runs with find_unused_parameters=False: the loss must reach every trainable parameter."""
    model, _ = make_model(backbone, dropout=0.0, **overrides)
    model.train()
    histories = pad_histories([[3, 7, 11, 2], [2, 5, 9, 1]], max_len=4)
    targets = torch.tensor([[7, 11, 2, 4], [5, 9, 1, 8]])
    model.loss(histories, targets, alpha=0.1)["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_config_choices_and_old_bundles():
    with pytest.raises(ConfigError, match="history_prior"):
        SetRecConfig(history_prior="mean").validate()
    assert SetRecConfig().history_prior == "recency"  # bundles saved before the key: tests/models/test_bundle.py
    model, _ = make_model(history_prior="none")
    assert model.history_prior is None
    histories = pad_histories([[3, 7]], max_len=3)
    torch.testing.assert_close(model.query_states(histories), model.expert_states(histories)[0])
