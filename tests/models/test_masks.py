"""Masks and shared position ids of the set-identifier model (ARCHITECTURE.md 3.2)."""

from __future__ import annotations

import itertools

import pytest
import torch

from recsys.errors import ConfigError
from recsys.models.masks import (
    ITEM,
    PAD,
    PROMPT,
    QUERY,
    RESPONSE,
    MaskSpec,
    build_layout,
    dense_mask,
    for_backend,
    query_self_mask,
    reference_mask,
)

SPECS = [MaskSpec(r, a, g) for r, a, g in itertools.product(("decoder_only", "encoder"), ("sparse", "full"), ("simultaneous", "autoregressive"))]


def random_valid(generator: torch.Generator, batch: int, length: int) -> torch.Tensor:
    real = torch.randint(0, length + 1, (batch,), generator=generator)
    return torch.arange(length)[None, :] >= (length - real)[:, None]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.role}-{s.attention}-{s.generation}")
def test_fast_mask_equals_reference_on_random_layouts(spec):
    generator = torch.Generator().manual_seed(7)
    for _ in range(6):
        batch, length = int(torch.randint(1, 4, (1,), generator=generator)), int(torch.randint(1, 5, (1,), generator=generator))
        k, p, r, q = (int(torch.randint(lo, 4, (1,), generator=generator)) for lo in (1, 0, 0, 1))
        layout = build_layout(random_valid(generator, batch, length), k, p, r, q, spec)
        assert torch.equal(dense_mask(layout), reference_mask(layout))


def test_decoder_only_sparse_rules_and_positions():
    valid = torch.tensor([[False, True, True]])  # one padding item, two real items
    layout = build_layout(valid, tokens_per_item=2, num_prompt=2, num_response=1, num_queries=2, spec=MaskSpec())
    kinds = [PAD, PAD, PROMPT, PROMPT, ITEM, ITEM, ITEM, ITEM, RESPONSE, QUERY, QUERY]
    assert layout.kind[0].tolist() == kinds
    # prompt p -> p; item j -> P + j (shared by its tokens); response r -> P + n + r; queries -> P + n + R
    assert layout.position_ids[0, 2:].tolist() == [0, 1, 2, 2, 3, 3, 4, 5, 5]
    mask = reference_mask(layout)[0]
    item0, item1, resp, q0, q1 = [4, 5], [6, 7], 8, 9, 10
    assert not mask[4, 5] and not mask[5, 4] and not mask[6, 7]  # siblings hidden
    assert mask[6, 4] and mask[6, 5] and not mask[4, 6]  # earlier items visible, later not
    assert mask[3, 2] and not mask[2, 3]  # prompt causal
    assert mask[resp, item0 + item1].all() and mask[resp, [2, 3]].all()
    assert mask[q0, : q0 - 0][2:].all() and not mask[q0, q1] and not mask[q1, q0]
    assert not mask[2:, :2].any()  # no real token attends to padding
    assert mask[0].tolist() == [True] + [False] * 10  # padding sees only itself


def test_encoder_sparse_rules_and_positions():
    valid = torch.tensor([[True, True]])
    layout = build_layout(valid, 2, 1, 1, 3, MaskSpec("encoder"))
    assert layout.kind[0].tolist() == [PROMPT, ITEM, ITEM, ITEM, ITEM, RESPONSE]  # no queries in the encoder
    assert layout.position_ids[0].tolist() == [0, 1, 1, 2, 2, 3]
    mask = reference_mask(layout)[0]
    assert mask[0].all() and mask[5].all()  # prompt and response see every real token
    assert mask[1].tolist() == [True, True, False, True, True, True]  # every other item, never the sibling
    assert mask[3].tolist() == [True, True, True, True, False, True]


def test_full_ablation_uses_sequential_positions_and_shows_siblings():
    valid = torch.tensor([[True, True]])
    layout = build_layout(valid, 2, 1, 1, 2, MaskSpec("decoder_only", "full"))
    assert layout.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 6]
    mask = reference_mask(layout)[0]
    assert mask[2, 1] and mask[4, 3]  # the sibling before is visible (causal)
    auto = build_layout(valid, 2, 1, 1, 2, MaskSpec("decoder_only", "sparse", "autoregressive"))
    assert auto.position_ids[0, -2:].tolist() == [4, 5]
    assert reference_mask(auto)[0, -1, -2] and not reference_mask(auto)[0, -2, -1]


def test_left_padding_leaves_the_real_part_unchanged():
    spec = MaskSpec()
    short = build_layout(torch.tensor([[True, True]]), 3, 2, 1, 3, spec)
    long = build_layout(torch.tensor([[False, False, True, True]]), 3, 2, 1, 3, spec)
    pad = 6
    assert torch.equal(long.position_ids[:, pad:], short.position_ids)
    assert torch.equal(long.kind[:, pad:], short.kind)
    assert torch.equal(dense_mask(long)[:, pad:, pad:], dense_mask(short))
    # the embedding source of item j, token t moves with the padding: (L - n + j) * K + t in the history
    assert long.source[0, pad + 2].item() == 1 + 2 + 2 * 3


def test_rejects_right_padding_and_bad_specs():
    with pytest.raises(ValueError, match="row 0 is not left-padded"):
        build_layout(torch.tensor([[True, False]]), 2, 1, 1, 2, MaskSpec())
    with pytest.raises(ConfigError, match="attention"):
        MaskSpec("decoder_only", "dense")


def test_backend_masks_are_hard():
    mask = torch.tensor([[True, False], [True, True]])
    assert for_backend(mask, "sdpa", torch.float32).dtype == torch.bool
    additive = for_backend(mask, "eager", torch.float32)
    assert additive.shape == (1, 1, 2, 2)
    assert additive[0, 0, 0, 1] == torch.finfo(torch.float32).min and additive[0, 0, 1, 0] == 0
    with pytest.raises(ConfigError):
        for_backend(mask, "flash_attention_2", torch.float32)


def test_query_self_mask():
    assert torch.equal(query_self_mask(3, "simultaneous"), torch.eye(3, dtype=torch.bool))
    assert torch.equal(query_self_mask(3, "autoregressive"), torch.ones(3, 3, dtype=torch.bool).tril())
