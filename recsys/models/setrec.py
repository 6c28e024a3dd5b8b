"""The set-identifier recommender (ARCHITECTURE.md section 3): T5 and Qwen2 backbones.

Every item is a set of K tokens (CF token + N semantic tokens, from
:class:`recsys.models.item_tokens.ItemTokenEncoder`); a history of such sets, framed by
learnable prompt and response tokens, enters the backbone through ``inputs_embeds`` with the
sparse mask and shared position ids of :mod:`recsys.models.masks`. K learnable queries give
the hidden states h_0..h_{K-1} in one forward pass:

- Qwen2 (decoder-only): the queries end the sequence; each sees the prefix and itself only.
- T5: the encoder reads prompt, items and response; the queries are the decoder input, with a
  hard identity self-attention mask, one shared position, and cross-attention to the encoder.
  The relative position bias is computed from the shared position ids, not from ``arange``.

With ``history_prior: recency`` (the default) each query state is the backbone's state plus a copy
expert's, token k of the recency-weighted history (:mod:`recsys.models.history_prior`): h_k =
b_k + prior_k (:meth:`SetRecModel.expert_states`); training gives the two experts their own
cross-entropy each (they share the item tokens). ``none`` is the backbone alone (the SETRec paper).

Scores: s_k(i) = <h_k, t_i^k>; score(i) = (1 - beta) s_0(i) + beta * sum_{k>=1} s_k(i), i.e. one
inner product of ``query_vectors`` with the flattened item token rows.

Ablation switches (:class:`SetRecConfig`):

- ``attention: full``: siblings visible, ordinary sequential positions.
- ``generation: autoregressive``: query k also sees queries < k (consecutive positions) and its
  input is q_k + t^{k-1} of the target item: teacher-forced from the gold target in training,
  greedy at inference (t^{k-1} of the item scoring highest in dimension k-1), K forward passes.
- ``token_set: cf | semantic``: items are only their CF token (K = 1) or only their N semantic
  tokens (K = N); beta then plays no part (all kept dimensions weigh 1).

The attention backend must honour the 4-D mask: ``attn_implementation`` is checked, and a
probe at build time proves a masked key cannot change an output (``verify_mask``).

Example:
    >>> encoder = ItemTokenEncoder(cf, has_cf, text, num_semantic_tokens=4, token_dim=64)
    >>> model = SetRecModel(SetRecConfig(backbone="qwen", preset="tiny"), encoder)
    >>> histories = pad_histories([[3, 5, 7], [2]], max_len=4)     # (2, 4), -1 = padding
    >>> model.score_all(histories, beta=0.5).shape                # (2, num_items)
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recsys.errors import ConfigError, UnknownItemError
from recsys.models.masks import (
    MaskSpec,
    TokenLayout,
    build_layout,
    build_packed_layout,
    cross_mask,
    dense_mask,
    flex_block_mask,
    for_backend,
    packed_query_slots,
    query_self_mask,
    reference_mask,
)
from recsys.models.history_prior import HISTORY_PRIORS, HistoryPrior
from recsys.models.item_tokens import ItemTokenEncoder

BACKBONES = ("t5", "qwen")
TOKEN_SETS = ("all", "cf", "semantic")
ATTN_IMPLEMENTATIONS = {"qwen": ("sdpa", "eager", "flex_attention"), "t5": ("sdpa", "eager")}
MASK_IMPLS = ("fast", "reference")

#: Named backbone configs (random init). ``tiny`` is for tests, ``small`` trains on a CPU.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "qwen": {
        "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=8, max_position_embeddings=4096),
        "small": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=8, max_position_embeddings=4096),
    },
    "t5": {
        "tiny": dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2, vocab_size=8),
        "small": dict(d_model=128, d_kv=32, num_heads=4, d_ff=384, num_layers=2, num_decoder_layers=1, vocab_size=8),
    },
}


@dataclass
class LoraSettings:
    """LoRA adapters on the Qwen attention projections (peft); the backbone is frozen."""

    rank: int = 8
    """Rank r of the adapters."""
    alpha: int = 16
    """LoRA scaling alpha."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Names of the backbone linear layers that get adapters."""


@dataclass
class SetRecConfig:
    """Configuration of :class:`SetRecModel`."""

    backbone: Literal["qwen", "t5"] = "qwen"
    """``qwen`` (Qwen2, decoder-only) or ``t5`` (encoder + query decoder)."""
    preset: str = "tiny"
    """Named random-init backbone size (see ``PRESETS``): ``tiny`` or ``small``."""
    pretrained_dir: str | None = None
    """Local directory of a pretrained checkpoint (``from_pretrained``, never a hub download); overrides ``preset``."""
    num_semantic_tokens: int = 4
    """N, semantic tokens per item (the item has N + 1 tokens)."""
    semantic_tokens: Literal["projection", "residual", "autoencoder"] = "projection"
    """How an item's text becomes its semantic tokens (``recsys.models.item_tokens``): ``projection``
    (a fixed orthonormal map of the text embedding times a learnt gain: keeps the text geometry, so cold
    items are reachable), ``residual`` (projection plus a zero-initialised autoencoder correction) or
    ``autoencoder`` (the jointly trained autoencoder alone; kept 1.2% of text neighbours)."""
    history_prior: Literal["recency", "none"] = "recency"
    """``recency``: every query state is the backbone's plus a copy expert's, the recency-weighted tokens of
    the history (:mod:`recsys.models.history_prior`; with ``projection`` tokens its semantic scores are a
    per-dimension weighting of the text similarity to the recent history), each expert trained with its own
    cross-entropy; or ``none`` (the backbone alone, as in the SETRec paper and in bundles saved before this key)."""
    num_prompt_tokens: int = 2
    """P, learnable prompt tokens before the history."""
    num_response_tokens: int = 1
    """R, learnable response tokens after the history."""
    attention: Literal["sparse", "full"] = "sparse"
    """``sparse`` (siblings hidden, shared positions) or ``full`` (ablation)."""
    encoder_attention: Literal["causal", "bidirectional"] = "causal"
    """T5 only: ``causal`` (an item's tokens see earlier items only, as in the decoder-only backbone, so
    one encoder pass serves every prefix of a window: all-prefix training, ARCHITECTURE.md 3.3; inference
    uses the same causal encoder, so training and serving see the same states) or ``bidirectional``
    (every item sees every other item, the SETRec paper's encoder; trains one prefix per sample only)."""
    generation: Literal["simultaneous", "autoregressive"] = "simultaneous"
    """``simultaneous`` (queries independent) or ``autoregressive`` (ablation; see the module docstring)."""
    token_set: Literal["all", "cf", "semantic"] = "all"
    """Item tokens used: ``all`` (CF + semantic), ``cf`` or ``semantic`` (ablations)."""
    attn_implementation: str = "sdpa"
    """Attention backend: ``sdpa`` or ``eager`` (both), ``flex_attention`` (Qwen, GPU)."""
    mask_impl: Literal["fast", "reference"] = "fast"
    """Mask builder: ``fast`` (vectorised) or ``reference`` (pair-by-pair loops; for benchmarks)."""
    dropout: float = 0.1
    """Backbone dropout (T5 ``dropout_rate``: residual and feed-forward outputs; Qwen ``attention_dropout``)."""
    t5_attention_dropout: float = 0.0
    """T5 only: dropout on the attention probabilities. Off by default: on a CPU, drawing a mask for every
    (batch, head, query, key) score took about a third of a training step (torch.profiler, T5 ``small``,
    all-prefix batch of 64 windows), while residual and feed-forward dropout (``dropout``) stay on."""
    lora: LoraSettings | None = None
    """LoRA adapters (Qwen only); None trains the whole backbone."""
    verify_mask: bool = True
    """Probe at build time that the attention backend honours the 4-D mask (raises when it does not)."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        checks = (
            ("backbone", self.backbone, BACKBONES),
            ("attention", self.attention, ("sparse", "full")),
            ("encoder_attention", self.encoder_attention, ("causal", "bidirectional")),
            ("semantic_tokens", self.semantic_tokens, ("projection", "residual", "autoencoder")),
            ("history_prior", self.history_prior, HISTORY_PRIORS),
            ("generation", self.generation, ("simultaneous", "autoregressive")),
            ("token_set", self.token_set, TOKEN_SETS),
            ("mask_impl", self.mask_impl, MASK_IMPLS),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"model.{name} must be one of {allowed}, got {value!r}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS[self.backbone]:
            raise ConfigError(
                f"model.attn_implementation {self.attn_implementation!r} cannot honour the sparse mask for "
                f"backbone {self.backbone!r}; use one of {ATTN_IMPLEMENTATIONS[self.backbone]}"
            )
        if self.pretrained_dir is None and self.preset not in PRESETS[self.backbone]:
            raise ConfigError(f"model.preset must be one of {sorted(PRESETS[self.backbone])}, got {self.preset!r}")
        if self.lora is not None and self.backbone != "qwen":
            raise ConfigError("model.lora is supported for the qwen backbone only; set model.lora: null")
        for name in ("num_semantic_tokens", "num_prompt_tokens", "num_response_tokens"):
            if getattr(self, name) < (1 if name == "num_semantic_tokens" else 0):
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "model config") -> "SetRecConfig":
        """Build from a mapping (a bundle's ``model_config``) through the one config path (:mod:`recsys.config`).

        Keys and types are checked (closed choices included); errors are ``ConfigError`` naming ``where``
        and the dotted key. Cross-field checks are :meth:`validate`'s, as before.

        Example:
            >>> SetRecConfig.from_dict({"backbone": "t5", "preset": "tiny"}, where="bundle/manifest.json: model_config")
        """
        from recsys.config import config_from_values

        return config_from_values(cls, values, where=where, validate=False)


def pad_histories(histories: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """Left-pad (and left-truncate) item histories to a (B, L) LongTensor, -1 = padding.

    L is the longest kept history (at most ``max_len``); the most recent items are kept.

    Example:
        >>> pad_histories([[1, 2, 3], [4]], max_len=2)
        tensor([[ 2,  3], [-1,  4]])
    """
    kept = [list(h)[-max_len:] if max_len > 0 else [] for h in histories]
    length = max((len(h) for h in kept), default=0)
    out = torch.full((len(kept), max(length, 1)), -1, dtype=torch.long)
    for row, items in enumerate(kept):
        if items:
            out[row, out.shape[1] - len(items) :] = torch.tensor(items, dtype=torch.long)
    return out


def build_backbone(config: SetRecConfig, backbone_config: dict[str, Any] | None = None) -> nn.Module:
    """The transformers backbone: ``Qwen2Model`` or ``T5Model``.

    Args:
        config: model config (backbone, preset or pretrained_dir, dropout, attention backend).
        backbone_config: a saved backbone config dict (from a bundle): random init of that
            exact architecture, the weights are loaded afterwards.
    """
    from transformers import AutoConfig, AutoModel, Qwen2Config, Qwen2Model, T5Config, T5Model

    impl = config.attn_implementation
    if backbone_config is not None:
        cls_config, cls_model = (Qwen2Config, Qwen2Model) if config.backbone == "qwen" else (T5Config, T5Model)
        values = {k: v for k, v in backbone_config.items() if k not in ("architectures", "transformers_version")}
        model = cls_model._from_config(cls_config.from_dict(values), attn_implementation=impl)
    elif config.pretrained_dir is not None:
        loaded = AutoConfig.from_pretrained(config.pretrained_dir, local_files_only=True)
        expected = "qwen2" if config.backbone == "qwen" else "t5"
        if loaded.model_type != expected:
            raise ConfigError(
                f"model.pretrained_dir {config.pretrained_dir} holds a {loaded.model_type!r} model, "
                f"but model.backbone is {config.backbone!r} (expects {expected!r})"
            )
        if config.backbone == "t5":
            loaded.dropout_rate = config.dropout
        else:
            loaded.attention_dropout = config.dropout
        model = AutoModel.from_pretrained(
            config.pretrained_dir, config=loaded, attn_implementation=impl, local_files_only=True
        )
    elif config.backbone == "qwen":
        preset = PRESETS["qwen"][config.preset]
        model = Qwen2Model._from_config(Qwen2Config(**preset, attention_dropout=config.dropout), attn_implementation=impl)
    else:
        preset = PRESETS["t5"][config.preset]
        model = T5Model._from_config(T5Config(**preset, dropout_rate=config.dropout), attn_implementation=impl)
    if config.backbone == "t5":
        from transformers.models.t5.modeling_t5 import T5Attention

        for module in model.modules():
            if isinstance(module, T5Attention):
                module.dropout = config.t5_attention_dropout
    expected_cls = Qwen2Model if config.backbone == "qwen" else T5Model
    if not isinstance(model, expected_cls):
        raise ConfigError(f"model.pretrained_dir must hold a {expected_cls.__name__}-compatible model, got {type(model).__name__}")
    if config.backbone == "qwen" and set(model.config.layer_types) != {"full_attention"}:
        raise ConfigError("sliding-window Qwen layers would replace the sparse mask; set use_sliding_window: false")
    if model.config._attn_implementation != impl:
        raise ConfigError(f"backbone runs {model.config._attn_implementation!r} attention, asked for {impl!r}")
    # Items enter through inputs_embeds: the word embeddings are never used.
    for embedding in (getattr(model, "embed_tokens", None), getattr(model, "shared", None)):
        if embedding is not None:
            embedding.weight.requires_grad_(False)
    return model


@dataclass
class SetRecOutput:
    """Output of :meth:`SetRecModel.forward_tokens`.

    Attributes:
        query_states: (B, K, d) final hidden states of the queries.
        hidden_states: per-layer outputs of the sequence the mask applies to (the decoder-only
            sequence for Qwen, the encoder sequence for T5), each (B, S, d); None unless asked.
        layout: the token layout of that sequence.
    """

    query_states: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None
    layout: TokenLayout


class SetRecModel(nn.Module):
    """The set-identifier recommender.

    Args:
        config: the model config.
        item_encoder: the item token module (trained jointly: CF projection + autoencoder).
        backbone_config: a saved backbone config (bundles); None builds from preset/pretrained_dir.
    """

    def __init__(
        self,
        config: SetRecConfig,
        item_encoder: ItemTokenEncoder,
        backbone_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = build_backbone(config, backbone_config)
        self.hidden_size = self._backbone_config().hidden_size if config.backbone == "qwen" else self._backbone_config().d_model
        if item_encoder.token_dim != self.hidden_size or item_encoder.num_semantic_tokens != config.num_semantic_tokens:
            raise ConfigError(
                f"item encoder gives {item_encoder.num_semantic_tokens} semantic tokens of size {item_encoder.token_dim}; "
                f"the model needs {config.num_semantic_tokens} of size {self.hidden_size} (the backbone hidden size)"
            )
        if item_encoder.semantic != config.semantic_tokens:
            raise ConfigError(
                f"item encoder makes {item_encoder.semantic!r} semantic tokens, model.semantic_tokens is "
                f"{config.semantic_tokens!r}; build the encoder with semantic={config.semantic_tokens!r}"
            )
        self.item_encoder = item_encoder
        if config.token_set == "cf":
            item_encoder.autoencoder.requires_grad_(False)  # unused: keeps DDP from waiting for its gradients
        elif config.token_set == "semantic":
            item_encoder.cf_projection.requires_grad_(False)
        d = self.hidden_size
        self.prompt = nn.Parameter(torch.randn(config.num_prompt_tokens, d) * 0.02)
        self.response = nn.Parameter(torch.randn(config.num_response_tokens, d) * 0.02)
        self.queries = nn.Parameter(torch.randn(self.tokens_per_item, d) * 0.02)
        self.history_prior = None
        if config.history_prior == "recency":
            self.history_prior = HistoryPrior(self.tokens_per_item)
            with torch.no_grad():  # a sample of rows is enough for a mean norm, and stays small on big catalogues
                n = self.num_items
                sample = torch.arange(n) if n <= 4096 else torch.randint(n, (4096,), generator=torch.Generator().manual_seed(0))
                self.history_prior.calibrate(self.encode_items(sample.to(self.prompt.device)))
        if config.lora is not None:
            self._add_lora(config.lora)
        role = "decoder_only" if config.backbone == "qwen" else "encoder"
        item_causal = config.backbone == "t5" and config.encoder_attention == "causal"
        self.spec = MaskSpec(role, config.attention, config.generation, item_causal)
        if config.verify_mask:
            self.verify_mask_honoured()

    # ------------------------------------------------------------------ construction helpers

    def _add_lora(self, lora: LoraSettings) -> None:
        from peft import LoraConfig, get_peft_model

        self.backbone = get_peft_model(
            self.backbone,
            LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules)),
        )

    def _core(self) -> nn.Module:
        """The transformers model itself (inside the peft wrapper when LoRA is on)."""
        return self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone

    def transformer(self) -> nn.Module:
        """The transformers model (``Qwen2Model`` or ``T5Model``), inside the peft wrapper when LoRA is on.

        Example:
            >>> export_backbone(model.transformer(), layout, folder)   # vLLM export of the Qwen2 weights
        """
        return self._core()

    def _backbone_config(self):
        return self._core().config

    def backbone_config_dict(self) -> dict[str, Any]:
        """The backbone architecture config, enough to rebuild it (bundles save it)."""
        return self._backbone_config().to_dict()

    def merged_copy(self) -> "SetRecModel":
        """A copy with LoRA merged into the backbone weights (plain Qwen2 keys; for bundles)."""
        if self.config.lora is None:
            return self
        clone = copy.deepcopy(self)
        clone.backbone = clone.backbone.merge_and_unload()
        clone.config = _replace_lora(clone.config)
        return clone

    @property
    def tokens_per_item(self) -> int:
        """K: item tokens the model uses (N + 1, 1 for ``cf``, N for ``semantic``)."""
        return {"all": self.config.num_semantic_tokens + 1, "cf": 1, "semantic": self.config.num_semantic_tokens}[self.config.token_set]

    @property
    def num_items(self) -> int:
        return self.item_encoder.num_items

    def _select(self, tokens: torch.Tensor) -> torch.Tensor:
        """Keep the token set's tokens of (..., N+1, d) item tokens."""
        if self.config.token_set == "cf":
            return tokens[..., :1, :]
        if self.config.token_set == "semantic":
            return tokens[..., 1:, :]
        return tokens

    # ------------------------------------------------------------------ items

    def encode_items(self, items: torch.Tensor) -> torch.Tensor:
        """Item indices (...,) -> their (..., K, d) tokens of the model's token set (the item encoder's output).

        Args:
            items: item indices, all in ``[0, num_items)``.

        Example:
            >>> model.encode_items(torch.tensor([3, 4])).shape    # (2, K, d)
        """
        return self._select(self.item_encoder(items))

    def item_table(self) -> torch.Tensor:
        """(num_items, K, d) token table of the whole catalogue."""
        return self._select(self.item_encoder.table())

    def history_tokens(self, history_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) item indices, -1 = padding -> ((B, L, K, d) tokens, (B, L) bool valid)."""
        valid = history_items >= 0
        if bool((history_items >= self.num_items).any()):
            bad = sorted(set(history_items[history_items >= self.num_items].tolist()))[:5]
            raise UnknownItemError(f"history item indices {bad} are outside the catalogue of {self.num_items} items")
        tokens = self._select(self.item_encoder(history_items.clamp(min=0)))
        return tokens * valid[..., None, None], valid

    # ------------------------------------------------------------------ backbone passes

    def _mask(self, layout: TokenLayout) -> torch.Tensor:
        return reference_mask(layout) if self.config.mask_impl == "reference" else dense_mask(layout)

    def _attention_mask(self, layout: TokenLayout, dtype: torch.dtype):
        if self.config.attn_implementation == "flex_attention":
            return flex_block_mask(layout)
        return for_backend(self._mask(layout), self.config.attn_implementation, dtype)

    def _t5_bias(self, stack: nn.Module, q_pos: torch.Tensor, k_pos: torch.Tensor, bidirectional: bool) -> torch.Tensor:
        """(B, H, Sq, Sk) T5 relative position bias from position ids (B, Sq), (B, Sk)."""
        attention = stack.block[0].layer[0].SelfAttention
        relative = k_pos[:, None, :] - q_pos[:, :, None]  # memory - context, as T5 defines it
        bucket = attention._relative_position_bucket(
            relative,
            bidirectional=bidirectional,
            num_buckets=attention.relative_attention_num_buckets,
            max_distance=attention.relative_attention_max_distance,
        )
        return attention.relative_attention_bias(bucket).permute(0, 3, 1, 2)

    def _run_stack(self, stack, x, mask, bias, encoder_states=None, cross_mask=None, want_hidden=False):
        """Run a T5 stack's blocks with our mask and bias (no mask or bias made from arange)."""
        h = stack.dropout(x)
        hidden = []
        for block in stack.block:
            h = block(
                h,
                attention_mask=mask,
                position_bias=bias,
                encoder_hidden_states=encoder_states,
                encoder_attention_mask=cross_mask,
            )[0]
            if want_hidden:
                hidden.append(h)
        return stack.dropout(stack.final_layer_norm(h)), tuple(hidden) if want_hidden else None

    def _sequence_pass(self, x: torch.Tensor, layout: TokenLayout, want_hidden: bool):
        """Run the masked sequence (Qwen: all of it; T5: the encoder) -> (last states, per-layer)."""
        mask = self._attention_mask(layout, x.dtype)
        if self.config.backbone == "qwen":
            out = self._core()(
                inputs_embeds=x,
                attention_mask={"full_attention": mask},
                position_ids=layout.position_ids,
                use_cache=False,
                output_hidden_states=want_hidden,
            )
            hidden = tuple(out.hidden_states[1:]) if want_hidden else None
            return out.last_hidden_state, hidden
        encoder = self._core().encoder
        bias = self._t5_bias(encoder, layout.position_ids, layout.position_ids, bidirectional=True)
        return self._run_stack(encoder, x, mask, bias, want_hidden=want_hidden)

    def _query_decoder(self, queries: torch.Tensor, encoder_states: torch.Tensor, layout: TokenLayout,
                       groups: torch.Tensor) -> torch.Tensor:
        """T5 decoder over M query tokens: one per (prefix, dimension k), each cross-attending to its prefix.

        Args:
            queries: (B, M, d) query inputs, M = prefixes * K, prefix-major.
            encoder_states: (B, S, d) encoder outputs of ``layout``.
            layout: the encoder layout.
            groups: (B, M) the group (last visible item) of each query's prefix.
        """
        batch, num_slots, _ = queries.shape
        k = self.tokens_per_item if self.config.generation == "autoregressive" else 1
        prefixes = num_slots // k if self.config.generation == "autoregressive" else num_slots
        decoder = self._core().decoder
        impl = self.config.attn_implementation
        # identity (simultaneous) or lower-triangular (autoregressive) inside each prefix's K queries
        self_mask = torch.block_diag(*[query_self_mask(k, self.config.generation, queries.device)] * prefixes)
        self_mask = for_backend(self_mask, impl, queries.dtype)
        positions = torch.zeros(1, num_slots, dtype=torch.long, device=queries.device)
        if self.config.generation == "autoregressive":
            positions = torch.arange(k, device=queries.device).repeat(prefixes).unsqueeze(0)
        bias = self._t5_bias(decoder, positions, positions, bidirectional=False)
        cross = for_backend(cross_mask(layout, groups), impl, queries.dtype)
        out, _ = self._run_stack(decoder, queries, self_mask, bias, encoder_states=encoder_states, cross_mask=cross)
        return out

    def assemble_sequence(self, tokens: torch.Tensor, valid: torch.Tensor,
                          query_inputs: torch.Tensor, packed: bool = False) -> tuple[torch.Tensor, TokenLayout]:
        """The backbone's input sequence ``[prompt][items][response][queries]`` and its layout.

        Padding items are dropped and the rest packed (the layout's ``source`` gathers them); the
        queries are part of the sequence for the decoder-only backbone only (T5 decodes them).
        ``packed`` lays out every prefix instead (:func:`~recsys.models.masks.build_packed_layout`).

        Args:
            tokens: (B, L, K, d) history item tokens; valid: (B, L) bool, left-padded.
            query_inputs: (B, Q, d) query input embeddings; (B, L, Q, d), one set per position, when packed.
            packed: all-prefix layout.

        Returns:
            ((B, S, d) input embeddings, the :class:`~recsys.models.masks.TokenLayout`).

        Example:
            >>> x, layout = model.assemble_sequence(tokens, valid, model.queries.expand(len(tokens), -1, -1))
        """
        batch, length, k, d = tokens.shape
        build = build_packed_layout if packed else build_layout
        layout = build(valid, k, self.config.num_prompt_tokens, self.config.num_response_tokens, query_inputs.shape[-2], self.spec)
        parts = [
            tokens.new_zeros(batch, 1, d),
            self.prompt.unsqueeze(0).expand(batch, -1, -1).to(tokens.dtype),
            tokens.reshape(batch, length * k, d),
            self.response.unsqueeze(0).expand(batch, -1, -1).to(tokens.dtype),
        ]
        if self.spec.role == "decoder_only":
            parts.append(query_inputs.reshape(batch, -1, d).to(tokens.dtype))
        source = torch.cat(parts, dim=1)
        return source.gather(1, layout.source.unsqueeze(-1).expand(-1, -1, d)), layout

    def forward_tokens(
        self,
        tokens: torch.Tensor,
        valid: torch.Tensor,
        query_inputs: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> SetRecOutput:
        """Run the backbone on history tokens.

        Args:
            tokens: (B, L, K, d) history item tokens (padding rows are ignored).
            valid: (B, L) bool, True for real items; left-padded.
            query_inputs: (B, K, d) query input embeddings; the learnable queries when None.
            output_hidden_states: also return per-layer outputs of the masked sequence.
        """
        batch = tokens.shape[0]
        if query_inputs is None:
            query_inputs = self.queries.unsqueeze(0).expand(batch, -1, -1)
        num_queries = query_inputs.shape[1]
        x, layout = self.assemble_sequence(tokens, valid, query_inputs)
        states, hidden = self._sequence_pass(x, layout, output_hidden_states)
        if self.spec.role == "decoder_only":
            query_states = states[:, -num_queries:]
        else:
            groups = (valid.sum(dim=1, keepdim=True) - 1).expand(batch, num_queries)
            query_states = self._query_decoder(query_inputs.to(tokens.dtype), states, layout, groups)
        return SetRecOutput(query_states, hidden, layout)

    @property
    def has_fast_queries(self) -> bool:
        """Whether :meth:`fast_query_states` takes its cheaper path (Qwen2, sparse, simultaneous, all tokens, sdpa/eager)."""
        c = self.config
        return (c.backbone == "qwen" and c.attention == "sparse" and c.generation == "simultaneous"
                and c.token_set == "all" and c.attn_implementation in ("sdpa", "eager"))

    def fast_query_states(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``forward_tokens(tokens, valid).query_states``, cheaper at inference (serving's query path).

        For a Qwen2 model with :attr:`has_fast_queries`, every layer but the last runs as in
        :meth:`forward_tokens`; the last one computes attention and the MLP for the K query rows
        only (their keys and values still come from every token): nothing reads the other rows'
        final outputs. Same sequence, layout, mask and weights, so the result is equal up to float
        rounding (tests/models/test_fast_queries.py). Other models run :meth:`forward_tokens`.

        Args:
            tokens: (B, L, K, d) history tokens (:meth:`history_tokens` or a cached table).
            valid: (B, L) bool, left-padded.

        Example:
            >>> tokens, valid = model.history_tokens(pad_histories([[1, 2]], 5))
            >>> model.fast_query_states(tokens, valid).shape     # (1, K, d)
        """
        if not self.has_fast_queries:
            return self.forward_tokens(tokens, valid).query_states
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb, eager_attention_forward

        batch, k = tokens.shape[0], tokens.shape[2]
        x, layout = self.assemble_sequence(tokens, valid, self.queries.unsqueeze(0).expand(batch, -1, -1))
        mask = self._attention_mask(layout, x.dtype)
        core = self._core()
        positions = layout.position_ids
        cos, sin = core.rotary_emb(x, positions)
        h = x
        for layer in core.layers[:-1]:
            h = layer(h, attention_mask=mask, position_embeddings=(cos, sin), position_ids=positions)
        last = core.layers[-1]
        attention = last.self_attn
        normed = last.input_layernorm(h)
        head = attention.head_dim
        q = attention.q_proj(normed[:, -k:]).view(batch, k, -1, head).transpose(1, 2)
        key = attention.k_proj(normed).view(batch, h.shape[1], -1, head).transpose(1, 2)
        value = attention.v_proj(normed).view(batch, h.shape[1], -1, head).transpose(1, 2)
        q, _ = apply_rotary_pos_emb(q, q, cos[:, -k:], sin[:, -k:])
        key, _ = apply_rotary_pos_emb(key, key, cos, sin)
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(core.config._attn_implementation, eager_attention_forward)
        out, _ = interface(attention, q, key, value, mask[:, :, -k:, :], dropout=0.0, scaling=attention.scaling)
        states = h[:, -k:] + attention.o_proj(out.reshape(batch, k, -1).contiguous())
        states = states + last.mlp(last.post_attention_layernorm(states))
        return core.norm(states)

    def apply_history_prior(self, states: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, K, d) backbone query states -> the model's query states: the history prior added, when on.

        :meth:`query_states` does this; engines that run the backbone themselves (:meth:`fast_query_states`,
        vLLM) call it on their states.

        Args:
            states: (B, K, d) query states of the backbone alone (:meth:`forward_tokens`).
            tokens: (B, L, K, d) history tokens; valid: (B, L) bool, left-padded.
        """
        return states if self.history_prior is None else states + self.history_prior(tokens, valid).to(states.dtype)

    def forward_packed(self, tokens: torch.Tensor, valid: torch.Tensor, query_inputs: torch.Tensor | None = None) -> torch.Tensor:
        """All-prefix pass: the query states of every prefix of every history in one backbone pass.

        Position p of a row closes the prefix ``history[..p]``: its response and query tokens see
        the prompt and the items up to p only, with the positions of that prefix run alone
        (:func:`recsys.models.masks.build_packed_layout`), so the states equal
        ``forward_tokens`` on each prefix (tested to fp32 precision). This is how SASRec gets a
        loss at every position from one pass (Kang & McAuley, ICDM 2018, section III-E).

        Args:
            tokens: (B, L, K, d) history item tokens, left-padded.
            valid: (B, L) bool, True for real items.
            query_inputs: (B, L, K, d) query inputs per position; the learnable queries when None.

        Returns:
            (B, L, K, d) query states; rows of padding positions are meaningless.
        """
        if not self.spec.causal:
            raise ConfigError("all-prefix training needs model.encoder_attention: causal (the bidirectional "
                              "T5 encoder lets every item see later items); or use train_mode: one_prefix")
        batch, length, k, d = tokens.shape
        if query_inputs is None:
            query_inputs = self.queries.expand(batch, length, -1, -1)
        x, layout = self.assemble_sequence(tokens, valid, query_inputs, packed=True)
        states, _ = self._sequence_pass(x, layout, want_hidden=False)
        if self.spec.role == "decoder_only":
            slots = packed_query_slots(length, layout.shape[1], self.config.num_response_tokens, k, tokens.device)  # (L, K)
            out = states[:, slots.reshape(-1)].reshape(batch, length, k, d)
        else:
            first_real = length - valid.sum(dim=1, keepdim=True)  # (B, 1)
            groups = torch.arange(length, device=tokens.device).unsqueeze(0) - first_real  # (B, L): group of position p
            groups = groups.repeat_interleave(k, dim=1)
            out = self._query_decoder(query_inputs.reshape(batch, length * k, d).to(tokens.dtype), states, layout, groups)
            out = out.reshape(batch, length, k, d)
        return out

    # ------------------------------------------------------------------ queries and scores

    def _autoregressive_inputs(self, previous: torch.Tensor) -> torch.Tensor:
        """Query inputs q_k + t^{k-1}: ``previous`` (B, K, d) holds t^{k-1} at row k (row 0 zero)."""
        return self.queries.unsqueeze(0) + previous

    def query_states(
        self,
        history_items: torch.Tensor,
        target_items: torch.Tensor | None = None,
        table: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L) left-padded histories (-1 = padding) -> (B, K, d) query states h_k (backbone + history prior).

        Args:
            history_items: item indices, left-padded with -1.
            target_items: (B,) gold next items; teacher forcing for autoregressive generation.
                (B, L): every prefix's next item (all-prefix), giving (B, L, K, d) states.
            table: the (num_items, K, d) item table when already computed.
        """
        backbone, prior = self.expert_states(history_items, target_items, table)
        return backbone if prior is None else backbone + prior

    def expert_states(
        self,
        history_items: torch.Tensor,
        target_items: torch.Tensor | None = None,
        table: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The two experts' query states: (backbone, history prior or None), each (B, K, d) or (B, L, K, d).

        Training gives each its own cross-entropy (:meth:`target_losses`); the model scores with their
        sum (:meth:`query_states`). Arguments as :meth:`query_states`.
        """
        tokens, valid = self.history_tokens(history_items)
        packed = target_items is not None and target_items.ndim == 2
        prior = None
        if self.history_prior is not None:
            prior = self.history_prior.packed(tokens, valid) if packed else self.history_prior(tokens, valid)
        if packed:
            return self._packed_query_states(tokens, valid, target_items, table), prior
        return self._backbone_query_states(tokens, valid, target_items, table, prior), prior

    def _backbone_query_states(self, tokens, valid, target_items, table, prior) -> torch.Tensor:
        """(B, K, d) backbone states of one prefix per row; greedy autoregressive decoding ranks with backbone + prior."""
        if self.config.generation == "simultaneous":
            return self.forward_tokens(tokens, valid).query_states
        table = self.item_table() if table is None else table
        batch, num_queries = tokens.shape[0], self.tokens_per_item
        previous = tokens.new_zeros(batch, num_queries, self.hidden_size)
        if target_items is not None:
            previous[:, 1:] = table[target_items, :-1]
            return self.forward_tokens(tokens, valid, self._autoregressive_inputs(previous)).query_states
        states = None
        for k in range(num_queries):  # greedy: K passes, each fixing the next query's input
            states = self.forward_tokens(tokens, valid, self._autoregressive_inputs(previous)).query_states
            if k + 1 < num_queries:
                ranked = states[:, k] if prior is None else states[:, k] + prior[:, k]
                best = (ranked @ table[:, k].T).argmax(dim=-1)
                previous = previous.clone()
                previous[:, k + 1] = table[best, k]
        return states

    def _packed_query_states(self, tokens, valid, target_items, table) -> torch.Tensor:
        """(B, L, K, d) query states of every prefix; autoregressive inputs teacher-forced per position."""
        if self.config.generation == "simultaneous":
            return self.forward_packed(tokens, valid)
        table = self.item_table() if table is None else table
        batch, length = target_items.shape
        previous = tokens.new_zeros(batch, length, self.tokens_per_item, self.hidden_size)
        previous[:, :, 1:] = table[target_items.clamp(min=0), :-1]
        return self.forward_packed(tokens, valid, self.queries + previous)

    def dimension_weights(self, beta: float) -> torch.Tensor:
        """(K,) weights of the K score dimensions: (1 - beta, beta, ..., beta) for ``all``, ones otherwise."""
        weights = torch.ones(self.tokens_per_item)
        if self.config.token_set == "all":
            weights[0] = 1.0 - beta
            weights[1:] = beta
        return weights

    def query_vectors(self, histories: torch.Tensor, beta: float, table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) histories -> (B, K*d) query vectors concat((1-beta) h_0, beta h_1, ..., beta h_N)."""
        states = self.query_states(histories, table=table)
        weights = self.dimension_weights(beta).to(states)
        return (states * weights[None, :, None]).flatten(1)

    @torch.no_grad()
    def score_all(
        self,
        histories: torch.Tensor,
        beta: float,
        table: torch.Tensor | None = None,
        batch_size: int = 512,
    ) -> torch.Tensor:
        """(B, L) histories -> (B, num_items) scores of the whole catalogue, in batches of users."""
        table = self.item_table() if table is None else table
        flat = table.flatten(1).T  # (K*d, num_items)
        parts = [
            self.query_vectors(histories[start : start + batch_size], beta, table=table) @ flat
            for start in range(0, histories.shape[0], batch_size)
        ]
        return torch.cat(parts, dim=0)

    def dimension_scores(self, histories: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K, num_items) per-dimension scores s_k(i); beta can be tuned on these without rerunning."""
        table = self.item_table() if table is None else table
        states = self.query_states(histories, table=table)
        return torch.einsum("bkd,ikd->bki", states, table)

    # ------------------------------------------------------------------ loss

    def loss(
        self,
        history_items: torch.Tensor,
        target_items: torch.Tensor,
        alpha: float,
        candidates: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mean over targets and k of full-catalogue cross-entropy of s_k, plus alpha times the AE MSE.

        Two shapes of batch, one interface:

        - one prefix per sample (the reference): ``target_items`` (B,), the item after each history;
        - all-prefix (the default of training): ``target_items`` (B, L), the item after each
          position of the window, -1 where there is none; one backbone pass scores all of them
          (:meth:`forward_packed`), and each target's loss equals its one-prefix loss.

        Args:
            history_items: (B, L) left-padded histories (-1 = padding).
            target_items: (B,) or (B, L) next items.
            alpha: weight of the autoencoder reconstruction MSE.
            candidates: (num_items,) bool, the items that compete in the softmax (None: all).
                Training passes the items with a train interaction: an item that is never a
                target would otherwise only ever be pushed down, and the text encoder learns
                to bury exactly the new items that semantic tokens exist to reach.

        Returns:
            ``loss`` (to minimise), ``ce`` and ``ae`` (detached parts), ``targets`` (count).
        """
        per_target, targets = self.target_losses(history_items, target_items, candidates)
        ce = per_target.mean()
        if self.config.token_set == "cf" or alpha == 0 or not self.item_encoder.has_autoencoder:
            ae = ce.new_zeros(())
        else:
            seen = torch.cat([targets, history_items[history_items >= 0]]).unique()
            ae = self.item_encoder.reconstruction_loss(seen)
        return {"loss": ce + alpha * ae, "ce": ce.detach(), "ae": ae.detach(), "targets": torch.tensor(len(targets))}

    def target_losses(
        self,
        history_items: torch.Tensor,
        target_items: torch.Tensor,
        candidates: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-target cross-entropy, mean over the K dimensions: ((T,) losses, (T,) target items).

        With the history prior on, the backbone's and the prior's cross-entropies are summed, each over
        its own logits (:meth:`expert_states`), so each expert is trained on its own.

        ``target_items`` (B,) gives T = B one-prefix targets; (B, L) gives every position with a
        target (T = number of entries >= 0), in row-major order.
        """
        table = self.item_table()
        backbone, prior = self.expert_states(history_items, target_items=target_items, table=table)
        if target_items.ndim == 2:
            keep = target_items >= 0
            targets = target_items[keep]
            backbone, prior = backbone[keep], (None if prior is None else prior[keep])
        else:
            targets = target_items
        if candidates is not None and bool((~candidates[targets]).any()):
            raise ValueError("a target item is not among the softmax candidates")
        losses = [self._expert_ce(states, table, targets, candidates) for states in (backbone, prior) if states is not None]
        return sum(losses), targets

    @staticmethod
    def _expert_ce(states, table, targets, candidates) -> torch.Tensor:
        """(T,) full-catalogue cross-entropy of (T, K, d) states, mean over the K dimensions."""
        logits = torch.einsum("tkd,ikd->tki", states.float(), table.float())
        count, k, num_items = logits.shape
        if candidates is not None:
            logits = logits.masked_fill(~candidates.to(logits.device)[None, None, :], -math.inf)
        ce = F.cross_entropy(logits.reshape(count * k, num_items), targets.repeat_interleave(k), reduction="none")
        return ce.view(count, k).mean(dim=1)

    # ------------------------------------------------------------------ safety

    @torch.no_grad()
    def verify_mask_honoured(self) -> None:
        """Prove the attention backend applies the 4-D mask, or raise :class:`ConfigError`.

        Runs the masked sequence pass on one random two-token item: changing a token that the
        mask hides from its sibling must leave the sibling's first-layer output unchanged, while the same
        change under the ``full`` ablation (sibling visible) must change it (so the probe
        can fail).
        """
        was_training = self.training
        self.eval()
        try:
            d = self.hidden_size
            device = self.prompt.device
            generator = torch.Generator().manual_seed(0)
            tokens = torch.randn(1, 1, 2, d, generator=generator).to(device)
            changed = tokens.clone()
            changed[0, 0, 0] += torch.randn(d, generator=generator).to(device) * 3
            valid = torch.ones(1, 1, dtype=torch.bool, device=device)
            outputs = {}
            for attention in ("sparse", "full"):
                spec = MaskSpec(self.spec.role, attention, "simultaneous")
                layout = build_layout(valid, 2, self.config.num_prompt_tokens, 0, 0, spec)
                slot = int(torch.nonzero(layout.kind[0] == 2)[-1])  # the item's last token sees the first only under "full"
                for name, item in (("base", tokens), ("changed", changed)):
                    x = torch.cat([self.prompt.unsqueeze(0), item.reshape(1, 2, d)], dim=1)
                    _, hidden = self._sequence_pass(x, layout, want_hidden=True)
                    outputs[attention, name] = hidden[0][0, slot]  # first layer: nothing relayed yet
            hidden_ok = torch.allclose(outputs["sparse", "base"], outputs["sparse", "changed"], atol=1e-4)
            visible_moves = not torch.allclose(outputs["full", "base"], outputs["full", "changed"], atol=1e-4)
            if not (hidden_ok and visible_moves):
                raise ConfigError(
                    f"attention backend {self.config.attn_implementation!r} of the {self.config.backbone} backbone "
                    "does not honour the 4-D attention mask (masked sibling changed the output: "
                    f"{not hidden_ok}; visible sibling left it unchanged: {not visible_moves}); use sdpa or eager"
                )
        finally:
            self.train(was_training)


def _replace_lora(config: SetRecConfig) -> SetRecConfig:
    values = config.to_dict()
    values["lora"] = None
    return SetRecConfig.from_dict(values)
