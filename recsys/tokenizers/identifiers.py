"""Set identifiers: the (num_items, N+1, d) token table of ARCHITECTURE.md section 3.1.

Token 0 of item i is its CF token ``c_i = W_cf e_i + b`` (e_i a frozen CF embedding);
tokens 1..N are its semantic tokens ``reshape(AE_enc(z_i))`` (z_i a frozen text
embedding). :class:`ItemTokenEncoder` holds both frozen embeddings and the trainable
projection and autoencoder; the recommender owns one and trains it jointly.

Unseen-item rule: an item without a train interaction has no CF signal. Its CF
embedding is the zero vector (flagged ``has_cf = False``), so its CF token is the
projection bias ``b`` and the item is told apart by its semantic tokens alone.

Example:
    >>> encoder = ItemTokenEncoder(cf, has_cf, text, num_semantic_tokens=4, token_dim=64)
    >>> encoder(torch.tensor([3, 7])).shape      # (2, 5, 64)
    >>> encoder.table().shape                     # (num_items, 5, 64)
"""

from __future__ import annotations

import torch
from torch import nn

from recsys.errors import ArtifactError
from recsys.tokenizers.semantic import SemanticAutoencoder


class ItemTokenEncoder(nn.Module):
    """Turns item indices into their N+1 tokens.

    Args:
        cf_embeddings: (num_items, cf_dim) frozen CF embeddings; rows of unseen items are zero.
        has_cf: (num_items,) bool, False for items without a train interaction.
        text_embeddings: (num_items, dz) frozen text embeddings.
        num_semantic_tokens: N.
        token_dim: d, the backbone hidden size.
    """

    def __init__(
        self,
        cf_embeddings: torch.Tensor,
        has_cf: torch.Tensor,
        text_embeddings: torch.Tensor,
        num_semantic_tokens: int,
        token_dim: int,
    ) -> None:
        super().__init__()
        if cf_embeddings.ndim != 2 or text_embeddings.ndim != 2:
            raise ArtifactError(
                f"embeddings must be 2-D: cf {tuple(cf_embeddings.shape)}, text {tuple(text_embeddings.shape)}"
            )
        if cf_embeddings.shape[0] != text_embeddings.shape[0] or has_cf.shape != (cf_embeddings.shape[0],):
            raise ArtifactError(
                f"item counts differ: cf {cf_embeddings.shape[0]}, text {text_embeddings.shape[0]}, "
                f"has_cf {tuple(has_cf.shape)}; build both from the same prepared dataset"
            )
        cf = cf_embeddings.float().clone()
        cf[~has_cf.bool()] = 0.0  # the unseen-item rule, whatever the source wrote there
        self.register_buffer("cf_embeddings", cf)
        self.register_buffer("has_cf", has_cf.bool().clone())
        self.register_buffer("text_embeddings", text_embeddings.float().clone())
        self.num_semantic_tokens = num_semantic_tokens
        self.token_dim = token_dim
        self.cf_projection = nn.Linear(cf.shape[1], token_dim)
        self.autoencoder = SemanticAutoencoder(text_embeddings.shape[1], num_semantic_tokens, token_dim)

    @property
    def num_items(self) -> int:
        return self.cf_embeddings.shape[0]

    @property
    def tokens_per_item(self) -> int:
        return self.num_semantic_tokens + 1

    def tokens_from_embeddings(self, cf: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, cf_dim), (B, dz) -> (B, N+1, d): CF token first, then the semantic tokens."""
        cf_token = self.cf_projection(cf).unsqueeze(-2)
        return torch.cat([cf_token, self.autoencoder.encode(text)], dim=-2)

    def forward(self, item_idx: torch.Tensor) -> torch.Tensor:
        """Item indices of any shape -> tokens of shape (*item_idx.shape, N+1, d)."""
        flat = item_idx.reshape(-1)
        tokens = self.tokens_from_embeddings(self.cf_embeddings[flat], self.text_embeddings[flat])
        return tokens.view(*item_idx.shape, self.tokens_per_item, self.token_dim)

    def table(self, batch_size: int = 65536) -> torch.Tensor:
        """The whole (num_items, N+1, d) token table, computed in batches."""
        parts = [
            self.tokens_from_embeddings(self.cf_embeddings[start : start + batch_size], self.text_embeddings[start : start + batch_size])
            for start in range(0, self.num_items, batch_size)
        ]
        return torch.cat(parts, dim=0)

    def reconstruction_loss(self, item_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Autoencoder MSE on the text embeddings of ``item_idx`` (all items when None)."""
        text = self.text_embeddings if item_idx is None else self.text_embeddings[item_idx.reshape(-1)]
        return self.autoencoder.reconstruction_loss(text)
