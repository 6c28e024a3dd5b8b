"""RLMRec cross-view alignment of CF and text representations, as an auxiliary loss of SASRec.

Source: Ren et al., "Representation Learning with Large Language Models for Recommendation",
WWW 2024 (RLMRec; official code HKUDS/RLMRec). Section 3 (Methodology, "Density Estimation with
Mutual Information Maximization") aligns the collaborative representation ``e`` of every user and
item with a semantic representation ``s`` of its profile, in two ways:

- RLMRec-Con (contrastive alignment): ``s`` is projected into the CF space by an
  MLP and pulled towards ``e`` by InfoNCE with cosine similarity and a temperature; the other
  profiles of the batch are the negatives.
- RLMRec-Gen (generative alignment, masked-autoencoder style): a share of the CF inputs is masked (a
  learnable mask vector replaces them) and an MLP reconstructs the semantic vector from the
  CF representation, scored by the same in-batch contrastive objective (the official code's
  ``ssl_con_loss``).

Profiles (the paper builds them with an LLM, section 3 "User/Item Profiling Paradigm"; here
no LLM is called):

- item profile ``s_i``: the item's text embedding ``z_i`` (``recsys tokenize semantic``,
  all-MiniLM-L6-v2 by default);
- user profile: the mean text embedding of the train items the user's representation has read,
  i.e. for SASRec's hidden state after position t of a train window, the mean of ``z`` over the
  window's items up to and including t (train items only: windows are cut from the train split).

CF representations in SASRec: an item's is its row of the (tied) item embedding table, the CF
embedding that ``recsys tokenize cf`` writes; a user's is the hidden state after each position.

Example:
    >>> align = CFTextAlignment(text, cf_dim=64, mode="con", temperature=0.2)
    >>> hidden = model(histories)                       # (B, L, 64)
    >>> loss = align.loss(model, histories, hidden)     # scalar
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError

AlignMode = Literal["none", "con", "gen"]
ALIGN_MODES = ("none", "con", "gen")


def infonce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE of rows of ``anchors`` against the same rows of ``positives`` (in-batch negatives).

    Cosine similarity divided by ``temperature``; row r's positive is ``positives[r]``, its
    negatives every other row of ``positives`` (RLMRec's alignment objective; the official code's
    ``cal_infonce_loss`` / ``ssl_con_loss``).

    Args:
        anchors: (M, D).
        positives: (M, D).
        temperature: > 0.

    Returns:
        scalar; 0 when M == 0.

    Example:
        >>> infonce(torch.eye(3), torch.eye(3), 0.1) < infonce(torch.eye(3), torch.eye(3).roll(1, 0), 0.1)   # tensor(True)
    """
    if anchors.shape[0] == 0:
        return anchors.sum() * 0.0
    logits = F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(anchors.shape[0], device=anchors.device))


def mlp(inputs: int, outputs: int) -> nn.Sequential:
    """RLMRec's two-layer MLP: inputs -> (inputs + outputs) // 2 -> outputs, LeakyReLU, Xavier-initialised."""
    hidden = (inputs + outputs) // 2
    net = nn.Sequential(nn.Linear(inputs, hidden), nn.LeakyReLU(), nn.Linear(hidden, outputs))
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return net


class CFTextAlignment(nn.Module):
    """The RLMRec alignment head of SASRec (kept out of the saved SASRec model).

    Args:
        text_embeddings: (num_items, dz) item profiles (text embeddings), row = item_idx.
        cf_dim: SASRec's hidden size.
        mode: ``con`` (RLMRec-Con) or ``gen`` (RLMRec-Gen).
        temperature: InfoNCE temperature.
        mask_ratio: ``gen`` only: share of history positions whose input is masked.
    """

    def __init__(self, text_embeddings: torch.Tensor, cf_dim: int, mode: AlignMode, temperature: float,
                 mask_ratio: float = 0.1) -> None:
        super().__init__()
        if mode not in ("con", "gen"):
            raise ConfigError(f"SASRecConfig.align: the alignment head needs 'con' or 'gen', got {mode!r}")
        if text_embeddings.ndim != 2:
            raise ConfigError(f"text embeddings must be (num_items, dz), got {tuple(text_embeddings.shape)}")
        self.mode = mode
        self.temperature = temperature
        self.mask_ratio = mask_ratio
        self.register_buffer("text", text_embeddings.float().clone(), persistent=False)
        dz = text_embeddings.shape[1]
        if mode == "con":
            self.project = mlp(dz, cf_dim)  # semantic -> CF space
        else:
            self.reconstruct = mlp(cf_dim, dz)  # CF -> semantic space
            self.mask_embedding = nn.Parameter(torch.zeros(cf_dim))
            nn.init.normal_(self.mask_embedding, std=0.02)

    def input_mask(self, histories: torch.Tensor) -> torch.Tensor | None:
        """``gen`` in training: (B, L) bool, a random ``mask_ratio`` of the real history positions; else None."""
        if self.mode != "gen" or not self.training or self.mask_ratio <= 0:
            return None
        return (torch.rand(histories.shape, device=histories.device) < self.mask_ratio) & (histories >= 0)

    def user_profiles(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded item indices (-1 padding) -> (B, L, dz): mean text of the items up to each position."""
        real = (histories >= 0).unsqueeze(-1).to(self.text.dtype)
        texts = self.text[histories.clamp(min=0)] * real
        return texts.cumsum(dim=1) / real.cumsum(dim=1).clamp(min=1.0)

    def loss(self, item_table: torch.Tensor, histories: torch.Tensor, hidden: torch.Tensor, users: torch.Tensor,
             items: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        """Item alignment plus user alignment (RLMRec section 3, cross-view alignment), each a mean InfoNCE.

        Args:
            item_table: (num_items, cf_dim) SASRec item embeddings (CF representations of items).
            histories: (B, L) left-padded inputs of the batch.
            hidden: (B, L, cf_dim) SASRec hidden states of ``histories`` (CF representations of users).
            users: (B, L) bool, the positions whose state is a user representation (scored positions).
            items: (M,) item indices of the batch (history items and targets; duplicates allowed).
            masked: ``gen``: (B, L) bool, positions whose input was masked; the user term then uses these.

        Returns:
            scalar loss.
        """
        items = torch.unique(items[items >= 0])
        cf_items, text_items = item_table[items], self.text[items]
        profiles = self.user_profiles(histories)
        if self.mode == "con":
            item_loss = infonce(cf_items, self.project(text_items), self.temperature)
            user_loss = infonce(hidden[users], self.project(profiles[users]), self.temperature)
        else:
            item_loss = infonce(self.reconstruct(cf_items), text_items, self.temperature)
            rows = users if masked is None else masked
            user_loss = infonce(self.reconstruct(hidden[rows]), profiles[rows], self.temperature)
        return item_loss + user_loss
