"""The text-similarity baseline scores items by the cosine of their text to the user's last items."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from recsys.models.text_similarity import TextSimilarity
from recsys.pipelines.prepared import PreparedDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evaluation"))
from evaluation_data import write_prepared  # noqa: E402


def _twins(num_pairs: int) -> torch.Tensor:
    """Items 2p and 2p+1 have the same text (one-hot on p), scaled differently: cosine ignores scale."""
    emb = torch.zeros(2 * num_pairs, num_pairs)
    for item in range(2 * num_pairs):
        emb[item, item // 2] = 1.0 + item
    return emb


def test_window_averages_the_last_items_and_scores_by_cosine():
    emb = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])  # item 3 has no usable text
    unit = torch.nn.functional.normalize(emb, dim=1)
    last = TextSimilarity.from_embeddings(emb, window=1)
    assert torch.allclose(last.score([[1, 0]]), (unit[0] @ unit.T)[None])
    both = TextSimilarity.from_embeddings(emb, window=None).score([[1, 0]])
    assert torch.allclose(both, (((unit[0] + unit[1]) / 2) @ unit.T)[None])
    assert torch.allclose(both[0, :3], torch.tensor([0.5, 0.5, 2**-0.5]))
    assert both[0, 3] == 0.0 and not torch.isnan(both).any()  # the zero row stays zero, no NaN
    two = TextSimilarity.from_embeddings(emb, window=2).score([[2, 1, 0], []])
    assert torch.allclose(two[0], both[0]) and two[1].abs().sum() == 0  # empty history: all zeros


def test_cold_items_are_reached_through_their_text():
    model = TextSimilarity.from_embeddings(_twins(5), window=1)
    # item 7 never needs an interaction: its twin 6 in the history puts it first once 6 is excluded
    scores = model.score([[0, 6]])
    scores[0, [0, 6]] = float("-inf")
    assert int(scores.argmax()) == 7


def test_bad_input_is_named():
    model = TextSimilarity.from_embeddings(_twins(2))
    with pytest.raises(ValueError, match="history item 9 is outside the catalogue of 4 items"):
        model.score([[9]])
    with pytest.raises(ValueError, match="window must be a positive"):
        TextSimilarity.from_embeddings(_twins(2), window=0)
    with pytest.raises(ValueError, match=r"\(num_items, dim\)"):
        TextSimilarity(torch.zeros(3))


def test_fit_picks_the_window_on_valid(tmp_path):
    # each user's valid item is the text twin of their last train item; their older items have other twins
    pairs = 20
    sequences = [[2 * (u % pairs), 2 * ((u + 5) % pairs), 2 * ((u + 10) % pairs), 2 * ((u + 10) % pairs) + 1,
                  2 * ((u + 15) % pairs)] for u in range(8)]
    data = PreparedDataset.load(write_prepared(tmp_path / "data", sequences, 2 * pairs))
    model, valid = TextSimilarity.fit(data, _twins(pairs), windows=(None, 1))
    assert model.window == 1 and valid["window"] == 1.0
    assert valid["ndcg@10"] == pytest.approx(1.0)  # the twin is first for every user
    whole, whole_valid = TextSimilarity.fit(data, _twins(pairs), windows=(None,))
    # the mean of three texts ties the gold twin with the two older items' twins: rank 3
    assert whole.window is None and whole_valid["ndcg@10"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="40 items"):
        TextSimilarity.fit(data, _twins(pairs)[:-1])
