"""The FlexAttention block mask of the set-identifier layout against the independent pair-by-pair reference.

``flex_block_mask`` and ``dense_mask`` share one rule function, so comparing them with each other
proves nothing about the rule. Here the flex mask is compared with ``reference_mask`` (Python
loops over ``_may_attend``, written separately): its ``mask_mod`` pair by pair, its block
sparsity, and FlexAttention's output (eager on the CPU) against SDPA under the reference mask.
The compiled kernel on a GPU is checked in the ``gpu`` tests at the end.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from recsys.models.masks import MaskSpec, build_layout, flex_block_mask, reference_mask

SPECS = [MaskSpec(r, a, g) for r, a, g in itertools.product(("decoder_only", "encoder"), ("sparse", "full"), ("simultaneous", "autoregressive"))]
SPEC_IDS = [f"{s.role}-{s.attention}-{s.generation}" for s in SPECS]


def random_layouts(spec: MaskSpec, seed: int, count: int = 4, device: str = "cpu"):
    """Random left-padded batches with random K, P, R, Q (every row length, empty histories too)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        batch, length = int(torch.randint(1, 4, (1,), generator=generator)), int(torch.randint(1, 6, (1,), generator=generator))
        real = torch.randint(0, length + 1, (batch,), generator=generator)
        valid = torch.arange(length)[None, :] >= (length - real)[:, None]
        k, p, r, q = (int(torch.randint(lo, 4, (1,), generator=generator)) for lo in (1, 0, 0, 1))
        yield build_layout(valid.to(device), k, p, r, q, spec)


def long_layout(device: str = "cpu"):
    """A decoder-only layout longer than one 128-slot block, with padded rows (block sparsity matters)."""
    valid = torch.ones(3, 40, dtype=torch.bool)
    valid[1, :25] = False
    valid[2, :39] = False
    return build_layout(valid.to(device), 4, 2, 1, 5, MaskSpec())


def pairwise(block_mask, layout) -> torch.Tensor:
    """The block mask's mask_mod evaluated on every (batch, query slot, key slot)."""
    batch, length = layout.shape
    device = layout.kind.device
    b = torch.arange(batch, device=device)[:, None, None]
    q = torch.arange(length, device=device)[None, :, None]
    kv = torch.arange(length, device=device)[None, None, :]
    return block_mask.mask_mod(b, torch.zeros((), dtype=torch.long, device=device), q, kv).expand(batch, length, length)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_flex_mask_mod_equals_the_reference_mask(spec):
    for layout in random_layouts(spec, seed=3):
        assert torch.equal(pairwise(flex_block_mask(layout), layout), reference_mask(layout))


def test_flex_block_sparsity_covers_exactly_the_reference_blocks():
    layout = long_layout()
    block_mask = flex_block_mask(layout)
    batch, length = layout.shape
    assert length > 128 and block_mask.shape == (batch, 1, length, length)
    reference = reference_mask(layout)
    size = block_mask.BLOCK_SIZE[0]
    blocks = -(-length // size)
    padded = torch.zeros(batch, blocks * size, blocks * size, dtype=torch.bool)
    padded[:, :length, :length] = reference
    expected = padded.view(batch, blocks, size, blocks, size).any(dim=(2, 4))  # a block is visited iff a pair in it may attend
    assert torch.equal(block_mask.to_dense()[:, 0].bool(), expected)


def _attention_matches_reference(layout, device: str, compiled: bool) -> None:
    from torch.nn.attention.flex_attention import flex_attention

    generator = torch.Generator(device=device).manual_seed(0)
    batch, length = layout.shape
    q, k, v = (torch.randn(batch, 2, length, 16, generator=generator, device=device) for _ in range(3))
    attend = torch.compile(flex_attention) if compiled else flex_attention
    out = attend(q, k, v, block_mask=flex_block_mask(layout))
    mask = reference_mask(layout).to(device)[:, None]
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.role == "decoder_only"], ids=[i for s, i in zip(SPECS, SPEC_IDS) if s.role == "decoder_only"])
def test_flex_attention_equals_sdpa_under_the_reference_mask(spec):
    """FlexAttention (eager, CPU) with the block mask attends exactly like SDPA with the reference mask."""
    for layout in random_layouts(spec, seed=11, count=2):
        _attention_matches_reference(layout, "cpu", compiled=False)
    if spec == MaskSpec():
        _attention_matches_reference(long_layout(), "cpu", compiled=False)


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_compiled_flex_attention_on_gpu_equals_sdpa_under_the_reference_mask():
    for spec in (MaskSpec(), MaskSpec("decoder_only", "full"), MaskSpec("decoder_only", "sparse", "autoregressive")):
        for layout in random_layouts(spec, seed=5, count=2, device="cuda"):
            assert torch.equal(pairwise(flex_block_mask(layout), layout).cpu(), reference_mask(layout).cpu())
            _attention_matches_reference(layout, "cuda", compiled=True)
    _attention_matches_reference(long_layout("cuda"), "cuda", compiled=True)


@pytest.mark.gpu
def test_qwen_with_flex_attention_on_gpu_equals_sdpa():
    """The model itself: the flex_attention backend (CUDA) gives the outputs of the sdpa backend."""
    from recsys.models.setrec import PRESETS, SetRecConfig, SetRecModel, pad_histories
    from recsys.models.item_tokens import ItemTokenEncoder

    num_items, n = 30, 3
    d = PRESETS["qwen"]["tiny"]["hidden_size"]
    models = {}
    for impl in ("sdpa", "flex_attention"):
        torch.manual_seed(0)
        encoder = ItemTokenEncoder(torch.randn(num_items, 8), torch.ones(num_items, dtype=torch.bool), torch.randn(num_items, 12), n, d)
        # built without the mask probe (it would run FlexAttention on the CPU), then probed on the GPU
        config = SetRecConfig(backbone="qwen", num_semantic_tokens=n, attn_implementation=impl, dropout=0.0, verify_mask=False)
        models[impl] = SetRecModel(config, encoder).eval().cuda()
        models[impl].verify_mask_honoured()
    histories = pad_histories([[1, 2, 3], [4], [5, 6, 7, 8, 9]], max_len=6).cuda()
    with torch.no_grad():
        expected = models["sdpa"].query_states(histories)
        got = models["flex_attention"].query_states(histories)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
