"""The model's fast query path (``SetRecModel.fast_query_states``) equals the full path (``forward_tokens``)."""

from __future__ import annotations

import pytest
import torch

from recsys.models.setrec import SetRecConfig, SetRecModel, pad_histories
from recsys.models.item_tokens import ItemTokenEncoder

HISTORIES = [[3, 5, 7], [2], [1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 0]]


def tiny_model(backbone: str, **overrides) -> SetRecModel:
    torch.manual_seed(0)
    encoder = ItemTokenEncoder(torch.randn(12, 6), torch.ones(12, dtype=torch.bool), torch.randn(12, 10), 3, 32)
    return SetRecModel(SetRecConfig(backbone=backbone, num_semantic_tokens=3, dropout=0.0, **overrides), encoder).eval()


@pytest.mark.parametrize("backbone, overrides, fast", [
    ("qwen", {}, True),
    ("qwen", {"attn_implementation": "eager"}, True),
    ("qwen", {"attention": "full"}, False),
    ("qwen", {"token_set": "cf"}, False),
    ("t5", {}, False),
])
def test_fast_query_states_equal_forward_tokens(backbone, overrides, fast):
    model = tiny_model(backbone, **overrides)
    assert model.has_fast_queries is fast
    tokens, valid = model.history_tokens(pad_histories(HISTORIES, 6))
    with torch.no_grad():
        full = model.forward_tokens(tokens, valid).query_states
        quick = model.fast_query_states(tokens, valid)
    torch.testing.assert_close(quick, full, atol=1e-5, rtol=1e-5)


def test_public_item_and_sequence_methods_match_the_full_path():
    model = tiny_model("qwen")
    items = torch.tensor([[1, 4], [0, 11]])
    tokens, valid = model.history_tokens(items)
    torch.testing.assert_close(model.encode_items(items), tokens)
    torch.testing.assert_close(model.encode_items(torch.arange(model.num_items)), model.item_table())
    queries = model.queries.unsqueeze(0).expand(2, -1, -1)
    x, layout = model.assemble_sequence(tokens, valid, queries)
    assert x.shape[:2] == layout.source.shape and model.transformer() is model.backbone
    torch.testing.assert_close(x[:, -queries.shape[1]:], queries)  # decoder-only: the queries close the sequence
