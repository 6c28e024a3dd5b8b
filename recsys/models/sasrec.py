"""SASRec: causal self-attention over item ids, trained with full-softmax cross-entropy.

The baseline sequential recommender and the source of the CF embeddings of the set
identifiers (ARCHITECTURE.md section 3.1). One file, top to bottom: the config, the
attention (a reference implementation and the fused path, tested equal), the block,
the model.

Inputs are item indices (``item_idx`` of the prepared dataset, 0-based). Histories are
LEFT-padded with :data:`PAD` (-1) so the most recent item is always the last column.
Positions count the real items from the oldest one kept (0 = the oldest of the at most
``max_len`` items read), as in RecBole, so a history padded to any width gets the same
scores, and the hidden state after item t of a window is exactly the state of the prefix
ending at t: one causal pass scores every prefix of a window (the fast training path).
Internally item ``i`` is token ``i + 1`` and token 0 is padding.

Layers follow the original post-norm Transformer block used by the SASRec
implementations people compare against: ``x = LN(x + Drop(Attn(x)))``,
``x = LN(x + Drop(FFN(x)))``, GELU, dropout on the embeddings, the attention weights and
both residual branches. The output layer is tied to the item embedding table, and the
score of item ``i`` is the inner product of the last hidden state with its embedding.

Decoupled embeddings (``embeddings="decoupled"``; DARE, Feng et al., "Long-Sequence Recommendation
Models Need Decoupled Embeddings", ICLR 2025, arXiv 2410.02604): one item table cannot serve both
attention (which history items matter) and representation (what is aggregated and scored) without
the two gradients interfering, and a linear projection of a shared table does not fix it; DARE
learns two tables. Here the model gets an attention table (num_items + 1, ``attention_size``) with
its own position embeddings; their normalised sum is the attention stream, and every block projects
its queries and keys from that stream alone, while values, the residual stream, the feed-forward
networks and the tied output layer read the item (representation) table as before. So attention
logits depend on the attention table only and scores are tied to the representation table. The
attention stream is the same input for every block (each block has its own query/key projection of
it): queries and keys of deeper blocks computed from the hidden state would read the representation
table again and bring the interference back. The attention table can be smaller than the hidden
size (default half, the paper's cheaper-search setting). ``embeddings="shared"`` (the default) is
the original SASRec, with the same weights and state-dict keys as before the option existed.

Example:
    >>> model = SASRec(num_items=1682, config=SASRecConfig())
    >>> histories = SASRec.pad_histories([[3, 7, 9], [12]], max_len=50)   # (2, 3)
    >>> model.eval(); model.score(histories).shape                         # (2, 1682)
    >>> model.item_embeddings().shape                                      # (1682, 64)
    >>> dare = SASRec(1682, SASRecConfig(embeddings="decoupled"))           # attention table (1683, 32)
    >>> dare.attention_embeddings().shape                                   # (1682, 32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError

#: Padding value of histories given to :meth:`SASRec.score` and :meth:`SASRec.forward`.
PAD = -1


@dataclass
class SASRecConfig:
    """Architecture and training settings of SASRec (defaults: the RecBole 1.2.1 setting of issue 3)."""

    hidden_size: int = 64
    """Size of item embeddings and hidden states; the CF embedding dimension."""
    num_layers: int = 2
    """Number of Transformer blocks."""
    num_heads: int = 2
    """Attention heads per block; must divide ``hidden_size``."""
    inner_size: int = 256
    """Hidden size of the position-wise feed-forward network."""
    max_len: int = 50
    """Most recent history items the model reads; older ones are cut off."""
    dropout: float = 0.5
    """Dropout on the embeddings and on both residual branches of every block."""
    attn_dropout: float = 0.5
    """Dropout on the attention weights."""
    layer_norm_eps: float = 1e-12
    """Epsilon of every LayerNorm."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation of embeddings and linear weights."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay (L2)."""
    train_samples: str = "windows"
    """How training targets are batched. "prefixes": the reference (RecBole's protocol), one
    sample per target with its own history of at most ``max_len`` items. "windows": the fast
    path, one causal pass per window of ``max_len`` items scores many targets at once; every
    target is scored once per epoch, as with "prefixes", and a target's history is the same
    whenever the user has at most ``max_len`` earlier train items (later ones see at least
    ``max_len - window_stride + 1`` of them)."""
    window_stride: int = 25
    """"windows" only: new targets per window after a user's first window (1 = exactly the prefixes; capped at ``max_len``)."""
    batch_size: int = 256
    """"prefixes" only: training samples (target prefixes) per step, RecBole's 256."""
    window_batch_size: int = 16
    """"windows" only: windows per step (on ML-100K about 430 targets per step)."""
    eval_batch_size: int = 1024
    """Users per batch when scoring the full catalogue for validation and test."""
    max_epochs: int = 200
    """Upper bound on training epochs."""
    patience: int = 10
    """Stop after this many validation rounds without a better validation NDCG@10."""
    min_epochs: int = 1
    """Train at least this many epochs before early stopping may stop."""
    seed: int = 2020
    """Seed of initialisation, shuffling and dropout."""
    num_workers: int = 0
    """DataLoader worker processes (0 = load in the training process)."""
    accelerator: str = "auto"
    """Lightning accelerator: "auto", "cpu", "gpu"."""
    align: Literal["none", "con", "gen"] = "none"
    """RLMRec cross-view alignment of CF and text (Ren et al., WWW 2024; ``recsys.models.rlmrec``), an
    auxiliary loss: "con" (RLMRec-Con, InfoNCE between CF and MLP-projected text representations),
    "gen" (RLMRec-Gen, reconstruct the text representation from masked CF representations), "none"
    (plain SASRec; the only setting that needs no text embeddings)."""
    align_weight: float = 0.1
    """Weight of the alignment loss next to the cross-entropy (RLMRec's kd_weight / recon_weight)."""
    align_temperature: float = 0.2
    """InfoNCE temperature of the alignment (RLMRec's kd_temperature / re_temperature, 0.2 in its configs)."""
    align_mask_ratio: float = 0.1
    """"gen" only: share of history positions whose input embedding is replaced by a learnt mask vector."""
    embeddings: Literal["shared", "decoupled"] = "shared"
    """Item tables of self-attention. "shared": one table feeds queries, keys, values and the tied output
    layer (original SASRec). "decoupled": DARE (Feng et al., ICLR 2025, arXiv 2410.02604, the DARE model
    section): a separate attention table (with its own position embeddings) feeds only the queries and
    keys of every block; values, the residual stream and the output layer use the representation
    table, which stays the CF embedding."""
    attention_size: int = 0
    """"decoupled" only: dimension of the attention table; 0 = ``hidden_size // 2`` (DARE's efficiency
    study, Feng et al., ICLR 2025: a smaller attention dimension costs little and makes the search cheaper)."""

    def __post_init__(self) -> None:
        checks = {
            "hidden_size": self.hidden_size > 0,
            "num_layers": self.num_layers > 0,
            "num_heads": self.num_heads > 0 and self.hidden_size % max(self.num_heads, 1) == 0,
            "inner_size": self.inner_size > 0,
            "max_len": self.max_len > 0,
            "dropout": 0.0 <= self.dropout < 1.0,
            "attn_dropout": 0.0 <= self.attn_dropout < 1.0,
            "lr": self.lr > 0,
            "batch_size": self.batch_size > 0,
            "window_batch_size": self.window_batch_size > 0,
            "eval_batch_size": self.eval_batch_size > 0,
            "max_epochs": self.max_epochs > 0,
            "patience": self.patience > 0,
            "train_samples": self.train_samples in ("prefixes", "windows"),
            "window_stride": self.window_stride > 0,
            "align": self.align in ("none", "con", "gen"),
            "align_weight": self.align_weight >= 0,
            "align_temperature": self.align_temperature > 0,
            "align_mask_ratio": 0.0 <= self.align_mask_ratio < 1.0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"SASRecConfig: invalid value of {', '.join(bad)} "
                f"({', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}); "
                "sizes must be positive, num_heads must divide hidden_size, dropouts lie in [0, 1), "
                "train_samples is 'prefixes' or 'windows', window_stride > 0, align is 'none', 'con' or 'gen', "
                "align_weight >= 0, align_temperature > 0, align_mask_ratio in [0, 1)"
            )
        if self.embeddings not in ("shared", "decoupled"):
            raise ConfigError(f"embeddings: must be 'shared' or 'decoupled', got {self.embeddings!r}")
        if self.attention_size < 0:
            raise ConfigError(f"attention_size: must be >= 0 (0 = hidden_size // 2), got {self.attention_size}")
        if self.embeddings == "shared" and self.attention_size != 0:
            raise ConfigError(
                f"attention_size: only used with embeddings='decoupled' (got attention_size={self.attention_size} with "
                "embeddings='shared'); set embeddings: decoupled, or leave attention_size at 0"
            )
        if self.embeddings == "decoupled" and self.attention_dim < 1:
            raise ConfigError(
                f"attention_size: 0 means hidden_size // 2, which is 0 for hidden_size={self.hidden_size}; give attention_size >= 1"
            )

    @property
    def attention_dim(self) -> int:
        """Dimension of the attention table of "decoupled" embeddings (``attention_size``, 0 resolved); 0 for "shared"."""
        if self.embeddings != "decoupled":
            return 0
        return self.attention_size or self.hidden_size // 2


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention written out (no dropout): the reference of :func:`attention`.

    Args:
        q, k, v: (B, H, L, D).
        allowed: (B, 1, L, L) bool, True where a query may attend to a key.
    """
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """Fused scaled dot-product attention, same signature and result as :func:`attention_reference`."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a given boolean mask.

    Shared embeddings: queries, keys and values are projections of the hidden state ``x``.
    Decoupled embeddings: queries and keys are projections of the attention stream ``a``
    (``attention_dim`` wide) and only values read ``x``, so the attention weights do not depend on
    the representation table.
    """

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.decoupled = config.embeddings == "decoupled"
        if self.decoupled:
            self.qk = nn.Linear(config.attention_dim, 2 * config.hidden_size)
            self.v = nn.Linear(config.hidden_size, config.hidden_size)
        else:
            self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = config.attn_dropout

    def heads(self, x: torch.Tensor, a: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values, each (B, H, L, D), of hidden states ``x`` (and the attention stream ``a``)."""
        batch, length, size = x.shape
        split = (batch, length, self.num_heads, size // self.num_heads)
        if not self.decoupled:
            q, k, v = self.qkv(x).view(*split[:2], 3, *split[2:]).permute(2, 0, 3, 1, 4)
            return q, k, v
        if a is None:
            raise ValueError("decoupled embeddings: the attention stream `a` is required")
        q, k = self.qk(a).view(*split[:2], 2, *split[2:]).permute(2, 0, 3, 1, 4)
        return q, k, self.v(x).view(split).transpose(1, 2)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, size = x.shape
        q, k, v = self.heads(x, a)
        y = attention(q, k, v, allowed, self.attn_dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, length, size))

    def probabilities(self, x: torch.Tensor, allowed: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
        """Attention weights (B, H, L, L) without dropout, written out as in :func:`attention_reference`."""
        q, k, _ = self.heads(x, a)
        logits = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
        return torch.softmax(logits, dim=-1)


class Block(nn.Module):
    """Post-norm Transformer block: attention then a GELU feed-forward network."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden_size, config.inner_size),
            nn.GELU(),
            nn.Linear(config.inner_size, config.hidden_size),
        )
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, a: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.attention(x, allowed, a)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class SASRec(nn.Module):
    """Self-attentive sequential recommender over ``num_items`` items.

    Args:
        num_items: catalogue size; items are ``0 .. num_items - 1``.
        config: architecture settings (training fields are ignored here).
    """

    def __init__(self, num_items: int, config: SASRecConfig | None = None) -> None:
        super().__init__()
        if num_items <= 0:
            raise ConfigError(f"SASRec: num_items must be positive, got {num_items}")
        self.config = config = config or SASRecConfig()
        self.num_items = num_items
        self.item_embedding = nn.Embedding(num_items + 1, config.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, config.hidden_size)
        self.embed_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        if config.embeddings == "decoupled":  # DARE: the attention table and its own positions (queries and keys only)
            self.attention_embedding = nn.Embedding(num_items + 1, config.attention_dim, padding_idx=0)
            self.attention_position_embedding = nn.Embedding(config.max_len, config.attention_dim)
            self.attention_norm = nn.LayerNorm(config.attention_dim, eps=config.layer_norm_eps)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    @staticmethod
    def pad_histories(histories: Sequence[Sequence[int]], max_len: int = 50) -> torch.LongTensor:
        """Keep the last ``max_len`` items of each history and left-pad with :data:`PAD`.

        Example:
            >>> SASRec.pad_histories([[1, 2, 3], [4]], max_len=2)
            tensor([[ 2,  3],
                    [-1,  4]])
        """
        cut = [list(h)[-max_len:] for h in histories]
        width = max((len(h) for h in cut), default=0) or 1
        out = torch.full((len(cut), width), PAD, dtype=torch.long)
        for row, items in enumerate(cut):
            if items:
                out[row, width - len(items) :] = torch.as_tensor(items, dtype=torch.long)
        return out

    def forward(self, histories: torch.Tensor, masked: torch.Tensor | None = None,
                mask_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden state after every position: (B, L) left-padded item indices -> (B, L, hidden).

        Position t only sees positions <= t (causal); padding is never attended to. Rows
        must be left-padded (padding only before the first real item).

        Args:
            histories: (B, L) item indices, -1 padding.
            masked: optional (B, L) bool: inputs replaced by ``mask_embedding`` (RLMRec-Gen's
                masking, ``recsys.models.rlmrec``); None in plain training and inference. With
                decoupled embeddings a masked input's attention-table row is dropped too (the
                attention stream keeps only its position), so the masked item is hidden from both.
            mask_embedding: (hidden,) the vector masked inputs get.
        """
        x, a, allowed = self._inputs(histories, masked, mask_embedding)
        for block in self.blocks:
            x = block(x, allowed, a)
        return x

    def _inputs(self, histories: torch.Tensor, masked: torch.Tensor | None = None,
                mask_embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Input states (B, L, hidden), the attention stream (B, L, attention_dim) or None, the mask (B, 1, L, L)."""
        if histories.shape[1] > self.config.max_len:
            if masked is not None:
                masked = masked[:, -self.config.max_len :]
            histories = histories[:, -self.config.max_len :]
        tokens = histories + 1  # PAD (-1) -> 0, item i -> i + 1
        length = tokens.shape[1]
        positions = ((tokens != 0).cumsum(dim=1) - 1).clamp(min=0)  # 0 = oldest real item of the row
        items = self.item_embedding(tokens)
        if masked is not None:
            items = torch.where(masked.unsqueeze(-1), mask_embedding.to(items), items)
        x = items + self.position_embedding(positions)
        x = self.embed_dropout(self.embed_norm(x))
        a = None
        if self.config.embeddings == "decoupled":
            keys = self.attention_embedding(tokens)
            if masked is not None:
                keys = keys.masked_fill(masked.unsqueeze(-1), 0.0)
            a = self.embed_dropout(self.attention_norm(keys + self.attention_position_embedding(positions)))
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        # Every query sees itself so that all-padding rows stay finite; padding keys are hidden otherwise.
        allowed = (causal & (tokens != 0)[:, None, :]) | torch.eye(length, dtype=torch.bool, device=tokens.device)
        return x, a, allowed[:, None]

    def attention_probabilities(self, histories: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights of every block, each (B, heads, L, L) (no attention dropout), for inspection and tests.

        Example:
            >>> [p.shape for p in model.eval().attention_probabilities(SASRec.pad_histories([[3, 7]], 50))]
        """
        x, a, allowed = self._inputs(histories)
        weights = []
        for block in self.blocks:
            weights.append(block.attention.probabilities(x, allowed, a))
            x = block(x, allowed, a)
        return weights

    def item_embeddings(self) -> torch.Tensor:
        """The (num_items, hidden) item embedding table (padding row dropped): the CF embeddings."""
        return self.item_embedding.weight[1:]

    def attention_embeddings(self) -> torch.Tensor:
        """The (num_items, d_a) table queries and keys are read from (padding row dropped).

        Decoupled embeddings: the attention table (d_a = ``config.attention_dim``); shared: :meth:`item_embeddings`.
        """
        if self.config.embeddings == "decoupled":
            return self.attention_embedding.weight[1:]
        return self.item_embeddings()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every item for hidden states of shape (..., hidden) -> (..., num_items)."""
        return hidden @ self.item_embeddings().T

    def score(self, histories: torch.Tensor) -> torch.Tensor:
        """Full-catalogue next-item scores: (B, L) left-padded histories -> (B, num_items).

        History items are NOT excluded (callers may use ``recsys.evaluation.metrics.exclude_items``).
        """
        return self.logits(self.forward(histories)[:, -1])
