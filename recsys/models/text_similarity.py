"""Content baseline: rank items by the cosine between their text and the user's recent items' texts.

The user query is the mean of the L2-normalised text embeddings of the last ``window``
history items (all of them when ``window`` is None); every catalogue item is scored by
its cosine to that query. Nothing is learned from interactions, so warm and cold items
are scored alike: it is the reference for "reachable through text alone", and the
harness picks ``window`` on the valid split (:meth:`TextSimilarity.fit`), never on test.

Example:
    >>> embeddings = load_text_embeddings("runs/bench/ml-100k/semantic", data.num_items)
    >>> model, valid = TextSimilarity.fit(data, embeddings)      # window chosen on valid NDCG@10
    >>> model.score([[1, 2], [3]]).shape                         # (2, num_items)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_WINDOWS: tuple[int | None, ...] = (1, 2, 3, 5, None)
"""Windows tried by :meth:`TextSimilarity.fit`; None averages the whole history."""


@dataclass
class TextSimilarity:
    """Cosine between item texts and the mean text of the last ``window`` history items.

    Attributes:
        embeddings: (num_items, dz) L2-normalised text embeddings (an all-zero row stays zero,
            so an item without usable text scores 0 for everyone).
        window: history items averaged into the query, most recent first; None for all.
    """

    embeddings: torch.Tensor
    window: int | None = 1

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2:
            raise ValueError(f"text embeddings must be (num_items, dim), got shape {tuple(self.embeddings.shape)}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be a positive number of history items or None, got {self.window}")

    @classmethod
    def from_embeddings(cls, embeddings: torch.Tensor, window: int | None = 1) -> "TextSimilarity":
        """Normalise ``embeddings`` (rows of any norm; zero rows stay zero) and wrap them."""
        return cls(torch.nn.functional.normalize(embeddings.float(), dim=1), window)

    @property
    def num_items(self) -> int:
        return int(self.embeddings.shape[0])

    def query(self, histories: list[list[int]]) -> torch.Tensor:
        """(B, dz) mean embedding of each history's last ``window`` items (zeros for an empty history)."""
        width = max((len(h) for h in histories), default=0)
        if self.window is not None:
            width = min(width, self.window)
        index = torch.full((len(histories), max(width, 1)), -1, dtype=torch.long)
        for row, history in enumerate(histories):
            recent = history[-width:] if width else []
            if recent:
                index[row, : len(recent)] = torch.as_tensor(recent, dtype=torch.long)
        if index.numel() and int(index.max()) >= self.num_items:
            raise ValueError(f"history item {int(index.max())} is outside the catalogue of {self.num_items} items")
        present = index >= 0
        vectors = self.embeddings[index.clamp(min=0)] * present.unsqueeze(-1)
        return vectors.sum(dim=1) / present.sum(dim=1, keepdim=True).clamp(min=1)

    def score(self, histories: list[list[int]]) -> torch.Tensor:
        """(B, num_items) cosine-style scores of every catalogue item for each history."""
        return self.query(histories) @ self.embeddings.T

    @classmethod
    def fit(cls, data, embeddings: torch.Tensor, windows: tuple[int | None, ...] = DEFAULT_WINDOWS,
            exclude_history: bool = True, batch_size: int = 256) -> tuple["TextSimilarity", dict[str, float]]:
        """Pick the window with the best valid NDCG@10 on ``data`` (a PreparedDataset).

        Returns the chosen model and its valid metrics (with ``window``, -1 meaning the whole history).
        Ties between windows keep the earlier one in ``windows``.
        """
        from recsys.evaluation.evaluate import evaluate
        from recsys.evaluation.groups import ItemGroups
        from recsys.evaluation.recommenders import ScoringRecommender

        if not windows:
            raise ValueError("windows must name at least one window")
        if embeddings.shape[0] != data.num_items:
            raise ValueError(f"text embeddings have {embeddings.shape[0]} rows, the dataset has {data.num_items} items")
        examples = data.eval_examples("valid")
        groups = ItemGroups.from_dataset(data)
        best: tuple[float, TextSimilarity, dict[str, float]] | None = None
        for window in windows:
            model = cls.from_embeddings(embeddings, window)
            result = evaluate(ScoringRecommender("text", model.score, model.num_items), examples, groups,
                              exclude_history=exclude_history, batch_size=batch_size)
            metrics = dict(result.summary["all"])
            metrics["window"] = -1.0 if window is None else float(window)
            if best is None or metrics["ndcg@10"] > best[0]:
                best = (metrics["ndcg@10"], model, metrics)
        assert best is not None
        return best[1], best[2]
