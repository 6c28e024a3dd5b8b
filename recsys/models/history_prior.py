"""The history prior: a copy expert that scores candidates against the recency-weighted history tokens.

For the prefix that ends at position p, dimension k of the prior is ``gain_k * sum_j w_j t_j^k``,
where t_j^k is token k of history item j and w_j ∝ exp(-rate * (p - j)) over the items j <= p
(normalised to sum 1). Its score of item i in dimension k is the inner product with t_i^k. With the
text-faithful semantic tokens (``semantic_tokens: projection``, :mod:`recsys.models.item_tokens`) the
semantic dimensions of the prior sum to the text similarity of the candidate to the recent history
when their gains are equal (token inner products are g^2 times those of the texts), a per-dimension
weighting of it otherwise; its CF dimension is the item-item similarity of CF tokens. It is a copy path in the sense of pointer-generator models (See et al.,
ACL 2017, section 2.2), applied to the set identifier's token space.

How it combines with the backbone (:class:`recsys.models.setrec.SetRecModel`): the model's query
state k is ``backbone_k + prior_k``, so its scores are the sum of the two experts' logits (a
product of experts, Hinton, Neural Computation 2002); in training each expert gets its own
cross-entropy per dimension, so neither can drown the other (they share the item tokens, which both
losses train). Measured on amazon-industrial (benchmarks/RESULTS.md, "history prior"): added with one
shared loss, the backbone's first epochs (states of root-mean-square 1 against item tokens of about
0.09) took valid NDCG@10 from 0.133 down to 0.093.

Learnt parameters: ``gain`` (K,), kept as its log so that optimiser steps scale it, and ``rate``
(softplus of a raw scalar, initialised 1.0 per item of distance). :meth:`HistoryPrior.calibrate`
starts the gain where the prior's logits are inner products over a temperature of 0.05, the usual
temperature of a cosine softmax (SimCSE, Gao et al., EMNLP 2021, section 3): measured on
amazon-industrial, a gain starting at 1 gave logits with a spread of 0.18 that Adam at lr 2e-3 had
only raised by a quarter after 4 epochs, and the under-confident prior lost the sum to the backbone
(valid NDCG@10 0.088 against 0.140 for the prior alone). The prior reads only items up to the prefix's end, so
all-prefix training stays equal to running each prefix alone (``tests/models/test_all_prefix.py``);
cold items take part through their semantic tokens.

Example:
    >>> prior = HistoryPrior(num_dimensions=5)
    >>> prior(tokens, valid).shape            # tokens (B, L, K, d) -> (B, K, d)
    >>> prior.packed(tokens, valid).shape     # -> (B, L, K, d), one per prefix end
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Values of ``model.history_prior``.
HISTORY_PRIORS = ("recency", "none")


class HistoryPrior(nn.Module):
    """The recency-weighted history tokens, per dimension (module docstring).

    Args:
        num_dimensions: K, item tokens per item of the model's token set.
        initial_rate: decay per item of distance, w ∝ exp(-rate * distance).
    """

    def __init__(self, num_dimensions: int, initial_rate: float = 1.0) -> None:
        super().__init__()
        self.log_gain = nn.Parameter(torch.zeros(num_dimensions))
        self.raw_rate = nn.Parameter(torch.tensor(math.log(math.expm1(initial_rate))))

    #: Temperature the gain starts from (:meth:`calibrate`).
    TEMPERATURE = 0.05

    @property
    def gain(self) -> torch.Tensor:
        """(K,) the positive gain of each dimension."""
        return self.log_gain.exp()

    @torch.no_grad()
    def calibrate(self, table: torch.Tensor) -> None:
        """Start the gain at 1 / (temperature * mean squared token norm) per dimension.

        Then a history of one item scores a candidate at (its tokens' cosine) / 0.05 per dimension,
        for token norms near the mean.

        Args:
            table: (num_items, K, d) item token table.
        """
        if table.is_meta or table.shape[0] == 0:
            return
        norm2 = table.float().pow(2).sum(-1).mean(0).clamp(min=1e-6)  # (K,)
        self.log_gain.copy_(-torch.log(self.TEMPERATURE * norm2))

    @property
    def rate(self) -> torch.Tensor:
        """The decay per item of distance (a positive scalar)."""
        return F.softplus(self.raw_rate)

    def _pool(self, weights: torch.Tensor, tokens: torch.Tensor, pattern: str) -> torch.Tensor:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-12)
        pooled = torch.einsum(pattern, weights.to(tokens.dtype), tokens)
        return self.gain.to(pooled.dtype)[:, None] * pooled

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """One prefix per row: (B, L, K, d) left-padded tokens, (B, L) valid -> (B, K, d) prior states.

        The last position is the most recent item (left padding), at distance 0; a row without
        items gives zeros.
        """
        length = tokens.shape[1]
        distance = torch.arange(length - 1, -1, -1, device=tokens.device, dtype=torch.float32)
        weights = torch.exp(-self.rate * distance)[None, :] * valid.float()  # (B, L)
        return self._pool(weights, tokens, "bl,blkd->bkd")

    def packed(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Every prefix of a row: (B, L, K, d) tokens -> (B, L, K, d) prior states, one per prefix end p.

        Prefix p pools the items j <= p with weights exp(-rate * (p - j)), as :meth:`forward` does
        on that prefix run alone; rows of padding positions are meaningless.
        """
        length = tokens.shape[1]
        position = torch.arange(length, device=tokens.device, dtype=torch.float32)
        distance = position[:, None] - position[None, :]  # (L, L): p - j
        decay = torch.exp(-self.rate * distance.clamp(min=0)) * (distance >= 0)
        weights = decay[None] * valid.float()[:, None, :]  # (B, L_p, L_j)
        return self._pool(weights, tokens, "bpl,blkd->bpkd")
