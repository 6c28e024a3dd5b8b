"""The trainable item-token encoder: each item's N+1 tokens (ARCHITECTURE.md section 3.1).

Token 0 of item i is its CF token ``c_i = W_cf e_i + b`` (e_i a frozen CF embedding);
tokens 1..N are its semantic tokens, made from z_i (a frozen text embedding) in one of three
ways (``semantic``, see :data:`SEMANTIC_MODES`):

- ``projection`` (the default of the training job): ``g * reshape(T z_i)`` with T a fixed
  (N*d, dz) map with orthonormal columns (the top principal directions of the train items'
  texts, spread over the N tokens by a seeded random rotation) and g one learnt gain. Inner
  products between items' semantic tokens are g^2 times those of their texts whenever
  N*d >= dz (exactly; the best rank-N*d approximation otherwise), so the text geometry is
  kept by construction, for every item including ones added later, while the tokens still
  enter the backbone and are scored in training.
- ``residual``: the projection plus ``reshape(AE_enc(z_i))``, the autoencoder's last layer
  zero-initialised, so training starts from the projection and learns a correction.
- ``autoencoder``: ``reshape(AE_enc(z_i))`` alone, trained jointly (ARCHITECTURE.md 3.1 as
  first built). Measured on amazon-industrial it kept 1.2% of each item's text 10-NN by
  inner product (benchmarks/RESULTS.md): the cross-entropy turns the tokens into warm-item
  identity codes, which is why it is no longer the default.

:class:`ItemTokenEncoder` holds both frozen embeddings and the trainable parts; the
recommender owns one and trains it jointly.

Unseen-item rule: an item without a train interaction has no CF signal (``has_cf = False``).
When the encoder holds a text->CF map (fitted on warm items only,
:mod:`recsys.tokenizers.text_to_cf`; ARCHITECTURE.md 3.1) its CF embedding is predicted from its
text and flagged ``cf_predicted = True``, for catalogue items and for items added later
(:meth:`ItemTokenEncoder.add_items`, the service's ``POST /v1/items``). Without a map (older
tables and bundles, or ``cold_cf: zero``) it is the zero vector, so its CF token is the
projection bias ``b`` and the item is told apart by its semantic tokens alone.

The token-table artifact made with it (``recsys tokenize table``) is
:mod:`recsys.tokenizers.identifiers`; :func:`recsys.tokenizers.identifiers.build_item_encoder`
builds an encoder from a prepared dataset's CF and text artifacts.

Example:
    >>> encoder = ItemTokenEncoder(cf, has_cf, text, num_semantic_tokens=4, token_dim=64)
    >>> encoder(torch.tensor([3, 7])).shape      # (2, 5, 64)
    >>> encoder.table().shape                     # (num_items, 5, 64)
    >>> new = encoder.add_items(text_embeddings=torch.randn(2, text.shape[1]))   # tensor([n, n+1])
"""

from __future__ import annotations

import math

import torch
from torch import nn

from recsys.errors import ArtifactError, ConfigError
from recsys.tokenizers.semantic import SemanticAutoencoder

#: How semantic tokens are made (module docstring).
SEMANTIC_MODES = ("projection", "residual", "autoencoder")


class ItemTokenEncoder(nn.Module):
    """Turns item indices into their N+1 tokens.

    Args:
        cf_embeddings: (num_items, cf_dim) frozen CF embeddings; rows of unseen items are zero.
        has_cf: (num_items,) bool, False for items without a train interaction.
        text_embeddings: (num_items, dz) frozen text embeddings.
        num_semantic_tokens: N.
        token_dim: d, the backbone hidden size.
        semantic: how semantic tokens are made: ``projection``, ``residual`` or ``autoencoder``
            (module docstring). The text map starts from all rows of ``text_embeddings``;
            :meth:`fit_text_projection` refits it (the training job: train items only).
        cf_predicted: optional (num_items,) bool, rows (all with ``has_cf`` False) whose CF embedding
            in ``cf_embeddings`` was predicted from text and is kept; other rows without CF are zeroed.
        text_to_cf: optional :class:`~recsys.tokenizers.text_to_cf.TextToCF` (fitted on warm items
            only), stored in the state (buffers ``text_to_cf_weight``, ``text_to_cf_bias``) so
            :meth:`add_items` predicts new items' CF embeddings and bundles carry it.
    """

    #: State keys older tables and bundles lack; loading fills them with "no prediction, no map".
    OPTIONAL_STATE = ("cf_predicted", "text_to_cf_weight", "text_to_cf_bias", "has_text_to_cf")

    def __init__(
        self,
        cf_embeddings: torch.Tensor,
        has_cf: torch.Tensor,
        text_embeddings: torch.Tensor,
        num_semantic_tokens: int,
        token_dim: int,
        semantic: str = "projection",
        cf_predicted: torch.Tensor | None = None,
        text_to_cf=None,
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
        predicted = torch.zeros_like(has_cf, dtype=torch.bool) if cf_predicted is None else cf_predicted.bool().clone()
        if predicted.shape != has_cf.shape or bool((predicted & has_cf.bool()).any()):
            raise ArtifactError(f"cf_predicted must be ({has_cf.shape[0]},) bool and False wherever has_cf is True")
        cf = cf_embeddings.float().clone()
        cf[~has_cf.bool() & ~predicted] = 0.0  # the unseen-item rule, whatever the source wrote there
        self.register_buffer("cf_embeddings", cf)
        self.register_buffer("has_cf", has_cf.bool().clone())
        self.register_buffer("cf_predicted", predicted)
        self.register_buffer("text_embeddings", text_embeddings.float().clone())
        dz, cf_dim = text_embeddings.shape[1], cf.shape[1]
        self.register_buffer("text_to_cf_weight", torch.zeros(dz, cf_dim))
        self.register_buffer("text_to_cf_bias", torch.zeros(cf_dim))
        self.register_buffer("has_text_to_cf", torch.tensor(False))
        if text_to_cf is not None:
            if tuple(text_to_cf.weight.shape) != (dz, cf_dim):
                raise ArtifactError(f"text->CF map is {tuple(text_to_cf.weight.shape)}, the encoder reads {dz}-d text and "
                                    f"{cf_dim}-d CF embeddings; fit it on the same artifacts")
            self.text_to_cf_weight.copy_(text_to_cf.weight)
            self.text_to_cf_bias.copy_(text_to_cf.bias)
            self.has_text_to_cf.fill_(True)
        self.num_semantic_tokens = num_semantic_tokens
        self.token_dim = token_dim
        if semantic not in SEMANTIC_MODES:
            raise ConfigError(f"semantic tokens must be one of {SEMANTIC_MODES}, got {semantic!r}")
        self.semantic = semantic
        self.cf_projection = nn.Linear(cf.shape[1], token_dim)
        # The autoencoder always exists (the table artifact and its health report read it); in
        # ``projection`` mode it takes no part in the tokens and is frozen.
        self.autoencoder = SemanticAutoencoder(text_embeddings.shape[1], num_semantic_tokens, token_dim)
        if semantic != "autoencoder":
            dz, m = text_embeddings.shape[1], num_semantic_tokens * token_dim
            self.register_buffer("text_projection", torch.zeros(m, dz))
            self.log_text_gain = nn.Parameter(torch.zeros(()))
            self.fit_text_projection(self.text_embeddings)
        if semantic == "projection":
            self.autoencoder.requires_grad_(False)
        if semantic == "residual":
            last = self.autoencoder.encoder[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @property
    def has_autoencoder(self) -> bool:
        """True when the autoencoder makes (part of) the semantic tokens, so its MSE is trained."""
        return self.semantic != "projection"

    @torch.no_grad()
    def fit_text_projection(self, texts: torch.Tensor, seed: int = 0) -> None:
        """Fit the fixed text map T and the initial gain from ``texts`` (rows of text embeddings).

        T = R V_r^T: V_r the top r = min(N*d, dz) right singular vectors of ``texts``
        (uncentred, so inner products, not covariances, are kept), R a seeded random (N*d, r)
        matrix with orthonormal columns that spreads every direction over all N tokens. The gain
        starts where the semantic tokens have the root-mean-square size of the CF tokens, so
        neither kind dominates the backbone input at the start.

        Args:
            texts: (M, dz) text embeddings; the training job passes the train items' rows only.
            seed: seeds R.
        """
        if self.semantic == "autoencoder":
            raise ConfigError("fit_text_projection: this encoder makes semantic tokens with the autoencoder only")
        m, dz = self.text_projection.shape
        rank = min(m, dz)
        sample = texts.float()[:65536]
        if sample.is_meta or self.text_projection.is_meta:  # a shell whose weights a bundle load fills in
            return
        if sample.shape[0] == 0 or not bool(sample.abs().sum() > 0):  # zeros: the same, on the CPU
            return
        _, _, vh = torch.linalg.svd(sample, full_matrices=False)
        directions = torch.zeros(rank, dz)
        directions[: vh.shape[0]] = vh[:rank]
        generator = torch.Generator().manual_seed(seed)
        rotation, _ = torch.linalg.qr(torch.randn(m, rank, generator=generator))
        self.text_projection.copy_(rotation @ directions)
        cf_rows = self.cf_embeddings[self.has_cf][:4096]
        cf_rms = float(self.cf_projection(cf_rows).pow(2).mean().sqrt()) if cf_rows.shape[0] else 1.0
        text_rms = float((sample[:4096] @ self.text_projection.T).pow(2).mean().sqrt()) or 1.0
        self.log_text_gain.fill_(math.log(max(cf_rms, 1e-3) / text_rms))

    def semantic_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """(B, dz) text embeddings -> (B, N, d) semantic tokens (as ``semantic`` says)."""
        if self.semantic == "autoencoder":
            return self.autoencoder.encode(text)
        projected = text @ self.text_projection.T
        tokens = (self.log_text_gain.exp() * projected).view(*text.shape[:-1], self.num_semantic_tokens, self.token_dim)
        if self.semantic == "residual":
            tokens = tokens + self.autoencoder.encode(text)
        return tokens

    def _rows(self, rows) -> torch.Tensor:
        """Tokens (M, N+1, d) of the catalogue rows ``rows`` (a slice or an index tensor)."""
        return self.tokens_from_embeddings(self.cf_embeddings[rows], self.text_embeddings[rows])

    @property
    def num_items(self) -> int:
        return self.cf_embeddings.shape[0]

    @property
    def tokens_per_item(self) -> int:
        return self.num_semantic_tokens + 1

    def tokens_from_embeddings(self, cf: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, cf_dim), (B, dz) -> (B, N+1, d): CF token first, then the semantic tokens."""
        cf_token = self.cf_projection(cf).unsqueeze(-2)
        return torch.cat([cf_token, self.semantic_tokens(text)], dim=-2)

    def forward(self, item_idx: torch.Tensor) -> torch.Tensor:
        """Item indices of any shape -> tokens of shape (*item_idx.shape, N+1, d)."""
        tokens = self._rows(item_idx.reshape(-1))
        return tokens.view(*item_idx.shape, self.tokens_per_item, self.token_dim)

    def table(self, batch_size: int = 65536) -> torch.Tensor:
        """The whole (num_items, N+1, d) token table, computed in batches."""
        parts = [self._rows(slice(start, start + batch_size)) for start in range(0, self.num_items, batch_size)]
        return torch.cat(parts, dim=0)

    def reconstruction_loss(self, item_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Autoencoder MSE on the text embeddings of ``item_idx`` (all items when None)."""
        text = self.text_embeddings if item_idx is None else self.text_embeddings[item_idx.reshape(-1)]
        return self.autoencoder.reconstruction_loss(text)

    def add_items(self, text_embeddings: torch.Tensor, cf_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Append items; returns their new indices (num_items, num_items + 1, ...).

        Without ``cf_embeddings`` the new items have ``has_cf = False``; when the encoder holds a
        text->CF map their CF embedding is predicted from their text (``cf_predicted = True``),
        else it is the zero vector (the projection bias as CF token).

        Args:
            text_embeddings: (B, dz) text embeddings of the new items (same encoder as the rest).
            cf_embeddings: optional (B, cf_dim) CF embeddings of items that have them.

        Example:
            >>> encoder.add_items(torch.randn(2, encoder.text_embeddings.shape[1]))   # tensor([n, n+1])
        """
        text = text_embeddings.to(self.text_embeddings)
        if text.ndim != 2 or text.shape[1] != self.text_embeddings.shape[1]:
            raise ArtifactError(
                f"new text embeddings must be (B, {self.text_embeddings.shape[1]}), got {tuple(text.shape)}; "
                "embed them with the encoder that made the table"
            )
        predicted = torch.zeros(text.shape[0], dtype=torch.bool, device=self.has_cf.device)
        if cf_embeddings is None:
            has_cf = torch.zeros(text.shape[0], dtype=torch.bool, device=self.has_cf.device)
            if bool(self.has_text_to_cf):
                cf = self.predict_cf(text).to(self.cf_embeddings)
                predicted[:] = True
            else:
                cf = torch.zeros(text.shape[0], self.cf_embeddings.shape[1], dtype=self.cf_embeddings.dtype, device=self.cf_embeddings.device)
        else:
            cf = cf_embeddings.to(self.cf_embeddings)
            if cf.shape != (text.shape[0], self.cf_embeddings.shape[1]):
                raise ArtifactError(f"new CF embeddings must be ({text.shape[0]}, {self.cf_embeddings.shape[1]}), got {tuple(cf.shape)}")
            has_cf = torch.ones(text.shape[0], dtype=torch.bool, device=self.has_cf.device)
        start = self.num_items
        self.cf_embeddings = torch.cat([self.cf_embeddings, cf])
        self.has_cf = torch.cat([self.has_cf, has_cf])
        self.cf_predicted = torch.cat([self.cf_predicted, predicted])
        self.text_embeddings = torch.cat([self.text_embeddings, text])
        return torch.arange(start, self.num_items)

    @torch.no_grad()
    def predict_cf(self, text: torch.Tensor) -> torch.Tensor:
        """(B, dz) text embeddings -> (B, cf_dim) CF embeddings by the stored text->CF map.

        Raises:
            ArtifactError: the encoder holds no map.
        """
        if not bool(self.has_text_to_cf):
            raise ArtifactError("this item encoder holds no text->CF map (built before issue 13, or with cold_cf: zero)")
        return text.to(self.text_to_cf_weight) @ self.text_to_cf_weight + self.text_to_cf_bias

    @classmethod
    def complete_state(cls, state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """``state`` plus defaults for the :data:`OPTIONAL_STATE` keys it lacks (older tables and bundles).

        Defaults: no predicted row, no text->CF map (zeros of the sizes the state's embeddings give).

        Args:
            state: an encoder state dict, its keys under ``prefix`` (e.g. ``"item_encoder."`` in a model's).
        """
        state = dict(state)
        cf, text = state.get(f"{prefix}cf_embeddings"), state.get(f"{prefix}text_embeddings")
        if cf is None or text is None:
            return state
        defaults = {
            "cf_predicted": torch.zeros(cf.shape[0], dtype=torch.bool),
            "text_to_cf_weight": torch.zeros(text.shape[1], cf.shape[1]),
            "text_to_cf_bias": torch.zeros(cf.shape[1]),
            "has_text_to_cf": torch.tensor(False),
        }
        for key, value in defaults.items():
            state.setdefault(f"{prefix}{key}", value)
        return state

    def hyperparameters(self) -> dict[str, int]:
        """Sizes needed to rebuild this module from its state dict."""
        return {
            "num_items": self.num_items,
            "cf_dim": int(self.cf_embeddings.shape[1]),
            "text_dim": int(self.text_embeddings.shape[1]),
            "num_semantic_tokens": self.num_semantic_tokens,
            "token_dim": self.token_dim,
            "semantic": self.semantic,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], num_semantic_tokens: int, token_dim: int,
                        semantic: str = "autoencoder") -> "ItemTokenEncoder":
        """Rebuild an encoder from :meth:`state_dict` (frozen embeddings included).

        Example:
            >>> clone = ItemTokenEncoder.from_state_dict(encoder.state_dict(), 4, 64)
        """
        missing = {"cf_embeddings", "has_cf", "text_embeddings"} - set(state)
        if missing:
            raise ArtifactError(f"item encoder state lacks {sorted(missing)}; rebuild the table")
        state = cls.complete_state(state)
        module = cls(state["cf_embeddings"], state["has_cf"], state["text_embeddings"], num_semantic_tokens, token_dim, semantic,
                     cf_predicted=state["cf_predicted"])
        try:
            module.load_state_dict(state)
        except RuntimeError as error:
            raise ArtifactError(f"item encoder weights do not fit N={num_semantic_tokens}, d={token_dim}: {error}") from error
        return module
