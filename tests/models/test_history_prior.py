"""The history prior (recsys.models.history_prior): recency pooling, prefix-only, and what it scores."""

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
    prior = HistoryPrior(3, cf_first=True, initial_rate=0.5)
    tokens, valid = left_padded()
    states = torch.zeros(3, 3, 4)
    out = prior(states, tokens, valid)
    for row in range(3):
        idx = valid[row].nonzero().flatten()
        w = torch.exp(-0.5 * (5 - idx).float())
        pooled = (w[:, None, None] * tokens[row, idx]).sum(0) / w.sum()
        torch.testing.assert_close(out[row, 1:], pooled[1:], atol=1e-6, rtol=0)
        torch.testing.assert_close(out[row, 0], torch.zeros(4))  # the CF gain starts at 0


def test_packed_equals_each_prefix_alone_and_reads_no_later_item():
    prior = HistoryPrior(3, cf_first=False, initial_rate=0.7)
    with torch.no_grad():
        prior.scale.copy_(torch.tensor([0.5, 1.0, 2.0]))  # the backbone's share counts too
    tokens, valid = left_padded()
    states = torch.randn(3, 6, 3, 4)
    packed = prior.packed(states, tokens, valid)
    for row in range(3):
        for p in range(6):
            if not valid[row, p]:
                continue
            prefix_tokens = torch.zeros_like(tokens[row : row + 1])
            prefix_valid = torch.zeros_like(valid[row : row + 1])
            prefix_tokens[0, 5 - p :] = tokens[row, : p + 1]  # the prefix ending at p, left-padded
            prefix_valid[0, 5 - p :] = valid[row, : p + 1]
            alone = prior(states[row : row + 1, p], prefix_tokens, prefix_valid)
            torch.testing.assert_close(packed[row, p], alone[0], atol=1e-6, rtol=0)
    changed = tokens.clone()
    changed[:, 4:] += 10.0  # items after position 3 must not move the prefixes ending at <= 3
    torch.testing.assert_close(prior.packed(states, changed, valid)[:, :4], packed[:, :4])


def test_semantic_scores_start_from_text_similarity():
    """With projection tokens and the backbone's share removed, dimension scores rank as text similarity does."""
    torch.manual_seed(0)
    items, dz = 30, 12
    text = torch.nn.functional.normalize(torch.randn(items, dz), dim=1)
    encoder = ItemTokenEncoder(torch.randn(items, 8), torch.ones(items, dtype=torch.bool), text, 4, 32)
    model = SetRecModel(SetRecConfig(backbone="qwen", num_semantic_tokens=4), encoder).eval()
    history = pad_histories([[3, 7, 11]], max_len=5)
    tokens, valid = model.history_tokens(history)
    states = model.apply_history_prior(torch.zeros(1, 5, 32), tokens, valid)
    table = model.item_table()
    semantic = torch.einsum("bkd,ikd->bi", states[:, 1:], table[:, 1:])
    w = torch.exp(-torch.tensor([2.0, 1.0, 0.0]))
    expected = (w @ text[[3, 7, 11]]) / w.sum() @ text.T
    gain = model.item_encoder.log_text_gain.exp() ** 2
    torch.testing.assert_close(semantic[0], gain * expected, atol=1e-5, rtol=1e-4)


def test_untrained_model_ranks_by_the_prior_and_the_backbone_scale_learns():
    prior = HistoryPrior(2, cf_first=True)
    tokens, valid = left_padded(k=2)
    states = torch.randn(3, 2, 4, requires_grad=True)
    out = prior(states, tokens, valid)
    torch.testing.assert_close(out, prior(torch.zeros(3, 2, 4), tokens, valid))  # scale starts at 0
    out.pow(2).sum().backward()
    assert prior.scale.grad is not None and bool((prior.scale.grad != 0).any())


def test_config_choices_and_old_bundles():
    with pytest.raises(ConfigError, match="history_prior"):
        SetRecConfig(history_prior="mean").validate()
    assert SetRecConfig.from_dict({"backbone": "t5", "preset": "tiny"}).history_prior == "none"  # saved before the key
    assert SetRecConfig().history_prior == "recency"
