"""Token-set ablations of the set-identifier model: ``cf`` uses only the CF token, ``semantic`` only the N semantic tokens.

Each check moves the item tokens the ablation must not use (fixed per-item noise added to the
item encoder's output, so history tokens and the item table move together) and asserts that
nothing the model computes moves with them, while moving the tokens it does use changes the scores.
"""

from __future__ import annotations

import pytest
import torch

from recsys.models.setrec import PRESETS, SetRecConfig, SetRecModel, pad_histories
from recsys.models.item_tokens import ItemTokenEncoder

NUM_ITEMS, N = 30, 3
CF, SEMANTIC = [0], list(range(1, N + 1))  # token slots of an item's (N+1, d) tokens
USED = {"all": CF + SEMANTIC, "cf": CF, "semantic": SEMANTIC}


def make_model(backbone: str, token_set: str) -> SetRecModel:
    torch.manual_seed(0)
    preset = PRESETS[backbone]["tiny"]
    d = preset.get("hidden_size", preset.get("d_model"))
    has_cf = torch.ones(NUM_ITEMS, dtype=torch.bool)
    has_cf[-3:] = False
    encoder = ItemTokenEncoder(torch.randn(NUM_ITEMS, 8), has_cf, torch.randn(NUM_ITEMS, 12), N, d)
    config = SetRecConfig(backbone=backbone, num_semantic_tokens=N, token_set=token_set, dropout=0.0)
    return SetRecModel(config, encoder).eval()


def move_tokens(model: SetRecModel, slots: list[int], seed: int = 5) -> None:
    """Add fixed per-item noise to token ``slots`` of every item, wherever the model reads item tokens."""
    encoder = model.item_encoder
    d = model.hidden_size
    noise = torch.zeros(NUM_ITEMS, N + 1, d)
    noise[:, slots] = torch.randn(NUM_ITEMS, len(slots), d, generator=torch.Generator().manual_seed(seed))
    forward, table = encoder.forward, encoder.table
    encoder.forward = lambda item_idx: forward(item_idx) + noise[item_idx]
    encoder.table = lambda *args, **kwargs: table(*args, **kwargs) + noise


def outputs(model: SetRecModel) -> dict[str, torch.Tensor]:
    histories = pad_histories([[1, 2, 3], [4], [5, 27, 6]], max_len=4)  # item 27 has no CF embedding
    with torch.no_grad():
        return {
            "item_table": model.item_table(),
            "query_states": model.query_states(histories),
            "scores": model.score_all(histories, beta=0.7),
            "loss": model.loss(histories, torch.tensor([7, 8, 9]), alpha=0.0)["loss"],
        }


def _max_change(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], key: str) -> float:
    return float((a[key] - b[key]).abs().max())


@pytest.mark.parametrize("backbone", ["qwen", "t5"])
@pytest.mark.parametrize("token_set", ["cf", "semantic"])
def test_an_ablation_ignores_the_tokens_outside_its_set(backbone, token_set):
    model = make_model(backbone, token_set)
    full_table = model.item_encoder.table()
    base = outputs(model)
    assert base["item_table"].shape == (NUM_ITEMS, len(USED[token_set]), model.hidden_size)
    torch.testing.assert_close(base["item_table"], full_table[:, USED[token_set]], rtol=0, atol=0)
    assert base["query_states"].shape == (3, len(USED[token_set]), model.hidden_size)

    unused = [s for s in range(N + 1) if s not in USED[token_set]]
    move_tokens(model, unused)
    moved = outputs(model)
    for key in base:
        torch.testing.assert_close(moved[key], base[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("backbone", ["qwen", "t5"])
@pytest.mark.parametrize("token_set", ["cf", "semantic"])
def test_an_ablation_uses_the_tokens_of_its_set(backbone, token_set):
    model = make_model(backbone, token_set)
    base = outputs(model)
    move_tokens(model, USED[token_set])
    moved = outputs(model)
    for key in ("item_table", "query_states", "scores"):
        assert _max_change(moved, base, key) > 1e-2, key


@pytest.mark.parametrize("slots", [CF, SEMANTIC], ids=["cf-token", "semantic-tokens"])
def test_the_full_model_uses_both_sets(slots):
    """The control: without an ablation, moving either set changes the scores."""
    model = make_model("qwen", "all")
    base = outputs(model)
    move_tokens(model, slots)
    assert _max_change(outputs(model), base, "scores") > 1e-2
