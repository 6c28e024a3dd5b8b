"""All-prefix training (ARCHITECTURE.md 3.3): one pass over a window gives every target's loss.

The packed pass must give each position exactly what running its prefix alone gives (the
one-prefix reference path), and no position may see its target or anything after it.
"""

from __future__ import annotations

import pytest
import torch

from recsys.errors import ConfigError
from recsys.models.masks import MaskSpec, build_packed_layout, dense_mask, reference_mask
from recsys.models.setrec import SetRecConfig, SetRecModel, pad_histories
from recsys.models.item_tokens import ItemTokenEncoder

NUM_ITEMS, N = 30, 2


def make_model(backbone: str, **overrides) -> SetRecModel:
    torch.manual_seed(0)
    has_cf = torch.ones(NUM_ITEMS, dtype=torch.bool)
    has_cf[-3:] = False
    hidden = 32
    encoder = ItemTokenEncoder(torch.randn(NUM_ITEMS, 8), has_cf, torch.randn(NUM_ITEMS, 12), N, hidden,
                               semantic=overrides.get("semantic_tokens", "projection"))
    config = SetRecConfig(backbone=backbone, num_semantic_tokens=N, dropout=0.0, num_prompt_tokens=2,
                          num_response_tokens=1, **overrides)
    return SetRecModel(config, encoder).eval()


def windows():
    """Three left-padded windows of different lengths and their per-position targets (-1 = none)."""
    sequences = [[3, 7, 1, 9, 4, 12], [5, 2, 8], [11, 6, 0, 10]]
    histories = pad_histories([s[:-1] for s in sequences], max_len=5)
    targets = torch.full_like(histories, -1)
    for row, seq in enumerate(sequences):
        n = len(seq) - 1
        targets[row, histories.shape[1] - n :] = torch.tensor(seq[1:])
    return sequences, histories, targets


VARIANTS = [
    ("qwen", {}),
    ("t5", {}),
    ("qwen", {"attention": "full"}),
    ("t5", {"attention": "full"}),
    ("qwen", {"generation": "autoregressive"}),
    ("t5", {"generation": "autoregressive"}),
    ("qwen", {"token_set": "cf"}),
    ("t5", {"token_set": "semantic", "semantic_tokens": "residual"}),
]


@pytest.mark.parametrize("backbone,overrides", VARIANTS)
def test_packed_losses_equal_the_losses_of_each_prefix_alone(backbone, overrides):
    model = make_model(backbone, **overrides)
    sequences, histories, targets = windows()
    with torch.no_grad():
        packed, packed_targets = model.target_losses(histories, targets)
        reference = []
        for seq in sequences:
            for t in range(1, len(seq)):
                loss, _ = model.target_losses(pad_histories([seq[:t]], max_len=5), torch.tensor([seq[t]]))
                reference.append(loss)
    assert packed_targets.tolist() == [item for seq in sequences for item in seq[1:]]
    torch.testing.assert_close(packed, torch.cat(reference), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", ["qwen", "t5"])
def test_a_position_never_sees_its_target_or_later_items(backbone):
    model = make_model(backbone)
    _, histories, targets = windows()
    t = 2  # the third position of every row; change everything after it
    changed_h, changed_t = histories.clone(), targets.clone()
    changed_h[:, t + 1 :] = (changed_h[:, t + 1 :] + 5).remainder(NUM_ITEMS).where(changed_h[:, t + 1 :] >= 0, -1)
    changed_t[:, t + 1 :] = (changed_t[:, t + 1 :] + 7).remainder(NUM_ITEMS).where(changed_t[:, t + 1 :] >= 0, -1)
    with torch.no_grad():
        base = model.query_states(histories, target_items=targets)
        moved = model.query_states(changed_h, target_items=changed_t)
    real = histories[:, : t + 1] >= 0  # padding positions have no prefix; their states mean nothing
    torch.testing.assert_close(base[:, : t + 1][real], moved[:, : t + 1][real], atol=1e-5, rtol=0)
    assert (base[:, t + 1 :] - moved[:, t + 1 :]).abs().max() > 1e-3  # later positions do change: the test can fail


def test_the_bidirectional_encoder_refuses_packed_training():
    model = make_model("t5", encoder_attention="bidirectional")
    _, histories, targets = windows()
    with pytest.raises(ConfigError, match="encoder_attention: causal"):
        model.loss(histories, targets, alpha=0.0)
    # the one-prefix reference path still trains it
    out = model.loss(histories, targets[:, -1], alpha=0.0)
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("spec", [MaskSpec(), MaskSpec("decoder_only", "full"), MaskSpec("decoder_only", "sparse", "autoregressive"),
                                  MaskSpec("encoder", item_causal=True)])
def test_packed_mask_fast_path_equals_the_pair_by_pair_rule(spec):
    valid = torch.tensor([[False, True, True, True], [True, True, True, True], [False, False, False, True]])
    layout = build_packed_layout(valid, 3, 2, 1, 3, spec)
    assert torch.equal(dense_mask(layout), reference_mask(layout))


def test_packed_layout_gives_each_group_the_positions_of_its_prefix():
    valid = torch.tensor([[False, True, True]])
    layout = build_packed_layout(valid, 2, 1, 1, 2, MaskSpec())
    kinds = layout.kind[0].tolist()
    # [pad x (K + R + Q)] [prompt] [item0 x2] [item1 x2] [resp g0, q g0 x2] [resp g1, q g1 x2]
    assert kinds == [0] * 5 + [1] + [2] * 4 + [3, 4, 4, 3, 4, 4]
    assert layout.position_ids[0, -6:].tolist() == [2, 3, 3, 3, 4, 4]  # P + items_seen (+ R for queries)
    assert layout.group[0, -6:].tolist() == [0, 0, 0, 1, 1, 1]


def test_packed_layout_refuses_histories_that_are_not_left_padded():
    with pytest.raises(ValueError, match="row 0 is not left-padded"):
        build_packed_layout(torch.tensor([[True, False]]), 2, 1, 1, 2, MaskSpec())
