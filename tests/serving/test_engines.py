"""The torch engine's fast path (cached item-token table) equals the reference (model.query_vectors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.errors import UnknownItemError
from recsys.models.setrec import SetRecConfig, SetRecModel
from recsys.serving.engines import ItemTokens, TorchEngine
from recsys.models.item_tokens import ItemTokenEncoder

HISTORIES = [[3, 5, 7], [2], [1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 0]]


def tiny_model(backbone: str) -> SetRecModel:
    torch.manual_seed(0)
    has_cf = torch.ones(12, dtype=torch.bool)
    has_cf[-2:] = False
    encoder = ItemTokenEncoder(torch.randn(12, 6), has_cf, torch.randn(12, 10), 3, 32)
    return SetRecModel(SetRecConfig(backbone=backbone, num_semantic_tokens=3, dropout=0.0), encoder).eval()


@pytest.mark.parametrize("backbone", ["qwen", "t5"])
def test_cached_token_path_equals_the_reference_also_after_new_items(backbone):
    model = tiny_model(backbone)
    fast = TorchEngine(model, beta=0.3, max_len=5)
    reference = TorchEngine(model, beta=0.3, max_len=5, cached_tokens=False)
    assert fast.last_layer_queries_only == (backbone == "qwen") and not reference.last_layer_queries_only
    np.testing.assert_allclose(fast.query_vectors(HISTORIES), reference.query_vectors(HISTORIES), atol=1e-5, rtol=1e-5)
    new = model.item_encoder.add_items(torch.randn(2, 10))  # what Recommender.add_item does
    with_new = [[1, int(new[0])], [int(new[1]), 4, int(new[0])]]
    np.testing.assert_allclose(fast.query_vectors(with_new), reference.query_vectors(with_new), atol=1e-5, rtol=1e-5)
    tokens, valid = ItemTokens(model).history(torch.tensor([[-1, 2, int(new[1])]]))
    expected, expected_valid = model.history_tokens(torch.tensor([[-1, 2, int(new[1])]]))
    torch.testing.assert_close(tokens, expected.detach(), atol=1e-6, rtol=1e-6)
    assert valid.tolist() == expected_valid.tolist()
    with pytest.raises(UnknownItemError, match="outside the catalogue"):
        ItemTokens(model).history(torch.tensor([[model.num_items]]))
