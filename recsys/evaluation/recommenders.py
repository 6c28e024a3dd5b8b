"""One interface for every method the harness evaluates.

A :class:`Recommender` turns a batch of histories into either catalogue scores
(``output = "scores"``: set identifiers, SASRec, popularity; ranked exactly over the
whole catalogue) or ranked lists (``output = "ranked"``: beam search, which only ever
produces its beam). Adapters wrap the trained models of each area without changing them.

Example:
    >>> rec = ScoringRecommender("popularity", lambda h: pop.score(h), num_items=pop.num_items)
    >>> rec.score([[1, 2], [3]]).shape      # (2, num_items)
    >>> rec.recommend([[1, 2]], k=10, exclude_history=True)
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

from recsys.evaluation.metrics import exclude_items


class Recommender:
    """Base class: ``score`` for catalogue scorers, ``rank`` for list generators.

    Attributes:
        name: method name used in reports.
        num_items: catalogue size.
        output: "scores" (full catalogue scores) or "ranked" (top-k lists only).
    """

    name: str = "recommender"
    num_items: int = 0
    output: Literal["scores", "ranked"] = "scores"

    def score(self, histories: list[list[int]]) -> torch.Tensor:
        """(B, num_items) scores for a batch of histories (item indices, oldest first)."""
        raise NotImplementedError(f"{type(self).__name__} produces ranked lists; call rank()")

    def rank(self, histories: list[list[int]], k: int, exclude: list[list[int]] | None = None) -> torch.Tensor:
        """(B, k) item indices, best first, padded with -1; ``exclude[row]`` never returned."""
        scores = self.score(histories).float()
        if exclude is not None:
            exclude_items(scores, exclude)
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        return torch.where(torch.isinf(top.values) & (top.values < 0), torch.full_like(top.indices, -1), top.indices)

    def recommend(self, histories: list[list[int]], k: int = 10, exclude_history: bool = True) -> torch.Tensor:
        """Top-k items per history, optionally never recommending history items."""
        with torch.no_grad():
            return self.rank(histories, k, histories if exclude_history else None)


class ScoringRecommender(Recommender):
    """Wraps a function ``histories -> (B, num_items) scores``.

    Args:
        name: method name.
        score_fn: the model's batched scoring function.
        num_items: catalogue size.
    """

    output = "scores"

    def __init__(self, name: str, score_fn: Callable[[list[list[int]]], torch.Tensor], num_items: int) -> None:
        self.name = name
        self.score_fn = score_fn
        self.num_items = num_items

    def score(self, histories: list[list[int]]) -> torch.Tensor:
        with torch.no_grad():
            return self.score_fn(histories)


class RankingRecommender(Recommender):
    """Wraps a function ``(histories, k, exclude) -> (B, k) ranked items`` (beam search).

    Args:
        name: method name.
        rank_fn: the model's batched list generator.
        num_items: catalogue size.
        max_k: the longest list it produces (the beam width).
    """

    output = "ranked"

    def __init__(
        self,
        name: str,
        rank_fn: Callable[[list[list[int]], int, list[list[int]] | None], torch.Tensor],
        num_items: int,
        max_k: int,
    ) -> None:
        self.name = name
        self.rank_fn = rank_fn
        self.num_items = num_items
        self.max_k = max_k

    def rank(self, histories: list[list[int]], k: int, exclude: list[list[int]] | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rank_fn(histories, min(k, self.max_k), exclude)
