"""TIGER-style token-sequence generator: a T5 encoder-decoder over residual k-means semantic ids.

Each item is a sequence of ``C`` codes (``levels`` RQ-KMeans digits plus the uniqueness
digit of :mod:`recsys.tokenizers.semantic_ids`). The encoder reads the codes of the
user's most recent items; the decoder generates the next item's codes one at a time.
Decoding is a beam search constrained by a trie of the catalogue's ids, batched over
users, so it only ever returns real items (never an invalid id).

Vocabulary: token 0 is padding and the decoder start; code ``c`` of level ``l`` is token
``1 + offset[l] + c``. Level ``l`` of the decoder is scored only over its own codes; at
decoding time the log-probabilities are renormalised over the children the trie allows,
so an item's score is ``sum_l log p(code_l | history, codes_<l, item exists)``.

Two decoders sit behind :meth:`Tiger.beam_search`: ``use_cache=False`` recomputes the
decoder over the whole prefix at every step (reference), ``use_cache=True`` reuses the
key/value cache reordered by beam (fast path); a test holds them equal, and with a beam
as wide as the catalogue both return the exact ranking of :meth:`Tiger.sequence_scores`.

Example:
    >>> model = Tiger(codes=ids.codes, config=TigerConfig())
    >>> model.eval(); items, scores = model.beam_search([[3, 7, 9], [12]], beam_size=20)
    >>> items.shape                                       # (2, 20), best first
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn

from recsys.errors import ConfigError

PAD_TOKEN = 0


@dataclass
class TigerConfig:
    """Architecture and training settings of the TIGER baseline."""

    d_model: int = 64
    """Hidden size of the T5 backbone (set it equal to the set-identifier model's for efficiency runs)."""
    num_layers: int = 2
    """Encoder layers."""
    num_decoder_layers: int = 2
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads; d_kv = d_model / num_heads."""
    d_ff: int = 256
    """Feed-forward hidden size."""
    dropout: float = 0.1
    """Dropout rate of the T5 blocks."""
    max_history: int = 20
    """Most recent history items the encoder reads (each contributes ``C`` tokens)."""
    beam_size: int = 20
    """Beam width at evaluation (also the longest ranked list)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    batch_size: int = 256
    """Training samples per step (one sample = one target position with its prefix)."""
    eval_batch_size: int = 256
    """Users per beam-search batch at validation and test."""
    max_epochs: int = 20
    """Upper bound on training epochs."""
    patience: int = 3
    """Stop after this many validation rounds without a better validation NDCG@10."""
    seed: int = 0
    """Seed of initialisation, shuffling and dropout."""
    semantic_levels: int = 3
    """RQ-KMeans levels of the semantic ids (the uniqueness digit comes on top)."""
    semantic_codes: int = 256
    """Centroids per RQ-KMeans level."""
    semantic_seed: int = 0
    """Seed of the RQ-KMeans semantic ids."""

    def __post_init__(self) -> None:
        checks = {
            "d_model": self.d_model > 0 and self.d_model % max(self.num_heads, 1) == 0,
            "num_layers": self.num_layers > 0,
            "num_decoder_layers": self.num_decoder_layers > 0,
            "num_heads": self.num_heads > 0,
            "d_ff": self.d_ff > 0,
            "dropout": 0.0 <= self.dropout < 1.0,
            "max_history": self.max_history > 0,
            "beam_size": self.beam_size > 0,
            "lr": self.lr > 0,
            "batch_size": self.batch_size > 0,
            "eval_batch_size": self.eval_batch_size > 0,
            "max_epochs": self.max_epochs > 0,
            "patience": self.patience > 0,
            "semantic_levels": self.semantic_levels > 0,
            "semantic_codes": self.semantic_codes > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"TigerConfig: invalid value of {', '.join(bad)} "
                f"({', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}); sizes must be positive, "
                "num_heads must divide d_model, dropout lies in [0, 1)"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def pad_left(histories: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """Keep the last ``max_len`` items of each history and left-pad with -1: (B, L) int64.

    Example:
        >>> pad_left([[1, 2, 3], [4]], max_len=2)   # tensor([[2, 3], [-1, 4]])
    """
    cut = [list(h)[-max_len:] for h in histories]
    width = max((len(h) for h in cut), default=0) or 1
    out = torch.full((len(cut), width), -1, dtype=torch.int64)
    for row, items in enumerate(cut):
        if items:
            out[row, width - len(items) :] = torch.as_tensor(items, dtype=torch.int64)
    return out


class CodeTrie:
    """The catalogue's code sequences as a trie of dense child tables, one per level.

    Args:
        codes: (num_items, C) int64, unique rows (the semantic ids).

    Attributes:
        children: list of C tensors; ``children[l][node, code]`` is the child node id at
            depth l + 1, or -1 when no item continues that way. Depth 0 has one node (root).
        leaf_item: (num_items,) item index of each depth-C node.
        sizes: codebook size of each level.
    """

    def __init__(self, codes: torch.Tensor) -> None:
        codes = torch.as_tensor(codes, dtype=torch.int64)
        if codes.ndim != 2 or codes.shape[0] == 0:
            raise ConfigError(f"codes must be a non-empty (num_items, C) matrix, got {tuple(codes.shape)}")
        if (codes < 0).any():
            raise ConfigError("codes must be non-negative")
        if torch.unique(codes, dim=0).shape[0] != codes.shape[0]:
            raise ConfigError("two items share a code sequence; semantic ids need the uniqueness digit")
        self.codes = codes
        self.sizes = [int(codes[:, level].max()) + 1 for level in range(codes.shape[1])]
        self.children: list[torch.Tensor] = []
        parent = torch.zeros(codes.shape[0], dtype=torch.int64)  # node at the current depth, per item
        num_nodes = 1
        for level, size in enumerate(self.sizes):
            key = parent * size + codes[:, level]
            unique, child = torch.unique(key, return_inverse=True)
            table = torch.full((num_nodes, size), -1, dtype=torch.int64)
            table.view(-1)[unique] = torch.arange(unique.numel())
            self.children.append(table)
            parent, num_nodes = child, unique.numel()
        self.leaf_item = torch.empty(num_nodes, dtype=torch.int64)
        self.leaf_item[parent] = torch.arange(codes.shape[0])

    @property
    def depth(self) -> int:
        return len(self.sizes)

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[0])


class Tiger(nn.Module):
    """T5 encoder-decoder generating an item's semantic id code by code.

    Args:
        codes: (num_items, C) semantic ids of the catalogue (row = item_idx).
        config: architecture settings.
    """

    def __init__(self, codes: torch.Tensor, config: TigerConfig | None = None) -> None:
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration

        self.config = config = config or TigerConfig()
        self.trie = CodeTrie(codes)
        self.register_buffer("codes", self.trie.codes.clone(), persistent=False)
        sizes = self.trie.sizes
        self.offsets = [1 + sum(sizes[:level]) for level in range(len(sizes))]
        self.vocab_size = 1 + sum(sizes)
        t5 = T5Config(
            vocab_size=self.vocab_size,
            d_model=config.d_model,
            d_kv=config.d_model // config.num_heads,
            d_ff=config.d_ff,
            num_layers=config.num_layers,
            num_decoder_layers=config.num_decoder_layers,
            num_heads=config.num_heads,
            dropout_rate=config.dropout,
            feed_forward_proj="relu",
            pad_token_id=PAD_TOKEN,
            decoder_start_token_id=PAD_TOKEN,
            eos_token_id=PAD_TOKEN,
            tie_word_embeddings=True,
        )
        self.t5 = T5ForConditionalGeneration(t5)

    @property
    def num_items(self) -> int:
        return self.trie.num_items

    @property
    def code_length(self) -> int:
        return self.trie.depth

    # ---------------------------------------------------------------- inputs
    def item_tokens(self, items: torch.Tensor) -> torch.Tensor:
        """(...,) item indices -> (..., C) vocabulary tokens of their codes."""
        offsets = torch.tensor(self.offsets, dtype=torch.int64, device=items.device)
        return self.codes[items] + offsets

    def encode_histories(self, histories: Sequence[Sequence[int]] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Histories -> left-padded encoder tokens (B, S) and attention mask (B, S).

        Args:
            histories: lists of item indices (oldest first), or a (B, L) tensor of them
                left-padded with -1. The last ``max_history`` items are kept; each
                contributes its C code tokens. T5's relative positions make left
                padding invisible to the real tokens.
        """
        device = self.codes.device
        if not isinstance(histories, torch.Tensor):
            histories = pad_left(histories, self.config.max_history)
        histories = histories[:, -self.config.max_history :].to(device)
        real = histories >= 0
        if not bool(real.any(dim=1).all()):
            raise ConfigError("every history needs at least one item")
        tokens = self.item_tokens(histories.clamp(min=0)).masked_fill(~real.unsqueeze(-1), PAD_TOKEN)
        mask = real.unsqueeze(-1).expand_as(tokens)
        return tokens.reshape(len(histories), -1), mask.reshape(len(histories), -1)

    def level_logits(self, logits: torch.Tensor, level: int) -> torch.Tensor:
        """(..., vocab) decoder logits -> (..., size_l) logits over level ``level``'s codes."""
        start = self.offsets[level]
        return logits[..., start : start + self.trie.sizes[level]]

    # ---------------------------------------------------------------- training
    def loss(self, histories: Sequence[Sequence[int]] | torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of the target items' codes, each level over its own codes.

        Args:
            histories: B histories (lists, or a (B, L) tensor left-padded with -1).
            targets: (B,) next item per history.
        """
        input_ids, mask = self.encode_histories(histories)
        target_codes = self.codes[targets.to(self.codes.device)]  # (B, C)
        labels = self.item_tokens(targets.to(self.codes.device))
        decoder_input = torch.cat([torch.full_like(labels[:, :1], PAD_TOKEN), labels[:, :-1]], dim=1)
        encoder = self.t5.get_encoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
        hidden = self.t5.decoder(
            input_ids=decoder_input, encoder_hidden_states=encoder, encoder_attention_mask=mask
        ).last_hidden_state
        logits = self._lm_head(hidden)
        losses = [
            nn.functional.cross_entropy(self.level_logits(logits[:, level], level), target_codes[:, level])
            for level in range(self.code_length)
        ]
        return torch.stack(losses).mean()

    # ---------------------------------------------------------------- scoring
    def _allowed_log_probs(self, logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        masked = logits.float().masked_fill(~allowed, -math.inf)
        out = torch.log_softmax(masked, dim=-1)
        return out.masked_fill(~allowed, -math.inf)

    @torch.no_grad()
    def sequence_scores(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Exact score of every catalogue item for each history: (B, num_items).

        Teacher-forces every item's code sequence (slow: B * num_items decoder rows); the
        reference that beam search approximates and, with a full-width beam, equals.
        """
        input_ids, mask = self.encode_histories(histories)
        encoder = self.t5.get_encoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
        items = torch.arange(self.num_items, device=self.codes.device)
        labels = self.item_tokens(items)
        decoder_input = torch.cat([torch.full_like(labels[:, :1], PAD_TOKEN), labels[:, :-1]], dim=1)
        out = torch.empty(len(histories), self.num_items)
        for row in range(len(histories)):
            hidden = self.t5.decoder(
                input_ids=decoder_input,
                encoder_hidden_states=encoder[row : row + 1].expand(self.num_items, -1, -1),
                encoder_attention_mask=mask[row : row + 1].expand(self.num_items, -1),
            ).last_hidden_state
            logits = self._lm_head(hidden)
            total = torch.zeros(self.num_items)
            node = torch.zeros(self.num_items, dtype=torch.int64)
            for level in range(self.code_length):
                table = self.trie.children[level].to(node.device)
                allowed = table[node] >= 0
                logp = self._allowed_log_probs(self.level_logits(logits[:, level], level), allowed)
                code = self.codes[:, level]
                total += logp.gather(1, code.view(-1, 1)).squeeze(1).cpu()
                node = table[node, code]
            out[row] = total
        return out

    def sequence_log_probs(self, histories: Sequence[Sequence[int]] | torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Log-probability of given items for each history, differentiable: (B, G).

        Teacher-forces each item's code sequence and sums the per-level log-probabilities with
        the normalisation :meth:`beam_search` uses (each level renormalised over the codes the
        trie allows after the item's earlier codes), so entry ``(b, g)`` equals the beam
        search's score of ``items[b, g]`` (its exclusion drops items without renormalising,
        so it changes no score). Used by ReRe tuning (``recsys.tuning.tiger_rere``) for the
        policy's log-probabilities of a generated group.

        Args:
            histories: B histories (lists, or a (B, L) tensor left-padded with -1).
            items: (B, G) item indices; -1 (the beam search's padding) gets -inf.

        Example:
            >>> group, scores = model.beam_search(histories, beam_size=16)
            >>> model.sequence_log_probs(histories, group)      # == scores, with gradient
        """
        device = self.codes.device
        items = torch.as_tensor(items, dtype=torch.int64, device=device)
        batch, width = items.shape
        input_ids, mask = self.encode_histories(histories)
        encoder = self.t5.get_encoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
        flat = items.clamp(min=0).reshape(-1)  # (B * G,)
        labels = self.item_tokens(flat)
        decoder_input = torch.cat([torch.full_like(labels[:, :1], PAD_TOKEN), labels[:, :-1]], dim=1)
        hidden = self.t5.decoder(
            input_ids=decoder_input,
            encoder_hidden_states=encoder.repeat_interleave(width, dim=0),
            encoder_attention_mask=mask.repeat_interleave(width, dim=0),
        ).last_hidden_state
        logits = self._lm_head(hidden)
        total = torch.zeros(flat.shape[0], device=device)
        node = torch.zeros_like(flat)
        for level in range(self.code_length):
            table = self.trie.children[level].to(device)
            allowed = table[node] >= 0
            logp = self._allowed_log_probs(self.level_logits(logits[:, level], level), allowed)
            code = self.codes[flat, level]
            total = total + logp.gather(1, code.view(-1, 1)).squeeze(1)
            node = table[node, code]
        return total.view(batch, width).masked_fill(items < 0, -math.inf)

    def _lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        config = self.t5.config
        if getattr(config, "scale_decoder_outputs", config.tie_word_embeddings):
            hidden = hidden * (config.d_model**-0.5)
        return self.t5.lm_head(hidden)

    # ---------------------------------------------------------------- beam search
    @torch.no_grad()
    def beam_search(
        self,
        histories: Sequence[Sequence[int]],
        beam_size: int | None = None,
        exclude: Sequence[Sequence[int]] | None = None,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Trie-constrained beam search, batched over users.

        Args:
            histories: B histories (item indices, oldest first).
            beam_size: beam width W (default ``config.beam_size``); also the list length.
            exclude: optional items per user that must not be returned (masked at the
                last code, so they never take a slot of the final list).
            use_cache: reuse the decoder key/value cache (fast path) or recompute the
                whole prefix every step (reference).

        Returns:
            (items, scores): (B, W) item indices best first and their log-probabilities;
            -1 / -inf where fewer than W items are reachable.
        """
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        width = beam_size or self.config.beam_size
        batch = len(histories)
        device = self.codes.device
        input_ids, mask = self.encode_histories(histories)
        encoder = self.t5.get_encoder()(input_ids=input_ids, attention_mask=mask).last_hidden_state
        user_encoder, user_mask = encoder, mask
        encoder = encoder.repeat_interleave(width, dim=0)
        mask = mask.repeat_interleave(width, dim=0)
        banned = None
        if exclude is not None:
            banned = torch.zeros(batch, self.num_items, dtype=torch.bool, device=device)
            for row, items in enumerate(exclude):
                if items:
                    banned[row, torch.as_tensor(list(items), dtype=torch.int64, device=device)] = True
        scores = torch.full((batch, width), -math.inf, device=device)
        scores[:, 0] = 0.0  # one live beam at the root
        node = torch.zeros(batch, width, dtype=torch.int64, device=device)
        tokens = torch.full((batch * width, 1), PAD_TOKEN, dtype=torch.int64, device=device)
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache()) if use_cache else None
        rows = torch.arange(batch, device=device).view(-1, 1) * width
        for level in range(self.code_length):
            if use_cache and level == 0:
                # Every beam of a user is still the root: decode it once per user, so the cross-attention
                # keys and values are projected once per user, then copied to the beams by the reorder below.
                out = self.t5.decoder(
                    input_ids=tokens[::width, -1:],
                    encoder_hidden_states=user_encoder,
                    encoder_attention_mask=user_mask,
                    past_key_values=cache,
                    use_cache=True,
                )
                hidden = out.last_hidden_state[:, -1].repeat_interleave(width, dim=0)
            else:
                out = self.t5.decoder(
                    input_ids=tokens[:, -1:] if use_cache else tokens,
                    encoder_hidden_states=encoder,
                    encoder_attention_mask=mask,
                    past_key_values=cache,
                    use_cache=use_cache,
                )
                hidden = out.last_hidden_state[:, -1]
            logits = self.level_logits(self._lm_head(hidden), level)
            size = logits.shape[-1]
            table = self.trie.children[level].to(device)
            live = torch.isfinite(scores)
            allowed = (table[node.clamp(min=0)] >= 0) & live.unsqueeze(-1)  # (B, W, size)
            logp = self._allowed_log_probs(logits.view(batch, width, size), allowed)
            if level == self.code_length - 1 and banned is not None:
                # drop excluded items without renormalising, so the others keep their scores
                leaf = table[node.clamp(min=0)]
                items = self.trie.leaf_item.to(device)[leaf.clamp(min=0)]
                logp = logp.masked_fill(banned.gather(1, items.view(batch, -1)).view_as(allowed), -math.inf)
            total = (scores.unsqueeze(-1) + logp).view(batch, -1)
            scores, flat = total.topk(width, dim=1)
            origin = torch.div(flat, size, rounding_mode="floor")
            code = flat % size
            node = table[node.gather(1, origin).clamp(min=0), code]
            node = torch.where(torch.isfinite(scores), node, torch.full_like(node, -1))
            beam_index = (rows + origin).view(-1)
            new_token = (code + self.offsets[level]).view(-1, 1)
            tokens = torch.cat([tokens[beam_index], new_token], dim=1)
            if use_cache:
                cache = out.past_key_values
                # level 0 ran one row per user: row b of the cache feeds beams b*W .. b*W+W-1
                cache.reorder_cache(torch.div(beam_index, width, rounding_mode="floor") if level == 0 else beam_index)
        items = self.trie.leaf_item.to(device)[node.clamp(min=0)]
        items = torch.where(torch.isfinite(scores), items, torch.full_like(items, -1))
        return items, scores

    def rank(self, histories: Sequence[Sequence[int]], k: int, exclude: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """(B, k) ranked items from a beam of ``config.beam_size`` (k <= beam size)."""
        if k > self.config.beam_size:
            raise ConfigError(f"k={k} exceeds the beam size {self.config.beam_size}; beam search returns at most the beam")
        items, _ = self.beam_search(histories, self.config.beam_size, exclude)
        return items[:, :k]
