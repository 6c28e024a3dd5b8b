"""Semantic tokens of an item from its text (ARCHITECTURE.md section 3.1).

A frozen text embedding z_i (all-MiniLM-L6-v2 by default, 384-d) passes through an MLP
autoencoder: the encoder (dz -> 512 -> 256 -> 128 -> N*d) gives the N semantic tokens,
the mirrored decoder reconstructs z_i. The autoencoder is trained jointly with the
recommender (weight alpha on its reconstruction MSE).

Example:
    >>> ae = SemanticAutoencoder(text_dim=384, num_tokens=4, token_dim=64)
    >>> tokens = ae.encode(torch.randn(8, 384))      # (8, 4, 64)
    >>> loss = ae.reconstruction_loss(torch.randn(8, 384))
"""

from __future__ import annotations

import torch
from torch import nn

HIDDEN_SIZES = (512, 256, 128)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SemanticAutoencoder(nn.Module):
    """MLP autoencoder from a text embedding to N semantic tokens of size d and back.

    Args:
        text_dim: size of the frozen text embedding (dz).
        num_tokens: N, semantic tokens per item.
        token_dim: d, the backbone hidden size.
        hidden_sizes: encoder hidden layers; the decoder mirrors them.
    """

    def __init__(
        self,
        text_dim: int,
        num_tokens: int,
        token_dim: int,
        hidden_sizes: tuple[int, ...] = HIDDEN_SIZES,
    ) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        sizes = [text_dim, *hidden_sizes, num_tokens * token_dim]
        self.encoder = _mlp(sizes)
        self.decoder = _mlp(sizes[::-1])

    def encode(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, dz) text embeddings -> (B, N, d) semantic tokens."""
        flat = self.encoder(text_embeddings)
        return flat.view(*text_embeddings.shape[:-1], self.num_tokens, self.token_dim)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, d) semantic tokens -> (B, dz) reconstructed text embeddings."""
        return self.decoder(tokens.flatten(-2))

    def forward(self, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (tokens, reconstruction)."""
        tokens = self.encode(text_embeddings)
        return tokens, self.decode(tokens)

    def reconstruction_loss(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error of the text embeddings."""
        _, reconstruction = self(text_embeddings)
        return nn.functional.mse_loss(reconstruction, text_embeddings)
