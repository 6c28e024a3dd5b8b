"""Full-ranking metrics over the whole catalogue, batched (no loop over users).

Two protocols share one definition. Leave-one-out has one gold item per user; the
temporal protocol has a set of gold items per user. For a user with gold set G and a
cut-off K, with rank(g) the 1-based rank of gold item g among all items:

- Recall@K = |{g : rank(g) <= K}| / |G|
- HR@K     = 1 if any rank(g) <= K else 0
- MRR@K    = 1 / min_g rank(g) when that rank is <= K, else 0
- NDCG@K   = DCG / IDCG, DCG = sum_{rank(g) <= K} 1 / log2(rank(g) + 1),
             IDCG = sum_{i=1}^{min(|G|, K)} 1 / log2(i + 1)

With one gold item these reduce to the usual leave-one-out numbers (recall = HR).

Ties are counted against the gold item: an item scoring exactly as much as the gold
item ranks above it, so a constant scorer earns nothing. A gold item that a ranked
list (beam search) does not contain has rank infinity. Users with an empty gold set
get NaN per-user metrics; :func:`mean_metrics` skips them and counts them.

Example:
    >>> scores = torch.tensor([[0.1, 0.9, 0.3]])
    >>> ranks = gold_ranks(scores, torch.tensor([2]))   # tensor([2])
    >>> loo_metrics(ranks, ks=(1, 2))["ndcg@2"]
    >>> gold = pad_gold([[2, 0]])
    >>> per_user_metrics(set_ranks(scores, gold), gold >= 0, ks=(2,))["recall@2"]   # tensor([0.5])
"""

from __future__ import annotations

import math

import torch

DEFAULT_KS = (5, 10, 20)
METRIC_NAMES = ("recall", "ndcg", "hr", "mrr")


def metric_keys(ks: tuple[int, ...] = DEFAULT_KS) -> list[str]:
    """Names of every metric at every cut-off, e.g. ``["recall@5", "ndcg@5", ...]``."""
    return [f"{name}@{k}" for k in ks for name in METRIC_NAMES]


class DivergedScoresError(ValueError):
    """Scores holding NaN: the model diverged, and no rank of them means anything."""


def check_scores(scores: torch.Tensor) -> None:
    """Raise :class:`DivergedScoresError` when ``scores`` hold a NaN.

    A NaN compares False with everything, so without this check a NaN gold score would
    rank first (rank 0: Recall 1, NDCG ``inf``) and a diverged run would look perfect.
    ``-inf`` (excluded items) and ``+inf`` are ranked as numbers.

    Example:
        >>> check_scores(torch.tensor([[0.1, float("nan")]]))   # raises DivergedScoresError
    """
    nan = torch.isnan(scores)
    if nan.any():
        rows = int(nan.any(dim=-1).sum()) if scores.dim() > 1 else 1
        raise DivergedScoresError(
            f"scores contain NaN in {rows} of {scores.shape[0] if scores.dim() > 1 else 1} rows: the model diverged "
            "(its scores are not numbers), so no metric of them means anything; lower the learning rate, "
            "clip gradients or check the inputs, and train again"
        )


def gold_ranks(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's gold item among all items.

    Args:
        scores: (B, num_items) scores; excluded items set to ``-inf`` beforehand.
        gold: (B,) gold item index per row.

    Returns:
        (B,) int64 ranks; ties are counted against the gold item.

    Raises:
        DivergedScoresError: a score is NaN (see :func:`check_scores`).
    """
    check_scores(scores)
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
        keep: optional (B,) item per row that must stay scorable (the gold item), or
            (B, G) items per row padded with -1 (a gold set).
    """
    rows = torch.repeat_interleave(torch.arange(len(histories)), torch.tensor([len(h) for h in histories], dtype=torch.int64))
    cols = torch.tensor([i for h in histories for i in h], dtype=torch.int64)
    if cols.numel():
        if keep is not None:
            keep2d = keep.view(len(histories), -1)
            valid = keep2d >= 0
            safe = keep2d.clamp(min=0)
            saved = scores.gather(1, safe).clone()
        scores[rows, cols] = -math.inf
        if keep is not None:
            current = scores.gather(1, safe)
            scores.scatter_(1, safe, torch.where(valid, saved, current))
    return scores


def pad_gold(gold: list[list[int]], pad: int = -1) -> torch.Tensor:
    """Gold sets as a (B, G) int64 tensor, G the largest set, padded with ``pad``.

    Example:
        >>> pad_gold([[3], [1, 2]])   # tensor([[3, -1], [1, 2]])
    """
    width = max((len(g) for g in gold), default=0)
    out = torch.full((len(gold), max(width, 1)), pad, dtype=torch.int64)
    for row, items in enumerate(gold):
        if items:
            out[row, : len(items)] = torch.as_tensor(items, dtype=torch.int64)
    return out


def set_ranks_reference(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Reference for :func:`set_ranks`: a plain comparison per gold item (slow, clear).

    Returns (B, G) float64 ranks, ``inf`` at padding (-1).
    """
    out = torch.full(gold.shape, math.inf, dtype=torch.float64)
    for row in range(gold.shape[0]):
        for col in range(gold.shape[1]):
            item = int(gold[row, col])
            if item >= 0:
                out[row, col] = float((scores[row] >= scores[row, item]).sum())
    return out


def set_ranks(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """1-based rank of every gold item among all items, batched (ties against the gold item).

    Args:
        scores: (B, num_items) scores; excluded items set to ``-inf`` beforehand.
        gold: (B, G) gold items padded with -1 (see :func:`pad_gold`).

    Returns:
        (B, G) float64 ranks, ``inf`` at padding.

    Raises:
        DivergedScoresError: a score is NaN (see :func:`check_scores`).

    Example:
        >>> set_ranks(torch.tensor([[0.1, 0.9, 0.3]]), torch.tensor([[2, 0]]))   # [[2., 3.]]
    """
    check_scores(scores)
    ascending = scores.sort(dim=1).values.contiguous()
    gold_scores = scores.gather(1, gold.clamp(min=0)).contiguous()
    # items strictly below the gold score = searchsorted(left); rank = num_items - that
    below = torch.searchsorted(ascending, gold_scores, side="left")
    ranks = (scores.shape[1] - below).to(torch.float64)
    return torch.where(gold >= 0, ranks, torch.full_like(ranks, math.inf))


def list_ranks(ranked: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Rank of every gold item inside ranked lists (beam search output); ``inf`` when absent.

    Args:
        ranked: (B, L) item indices, best first, padded with -1.
        gold: (B, G) gold items padded with -1.

    Returns:
        (B, G) float64 ranks (1-based).

    Example:
        >>> list_ranks(torch.tensor([[4, 2, 7]]), torch.tensor([[7, 9]]))   # [[3., inf]]
    """
    match = (ranked.unsqueeze(1) == gold.unsqueeze(2)) & (gold.unsqueeze(2) >= 0)  # (B, G, L)
    positions = torch.arange(1, ranked.shape[1] + 1, dtype=torch.float64)
    found = torch.where(match, positions, torch.full_like(positions, math.inf))
    return found.min(dim=2).values if ranked.shape[1] else torch.full(gold.shape, math.inf, dtype=torch.float64)


def set_ranks_among(scores: torch.Tensor, gold: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """1-based rank of every gold item among the ``candidates`` items only (ties against the gold item).

    The restricted protocol of the SETRec paper's cold-start evaluation (``recsys.evaluation.groups``):
    a cold gold item competes with cold items only. Ranks of gold items outside ``candidates`` are
    ``inf`` (callers mask them out).

    Args:
        scores: (B, num_items) scores, excluded items already ``-inf``.
        gold: (B, G) gold items padded with -1.
        candidates: (num_items,) bool, the items a gold item is ranked against.

    Returns:
        (B, G) float64 ranks.

    Example:
        >>> set_ranks_among(torch.tensor([[0.9, 0.1, 0.5]]), torch.tensor([[2]]), torch.tensor([False, True, True]))   # [[1.]]
    """
    restricted = scores.masked_fill(~candidates.to(scores.device).unsqueeze(0), -math.inf)
    ranks = set_ranks(restricted, gold)
    inside = candidates.to(gold.device)[gold.clamp(min=0)] & (gold >= 0)
    return torch.where(inside, ranks, torch.full_like(ranks, math.inf))


def list_ranks_among(ranked: torch.Tensor, gold: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Rank of every gold item inside ranked lists after dropping the items outside ``candidates``.

    For list generators (beam search) the restricted protocol can only filter the list the model
    produced: a candidate it did not generate stays unranked (``inf``).

    Args:
        ranked: (B, L) item indices, best first, padded with -1.
        gold: (B, G) gold items padded with -1.
        candidates: (num_items,) bool.

    Returns:
        (B, G) float64 ranks (1-based), ``inf`` when absent or outside ``candidates``.

    Example:
        >>> list_ranks_among(torch.tensor([[4, 2, 7]]), torch.tensor([[7]]), torch.tensor([0, 0, 1, 0, 0, 0, 0, 1]).bool())   # [[2.]]
    """
    if ranked.shape[1] == 0:
        return torch.full(gold.shape, math.inf, dtype=torch.float64)
    keep = (ranked >= 0) & candidates[ranked.clamp(min=0)]
    positions = keep.cumsum(dim=1).to(torch.float64)  # (B, L): position among the kept items
    match = (ranked.unsqueeze(1) == gold.unsqueeze(2)) & (gold.unsqueeze(2) >= 0) & keep.unsqueeze(1)  # (B, G, L)
    found = torch.where(match, positions.unsqueeze(1), torch.full_like(positions.unsqueeze(1), math.inf))
    return found.min(dim=2).values


def per_user_metrics(ranks: torch.Tensor, mask: torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, torch.Tensor]:
    """Recall, NDCG, HR and MRR at each k for every user (row), from gold ranks.

    Args:
        ranks: (B, G) float ranks of each gold item (``inf`` when not retrieved).
        mask: (B, G) bool, True where the column is a real gold item.
        ks: cut-offs.

    Returns:
        name -> (B,) float64; NaN for rows with no gold item.

    Example:
        >>> per_user_metrics(torch.tensor([[1.0, 4.0]]), torch.tensor([[True, True]]), ks=(2,))
    """
    ranks = torch.where(mask, ranks.to(torch.float64), torch.full_like(ranks, math.inf, dtype=torch.float64))
    num_gold = mask.sum(dim=1).to(torch.float64)
    empty = num_gold == 0
    best = ranks.min(dim=1).values if ranks.shape[1] else torch.full((ranks.shape[0],), math.inf, dtype=torch.float64)
    nan = torch.full_like(num_gold, math.nan)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = ranks <= k
        hits = hit.sum(dim=1).to(torch.float64)
        dcg = torch.where(hit, 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks)).sum(dim=1)
        ideal_n = torch.clamp(num_gold, max=k).to(torch.int64)
        discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
        cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), discounts.cumsum(0)])
        idcg = cumulative[ideal_n]
        out[f"recall@{k}"] = torch.where(empty, nan, hits / num_gold.clamp(min=1))
        out[f"ndcg@{k}"] = torch.where(empty, nan, dcg / idcg.clamp(min=1e-12))
        out[f"hr@{k}"] = torch.where(empty, nan, (hits > 0).to(torch.float64))
        out[f"mrr@{k}"] = torch.where(empty, nan, torch.where(best <= k, 1.0 / best, torch.zeros_like(best)))
    return out


def mean_metrics(per_user: dict[str, torch.Tensor]) -> tuple[dict[str, float], int]:
    """Mean of each per-user metric over users with a gold item.

    Returns:
        (means, skipped): NaN means when every row was empty; ``skipped`` counts the
        rows with an empty gold set (identical for every metric).
    """
    means: dict[str, float] = {}
    skipped = 0
    for name, values in per_user.items():
        valid = ~torch.isnan(values)
        skipped = int((~valid).sum())
        means[name] = values[valid].mean().item() if valid.any() else math.nan
    return means, skipped
