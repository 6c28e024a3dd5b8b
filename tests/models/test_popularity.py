"""The most-popular baseline ranks by train counts and never sees valid/test interactions."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation.recommenders import ScoringRecommender
from recsys.models.popularity import Popularity


def test_counts_rank_and_exclusion():
    pop = Popularity.from_train_items(np.array([2, 2, 2, 0, 0, 3]), num_items=5)
    assert pop.counts.tolist() == [2.0, 0.0, 3.0, 1.0, 0.0]
    rec = ScoringRecommender("popularity", pop.score, pop.num_items)
    assert rec.recommend([[4]], k=3, exclude_history=False).tolist() == [[2, 0, 3]]
    # history item 2 is removed; the unseen items 1, 4 tie at zero after item 3
    top = rec.recommend([[2]], k=2, exclude_history=True).tolist()
    assert top == [[0, 3]]


def test_bad_indices_are_rejected():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        Popularity.from_train_items(np.array([0, 3]), num_items=3)
