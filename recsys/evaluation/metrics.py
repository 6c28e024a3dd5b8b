"""Full-ranking metrics over the whole catalogue, batched (no loop over users).

Ties are counted against the gold item: an item scoring exactly as much as the gold
item ranks above it, so a constant scorer earns nothing.

Example:
    >>> scores = torch.tensor([[0.1, 0.9, 0.3]])
    >>> ranks = gold_ranks(scores, torch.tensor([2]))   # tensor([2])
    >>> loo_metrics(ranks, ks=(1, 2))["ndcg@2"]
"""

from __future__ import annotations

import math

import torch

DEFAULT_KS = (5, 10, 20)


def gold_ranks(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's gold item among all items.

    Args:
        scores: (B, num_items) scores; excluded items set to ``-inf`` beforehand.
        gold: (B,) gold item index per row.

    Returns:
        (B,) int64 ranks; ties are counted against the gold item.
    """
    gold_scores = scores.gather(1, gold.view(-1, 1))
    at_least = (scores >= gold_scores).sum(dim=1)
    return at_least.to(torch.int64)


def loo_metrics(ranks: torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Mean Recall/HR, NDCG and MRR at each k for one gold item per user.

    With one gold item, recall@k equals hit@k.
    """
    ranks = ranks.to(torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = (ranks <= k).to(torch.float64)
        out[f"recall@{k}"] = hit.mean().item()
        out[f"hr@{k}"] = hit.mean().item()
        out[f"ndcg@{k}"] = (hit / torch.log2(ranks + 1.0)).mean().item()
        out[f"mrr@{k}"] = (hit / ranks).mean().item()
    if ranks.numel() == 0:
        return {key: math.nan for key in out}
    return out


def exclude_items(scores: torch.Tensor, histories: list[list[int]], keep: torch.Tensor | None = None) -> torch.Tensor:
    """Set the score of each row's history items to ``-inf`` (in place), except ``keep[row]``.

    Args:
        scores: (B, num_items) scores.
        histories: item indices to exclude per row.
        keep: optional (B,) item per row that must stay scorable (the gold item).
    """
    rows = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(h) for h in histories]))
    cols = torch.tensor([i for h in histories for i in h], dtype=torch.int64)
    if cols.numel():
        saved = scores.gather(1, keep.view(-1, 1)).clone() if keep is not None else None
        scores[rows, cols] = -math.inf
        if keep is not None:
            scores.scatter_(1, keep.view(-1, 1), saved)
    return scores
