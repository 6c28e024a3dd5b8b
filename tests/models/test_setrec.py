"""The set-identifier model: mask invariances in fp32 (atol 1e-5), scoring, loss, LoRA, backends."""

from __future__ import annotations

import pytest
import torch

from recsys.errors import ConfigError
from recsys.models.masks import ITEM
from recsys.models.setrec import PRESETS, LoraSettings, SetRecConfig, SetRecModel, pad_histories
from recsys.models.item_tokens import ItemTokenEncoder

ATOL = 1e-5
NUM_ITEMS, N = 30, 3


def hidden(backbone: str, preset: str = "tiny") -> int:
    values = PRESETS[backbone][preset]
    return values.get("hidden_size", values.get("d_model"))


def make_model(backbone: str, seed: int = 0, **overrides) -> SetRecModel:
    torch.manual_seed(seed)
    has_cf = torch.ones(NUM_ITEMS, dtype=torch.bool)
    has_cf[-3:] = False
    encoder = ItemTokenEncoder(torch.randn(NUM_ITEMS, 8), has_cf, torch.randn(NUM_ITEMS, 12), N, hidden(backbone),
                               semantic=overrides.get("semantic_tokens", "projection"))
    config = SetRecConfig(backbone=backbone, num_semantic_tokens=N, **overrides)
    return SetRecModel(config, encoder).eval()


def random_tokens(model: SetRecModel, batch=2, length=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, length, model.tokens_per_item, model.hidden_size, generator=generator)
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[1, 0] = False  # row 1 is left-padded by one item
    return tokens, valid


BACKBONES = ["qwen", "t5"]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_permuting_tokens_inside_an_item_leaves_queries_unchanged(backbone):
    """The backbone sees an item as a set (ARCHITECTURE.md 3.2); forward_tokens is the backbone alone (the
    history prior is per dimension: history token k feeds query k, as the candidate's token k meets query k)."""
    model = make_model(backbone)
    tokens, valid = random_tokens(model)
    base = model.forward_tokens(tokens, valid).query_states
    for row, item in ((0, 0), (0, 2), (1, 1)):
        permuted = tokens.clone()
        permuted[row, item] = tokens[row, item, torch.tensor([2, 0, 3, 1])]
        out = model.forward_tokens(permuted, valid).query_states
        torch.testing.assert_close(out, base, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_full_attention_ablation_sees_token_order(backbone):
    """The control: with siblings visible and sequential positions the same permutation matters."""
    model = make_model(backbone, attention="full")
    tokens, valid = random_tokens(model)
    permuted = tokens.clone()
    permuted[0, 1] = tokens[0, 1, torch.tensor([2, 0, 3, 1])]
    base = model.forward_tokens(tokens, valid).query_states
    assert (model.forward_tokens(permuted, valid).query_states[0] - base[0]).abs().max() > 1e-3


@pytest.mark.parametrize("backbone", BACKBONES)
def test_changing_a_token_leaves_its_siblings_first_layer_outputs_unchanged(backbone):
    model = make_model(backbone)
    tokens, valid = random_tokens(model)
    base = model.forward_tokens(tokens, valid, output_hidden_states=True)
    changed = tokens.clone()
    changed[0, 1, 2] += 5.0
    out = model.forward_tokens(changed, valid, output_hidden_states=True)
    layout = base.layout
    item_slots = torch.nonzero((layout.kind[0] == ITEM) & (layout.index[0] == 1)).flatten()
    own = item_slots[2]
    siblings = item_slots[torch.arange(len(item_slots)) != 2]
    first_base, first_out = base.hidden_states[0][0], out.hidden_states[0][0]
    torch.testing.assert_close(first_out[siblings], first_base[siblings], atol=ATOL, rtol=0)
    assert (first_out[own] - first_base[own]).abs().max() > 1e-3  # the change itself is visible
    assert (out.query_states[0] - base.query_states[0]).abs().max() > 1e-4  # and reaches the queries


@pytest.mark.parametrize("backbone", BACKBONES)
def test_changing_one_query_leaves_the_other_queries_unchanged(backbone):
    model = make_model(backbone)
    tokens, valid = random_tokens(model)
    queries = model.queries.detach().unsqueeze(0).expand(2, -1, -1).clone()
    base = model.forward_tokens(tokens, valid, queries).query_states
    changed = queries.clone()
    changed[:, 2] += torch.randn(model.hidden_size)
    out = model.forward_tokens(tokens, valid, changed).query_states
    others = [k for k in range(model.tokens_per_item) if k != 2]
    torch.testing.assert_close(out[:, others], base[:, others], atol=ATOL, rtol=0)
    assert (out[:, 2] - base[:, 2]).abs().max() > 1e-3


@pytest.mark.parametrize("backbone", BACKBONES)
def test_left_padding_does_not_change_outputs(backbone):
    model = make_model(backbone)
    histories = [[4, 9, 2], [7], [11, 3]]
    short = model.query_states(pad_histories(histories, max_len=3))
    long = model.query_states(pad_histories(histories + [[1, 2, 3, 5, 6, 8]], max_len=6))[:3]
    single = torch.cat([model.query_states(pad_histories([h], max_len=3)) for h in histories])
    torch.testing.assert_close(long, short, atol=ATOL, rtol=0)
    torch.testing.assert_close(single, short, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_eager_and_reference_mask_paths_equal_sdpa_fast_path(backbone):
    fast = make_model(backbone)
    tokens, valid = random_tokens(fast)
    expected = fast.forward_tokens(tokens, valid).query_states
    for overrides in ({"attn_implementation": "eager"}, {"mask_impl": "reference"}):
        other = make_model(backbone, **overrides)
        other.load_state_dict(fast.state_dict())
        torch.testing.assert_close(other.forward_tokens(tokens, valid).query_states, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_a_backend_that_drops_the_mask_is_refused(backbone, monkeypatch):
    model = make_model(backbone)
    monkeypatch.setattr(model, "_attention_mask", lambda layout, dtype: None)
    with pytest.raises(ConfigError, match="does not honour the 4-D attention mask"):
        model.verify_mask_honoured()


def test_backends_that_ignore_masks_are_rejected_by_config():
    with pytest.raises(ConfigError, match="cannot honour the sparse mask"):
        SetRecConfig(backbone="t5", attn_implementation="flash_attention_2").validate()
    with pytest.raises(ConfigError, match="lora"):
        SetRecConfig(backbone="t5", lora=LoraSettings()).validate()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_scores_are_the_beta_weighted_inner_products(backbone):
    model = make_model(backbone)
    histories = pad_histories([[1, 2, 3], [4], [5, 6]], max_len=4)
    table = model.item_table()
    assert table.shape == (NUM_ITEMS, N + 1, model.hidden_size)
    with torch.no_grad():
        per_dim = model.dimension_scores(histories)
    beta = 0.3
    expected = (1 - beta) * per_dim[:, 0] + beta * per_dim[:, 1:].sum(dim=1)
    torch.testing.assert_close(model.score_all(histories, beta), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(model.score_all(histories, beta, batch_size=1), expected, atol=1e-4, rtol=1e-5)
    assert model.query_vectors(histories, beta).shape == (3, (N + 1) * model.hidden_size)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_autoregressive_ablation(backbone):
    model = make_model(backbone, generation="autoregressive")
    histories = pad_histories([[1, 2, 3], [4, 5]], max_len=3)
    a = model.query_states(histories, target_items=torch.tensor([6, 7]))
    b = model.query_states(histories, target_items=torch.tensor([8, 9]))
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=ATOL, rtol=0)  # query 0 sees no target token
    assert (a[:, 1:] - b[:, 1:]).abs().max() > 1e-4  # later queries are teacher-forced
    greedy = model.query_states(histories)
    assert greedy.shape == a.shape and torch.isfinite(greedy).all()


@pytest.mark.parametrize("semantic", ["projection", "residual", "autoencoder"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_training_steps_lower_the_loss(backbone, semantic):
    model = make_model(backbone, dropout=0.0, semantic_tokens=semantic).train()
    histories = pad_histories([[1, 2, 3], [4, 5], [6], [7, 8, 9]], max_len=3)
    targets = torch.tensor([10, 11, 12, 13])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = None
    for _ in range(15):
        out = model.loss(histories, targets, alpha=0.1)
        first = out["loss"].item() if first is None else first
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert out["loss"].item() < 0.5 * first
    # the reconstruction term trains only where an autoencoder makes semantic tokens
    assert (out["ae"] > 0) == (semantic != "projection")


def test_lora_trains_adapters_only_and_merges_exactly():
    model = make_model("qwen", lora=LoraSettings(rank=4, alpha=8))
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for name, parameter in model.backbone.named_parameters():
            if "lora_B" in name:
                parameter.normal_()  # B starts at zero; make the adapters do something
    histories = pad_histories([[1, 2, 3], [4]], max_len=3)
    merged = model.merged_copy()
    assert merged.config.lora is None and not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(merged.query_states(histories), model.query_states(histories), atol=1e-4, rtol=0)


def test_pretrained_backbone_from_a_local_directory(tmp_path):
    model = make_model("qwen")
    model.backbone.save_pretrained(tmp_path / "qwen")
    loaded = make_model("qwen", seed=5, pretrained_dir=str(tmp_path / "qwen"))
    loaded.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}, strict=False)
    histories = pad_histories([[1, 2, 3], [4]], max_len=3)
    torch.testing.assert_close(loaded.query_states(histories), model.query_states(histories), atol=ATOL, rtol=0)
    with pytest.raises(ConfigError, match="qwen2"):
        make_model("t5", pretrained_dir=str(tmp_path / "qwen"))


def test_softmax_candidates_leave_new_items_out_of_the_loss():
    model = make_model("t5", dropout=0.0)
    histories = pad_histories([[1, 2, 3], [4, 5]], max_len=3)
    targets = torch.tensor([10, 11])
    candidates = torch.ones(NUM_ITEMS, dtype=torch.bool)
    candidates[-3:] = False  # three new items: never a target, so never a negative either
    out = model.loss(histories, targets, alpha=0.0, candidates=candidates)
    table = model.item_table()
    expected = 0.0
    for states in model.expert_states(histories, table=table):  # backbone and history prior, each its own loss
        logits = torch.einsum("bkd,ikd->bki", states, table)[:, :, candidates]  # the softmax over warm items only
        expected = expected + torch.nn.functional.cross_entropy(logits.reshape(-1, int(candidates.sum())),
                                                                targets.repeat_interleave(model.tokens_per_item))
    assert torch.allclose(out["ce"], expected, atol=1e-5)
    assert out["ce"] < model.loss(histories, targets, alpha=0.0)["ce"]  # fewer competitors, lower loss

    # what the new items' text says no longer moves the loss (it did when they were negatives)
    before_all = model.loss(histories, targets, alpha=0.0)["ce"]
    with torch.no_grad():
        model.item_encoder.text_embeddings[-3:] = torch.randn(3, model.item_encoder.text_embeddings.shape[1]) * 5
    assert torch.allclose(model.loss(histories, targets, alpha=0.0, candidates=candidates)["ce"], out["ce"], atol=1e-6)
    assert not torch.allclose(model.loss(histories, targets, alpha=0.0)["ce"], before_all, atol=1e-4)

    with pytest.raises(ValueError, match="not among the softmax candidates"):
        model.loss(histories, torch.tensor([10, NUM_ITEMS - 1]), alpha=0.0, candidates=candidates)
