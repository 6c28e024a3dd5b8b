"""Token layouts, shared position ids and attention masks of the set-identifier model.

ARCHITECTURE.md section 3.2 and the agreed token layout (DEVELOPERS.md): a row of a batch is

    decoder-only (Qwen):  [pad][prompt_0..P-1][item_0: tok_0..K-1] ... [resp_0..R-1][query_0..Q-1]
    encoder (T5):         [pad][prompt_0..P-1][item_0: tok_0..K-1] ... [resp_0..R-1]

Histories are left-padded at item level, so whole items of padding come first and the
prompt moves after them. Position ids count from the first real token (left padding changes
nothing): prompt p -> p, every token of item j -> P + j, response r -> P + n + r, every
query -> P + n + R (n = the row's real items). A padding token attends only to itself and no
real token ever attends to padding.

Who may attend to whom (:func:`reference_mask` spells it out pair by pair):

- ``decoder_only`` + ``sparse``: prompt p sees prompts <= p; a token of item j sees the prompt,
  every token of items < j and itself (never a sibling); response r sees the prompt, all item
  tokens and responses <= r; query k sees the whole prefix and itself only.
- ``encoder`` + ``sparse``: prompt and response tokens see every real token; a token of item j
  sees the prompt, the response, every token of every other item and itself.
- ``full`` (the ablation): siblings visible and ordinary sequential positions (causal for the
  decoder-only backbone, bidirectional for the encoder).
- ``autoregressive`` generation (the ablation): query k additionally sees queries < k, and the
  queries get consecutive positions P + n + R + k.

Two builders give the same dense boolean mask (True = may attend): :func:`reference_mask`
(a readable loop over token pairs) and :func:`dense_mask` (the fast path, broadcast tensor
ops, passed to SDPA as a 4-D mask). :func:`flex_block_mask` gives a FlexAttention block mask
from the same rule for GPUs.

Example:
    >>> valid = torch.tensor([[False, True, True]])            # one padding item, two real
    >>> layout = build_layout(valid, tokens_per_item=3, num_prompt=2, num_response=1, num_queries=3,
    ...                       spec=MaskSpec("decoder_only"))
    >>> mask = dense_mask(layout)                               # (1, S, S) bool
    >>> torch.equal(mask, reference_mask(layout))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recsys.errors import ConfigError

PAD, PROMPT, ITEM, RESPONSE, QUERY = 0, 1, 2, 3, 4
KIND_NAMES = {PAD: "pad", PROMPT: "prompt", ITEM: "item", RESPONSE: "response", QUERY: "query"}

ROLES = ("decoder_only", "encoder")
ATTENTIONS = ("sparse", "full")
GENERATIONS = ("simultaneous", "autoregressive")


@dataclass(frozen=True)
class MaskSpec:
    """Which attention rule a layout follows.

    Attributes:
        role: ``decoder_only`` (Qwen: prompt, items, response and queries in one sequence) or
            ``encoder`` (T5 encoder: prompt, items, response; the queries go to the decoder).
        attention: ``sparse`` (siblings hidden, shared positions) or ``full`` (the ablation).
        generation: ``simultaneous`` (each query sees only itself among queries) or
            ``autoregressive`` (query k also sees queries < k).
        item_causal: encoder only: item tokens see earlier items only (the decoder-only rule
            without queries), so every prefix of the history has its own encoder states and
            all-prefix training (:func:`build_packed_layout`) is exact. Decoder-only rows are
            always item-causal.
    """

    role: str = "decoder_only"
    attention: str = "sparse"
    generation: str = "simultaneous"
    item_causal: bool = False

    @property
    def causal(self) -> bool:
        """True when the row follows the item-causal (decoder-only) rule."""
        return self.role == "decoder_only" or self.item_causal

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("role", self.role, ROLES),
            ("attention", self.attention, ATTENTIONS),
            ("generation", self.generation, GENERATIONS),
        ):
            if value not in allowed:
                raise ConfigError(f"mask {field} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class TokenLayout:
    """Per-slot description of a left-padded batch; every tensor is (B, S) int64.

    Attributes:
        spec: the attention rule.
        kind: PAD, PROMPT, ITEM, RESPONSE or QUERY.
        index: p for prompts, j (0-based among the row's real items) for item tokens, r for
            responses, k for queries, 0 for padding.
        sub: token index t inside an item (0..K-1), 0 elsewhere.
        position_ids: shared position ids (see the module docstring); 0 for padding.
        source: where each slot's embedding comes from in the concatenation
            ``[zero, prompt (P), history tokens flattened (L*K), response (R), queries]``
            (Q query inputs for one prefix, L*Q for a packed layout: Q per history position).
        group: for response and query slots, the 0-based index of the last history item their
            prefix holds (items 0..group are visible to them); -1 for every other slot. A
            one-prefix row has one group (n - 1); a packed row one per real item.
    """

    spec: MaskSpec
    kind: torch.Tensor
    index: torch.Tensor
    sub: torch.Tensor
    position_ids: torch.Tensor
    source: torch.Tensor
    group: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.kind.shape)  # type: ignore[return-value]

    @property
    def real(self) -> torch.Tensor:
        """(B, S) bool, True for every slot that is not padding."""
        return self.kind != PAD

    def query_slots(self) -> torch.Tensor:
        """Slot indices of the queries (the last Q slots of a decoder-only row)."""
        return torch.nonzero(self.kind[0] == QUERY).flatten()


def _check_left_padded(valid: torch.Tensor) -> None:
    """Raise ValueError unless ``valid`` is a (B, L) bool tensor whose real items form a suffix of each row."""
    if valid.ndim != 2 or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a (B, L) bool tensor, got {tuple(valid.shape)} {valid.dtype}")
    if valid.shape[1] > 1 and bool((valid[:, 1:].long() < valid[:, :-1].long()).any()):
        row = int(torch.nonzero((valid[:, 1:].long() < valid[:, :-1].long()).any(dim=1))[0])
        raise ValueError(f"history row {row} is not left-padded: padding items must all come before real items")


def _slot_fields(off, item_off, K, kinds, resp_index, query_index):
    """Kind, index and sub of every slot from its kind masks; also item number j and token t of item slots."""
    is_prompt, is_item, is_resp, is_query = kinds
    zero = torch.zeros_like(off)
    kind = torch.where(is_prompt, PROMPT, zero)
    kind = torch.where(is_item, ITEM, kind)
    kind = torch.where(is_resp, RESPONSE, kind)
    kind = torch.where(is_query, QUERY, kind)
    j = torch.div(item_off, K, rounding_mode="floor")
    t = item_off - j * K
    index = torch.where(is_prompt, off, zero)
    index = torch.where(is_item, j, index)
    index = torch.where(is_resp, resp_index, index)
    index = torch.where(is_query, query_index, index)
    return kind, index, torch.where(is_item, t, zero), j, t


def build_layout(
    valid: torch.Tensor,
    tokens_per_item: int,
    num_prompt: int,
    num_response: int,
    num_queries: int,
    spec: MaskSpec,
) -> TokenLayout:
    """Lay out a batch of left-padded histories.

    Args:
        valid: (B, L) bool, True for real history items; real items must form a suffix
            of each row (left padding at item level).
        tokens_per_item: K, tokens per history item.
        num_prompt: P, prompt tokens.
        num_response: R, response tokens.
        num_queries: Q, query tokens (decoder-only rows only; ignored for an encoder).
        spec: the attention rule (the role decides whether queries are in the row).

    Returns:
        A :class:`TokenLayout` of S = L*K + P + R (+ Q for decoder-only) slots per row.

    Example:
        >>> build_layout(torch.ones(2, 3, dtype=torch.bool), 5, 2, 1, 5, MaskSpec()).shape
        (2, 23)
    """
    _check_left_padded(valid)
    device = valid.device
    batch, length = valid.shape
    K, P, R = tokens_per_item, num_prompt, num_response
    Q = num_queries if spec.role == "decoder_only" else 0
    S = length * K + P + R + Q
    n = valid.sum(dim=1, keepdim=True)  # (B, 1) real items
    pad = (length - n) * K  # (B, 1) padding slots
    s = torch.arange(S, device=device).unsqueeze(0).expand(batch, S)
    off = s - pad  # offset from the first real slot

    is_pad = off < 0
    is_prompt = (off >= 0) & (off < P)
    item_off = off - P
    is_item = (item_off >= 0) & (item_off < n * K)
    resp_off = item_off - n * K
    is_resp = (resp_off >= 0) & (resp_off < R)
    q_off = s - (S - Q)
    is_query = q_off >= 0

    zero = torch.zeros_like(s)
    kind, index, sub, j, t = _slot_fields(off, item_off, K, (is_prompt, is_item, is_resp, is_query), resp_off, q_off)

    if spec.attention == "sparse":
        item_pos, resp_pos = P + j, P + n + resp_off
        query_base = P + n + R
    else:  # ordinary sequential positions
        item_pos, resp_pos = off, off
        query_base = P + n * K + R
    query_pos = query_base + (q_off if spec.generation == "autoregressive" else 0)
    position_ids = torch.where(is_prompt, off, zero)
    position_ids = torch.where(is_item, item_pos, position_ids)
    position_ids = torch.where(is_resp, resp_pos, position_ids)
    position_ids = torch.where(is_query, query_pos, position_ids)

    # history slot of item j, token t in the (L*K) flattened left-padded history
    hist_flat = (length - n + j) * K + t
    source = torch.where(is_prompt, 1 + off, zero)
    source = torch.where(is_item, 1 + P + hist_flat, source)
    source = torch.where(is_resp, 1 + P + length * K + resp_off, source)
    source = torch.where(is_query, 1 + P + length * K + R + q_off, source)
    group = torch.where(is_resp | is_query, (n - 1).expand(batch, S), zero - 1)
    del is_pad
    return TokenLayout(spec, kind, index, sub, position_ids, source, group)


def build_packed_layout(
    valid: torch.Tensor,
    tokens_per_item: int,
    num_prompt: int,
    num_response: int,
    num_queries: int,
    spec: MaskSpec,
) -> TokenLayout:
    """Lay out every prefix of a batch of left-padded histories in one row (all-prefix training).

    A row is ``[pad][prompt][item_0 .. item_{n-1}][group_0 .. group_{n-1}]`` where group g holds R
    response tokens and (decoder-only) Q query tokens that close the prefix ``item_0..item_g``:
    they see the prompt, items <= g and their own group only, with the position ids that the
    one-prefix layout of that prefix gives them. Items follow the item-causal rule, so each
    group's outputs equal those of :func:`build_layout` on its prefix alone (ARCHITECTURE.md 3.3,
    all-prefix training). Padding comes first: (L - n) * (K + R + Q) slots.

    Args:
        valid: (B, L) bool, True for real items, left-padded.
        tokens_per_item / num_prompt / num_response / num_queries: K, P, R, Q (Q ignored for an encoder).
        spec: the rule; an encoder spec must be ``item_causal`` (a bidirectional encoder lets
            item j see items after it, so no prefix would be exact).

    Returns:
        A :class:`TokenLayout` of S = P + L*K + L*(R + Q) slots. The query slot of history
        position p (0..L-1) and query q is ``S - (L - p) * (R + Q) + R + q`` (:func:`packed_query_slots`).

    Example:
        >>> layout = build_packed_layout(torch.ones(1, 3, dtype=torch.bool), 2, 1, 1, 2, MaskSpec())
        >>> layout.shape                     # 1 + 3*2 + 3*(1 + 2)
        (1, 16)
    """
    if not spec.causal:
        raise ConfigError("a packed (all-prefix) layout needs item-causal attention; the bidirectional encoder has none")
    _check_left_padded(valid)
    device = valid.device
    batch, length = valid.shape
    K, P, R = tokens_per_item, num_prompt, num_response
    Q = num_queries if spec.role == "decoder_only" else 0
    G = R + Q
    S = P + length * K + length * G
    n = valid.sum(dim=1, keepdim=True)
    pad = (length - n) * (K + G)
    s = torch.arange(S, device=device).unsqueeze(0).expand(batch, S)
    off = s - pad

    is_prompt = (off >= 0) & (off < P)
    item_off = off - P
    is_item = (item_off >= 0) & (item_off < n * K)
    grp_off = item_off - n * K
    is_grp = grp_off >= 0
    g = torch.div(grp_off, max(G, 1), rounding_mode="floor")
    w = grp_off - g * G
    is_resp = is_grp & (w < R)
    is_query = is_grp & (w >= R)

    zero = torch.zeros_like(s)
    kind, index, sub, j, t = _slot_fields(off, item_off, K, (is_prompt, is_item, is_resp, is_query), w, w - R)
    group = torch.where(is_resp | is_query, g, zero - 1)

    items_seen = g + 1  # the prefix of group g holds g + 1 items
    if spec.attention == "sparse":
        item_pos, resp_pos, query_base = P + j, P + items_seen + w, P + items_seen + R
    else:
        item_pos, resp_pos, query_base = P + item_off, P + items_seen * K + w, P + items_seen * K + R
    query_pos = query_base + ((w - R) if spec.generation == "autoregressive" else 0)
    position_ids = torch.where(is_prompt, off, zero)
    position_ids = torch.where(is_item, item_pos, position_ids)
    position_ids = torch.where(is_resp, resp_pos, position_ids)
    position_ids = torch.where(is_query, query_pos, position_ids)

    source = torch.where(is_prompt, 1 + off, zero)
    source = torch.where(is_item, 1 + P + (length - n + j) * K + t, source)
    source = torch.where(is_resp, 1 + P + length * K + w, source)
    source = torch.where(is_query, 1 + P + length * K + R + (length - n + g) * Q + (w - R), source)
    return TokenLayout(spec, kind, index, sub, position_ids, source, group)


def packed_query_slots(length: int, num_slots: int, num_response: int, num_queries: int, device=None) -> torch.Tensor:
    """(L, Q) slot indices of the queries of each history position in a packed decoder-only row.

    ``num_slots`` is S of the layout; rows differ only in padding, so one index serves the batch
    (positions that are padding point at slots whose outputs are ignored).
    """
    G = num_response + num_queries
    p = torch.arange(length, device=device)[:, None]
    q = torch.arange(num_queries, device=device)[None, :]
    return num_slots - (length - p) * G + num_response + q


def cross_mask(layout: TokenLayout, groups: torch.Tensor) -> torch.Tensor:
    """(B, M, S) bool: which encoder slots each of M decoder queries may attend to (T5).

    Query m closes the prefix ``items 0..groups[b, m]``: it sees the prompt, those items and the
    response tokens of its group. A query of a padding position (group < 0) sees every real slot
    (its output is ignored, and a row with no visible key would make attention undefined).
    For a one-prefix layout with ``groups = n - 1`` this is every real slot.

    Args:
        layout: the encoder layout (:func:`build_layout` or :func:`build_packed_layout`).
        groups: (B, M) int64, each decoder query's group.
    """
    kind, index, group = layout.kind[:, None, :], layout.index[:, None, :], layout.group[:, None, :]
    g = groups[:, :, None]
    sees = (kind == PROMPT) | ((kind == ITEM) & (index <= g)) | ((kind == RESPONSE) & (group == g))
    return torch.where(g >= 0, sees, kind != PAD)


# --------------------------------------------------------------------------- reference


def _may_attend(spec: MaskSpec, q: tuple[int, int, int, int], k: tuple[int, int, int, int]) -> bool:
    """The rule for one (query slot, key slot) pair; each slot is (kind, index, group, slot number)."""
    q_kind, q_index, q_group, q_slot = q
    k_kind, k_index, k_group, k_slot = k
    if q_slot == k_slot:
        return True  # every token sees itself (padding only itself)
    if q_kind == PAD or k_kind == PAD:
        return False
    autoregressive = spec.generation == "autoregressive"
    if not spec.causal:  # the bidirectional encoder
        if spec.attention == "full":
            return True
        return not (q_kind == ITEM and k_kind == ITEM and q_index == k_index)  # siblings hidden
    # item-causal rule (decoder-only rows, or an item-causal encoder)
    closes_prefix = q_kind in (RESPONSE, QUERY)  # response and query tokens close the prefix of their group
    if k_kind == QUERY:
        return q_kind == QUERY and autoregressive and k_group == q_group and k_index < q_index
    if k_kind == PROMPT:
        return q_kind != PROMPT or k_index < q_index
    if k_kind == ITEM:
        if closes_prefix:
            return k_index <= q_group
        if spec.attention == "full":
            return k_slot < q_slot  # causal over the item tokens, earlier siblings included
        return q_kind == ITEM and k_index < q_index
    if k_kind == RESPONSE:
        return closes_prefix and k_group == q_group and (q_kind == QUERY or k_index < q_index)
    raise AssertionError(f"unknown key kind {k_kind}")


def reference_mask(layout: TokenLayout) -> torch.Tensor:
    """Dense (B, S, S) bool mask, True where slot q may attend to slot k; pair by pair.

    Slow (Python loops) and obviously right; :func:`dense_mask` must equal it.
    """
    batch, length = layout.shape
    kind, index, group = layout.kind.tolist(), layout.index.tolist(), layout.group.tolist()
    out = torch.zeros(batch, length, length, dtype=torch.bool)
    for b in range(batch):
        slots = [(kind[b][s], index[b][s], group[b][s], s) for s in range(length)]
        rows = [[_may_attend(layout.spec, q, k) for k in slots] for q in slots]
        out[b] = torch.tensor(rows, dtype=torch.bool)
    return out.to(layout.kind.device)


# --------------------------------------------------------------------------- fast path


def _rule(
    spec: MaskSpec,
    q_kind: torch.Tensor,
    q_index: torch.Tensor,
    q_group: torch.Tensor,
    q_slot: torch.Tensor,
    k_kind: torch.Tensor,
    k_index: torch.Tensor,
    k_group: torch.Tensor,
    k_slot: torch.Tensor,
) -> torch.Tensor:
    """:func:`_may_attend` as broadcasting tensor ops (also used as a FlexAttention mask_mod)."""
    same = q_slot == k_slot
    both_real = (q_kind != PAD) & (k_kind != PAD)
    if not spec.causal:
        if spec.attention == "full":
            return same | both_real
        siblings = (q_kind == ITEM) & (k_kind == ITEM) & (q_index == k_index)
        return same | (both_real & ~siblings)
    autoregressive = spec.generation == "autoregressive"
    q_query = q_kind == QUERY
    closes = (q_kind == RESPONSE) | q_query
    same_group = k_group == q_group
    if autoregressive:
        query_key = (k_kind == QUERY) & q_query & same_group & (k_index < q_index)
    else:
        query_key = torch.zeros_like(same)
    prompt_key = (k_kind == PROMPT) & ((q_kind != PROMPT) | (k_index < q_index))
    if spec.attention == "full":
        item_to_item = (q_kind == ITEM) & (k_slot < q_slot)
    else:
        item_to_item = (q_kind == ITEM) & (k_index < q_index)
    item_key = (k_kind == ITEM) & (item_to_item | (closes & (k_index <= q_group)))
    resp_key = (k_kind == RESPONSE) & closes & same_group & (q_query | (k_index < q_index))
    return same | (both_real & (prompt_key | item_key | resp_key | query_key))


def dense_mask(layout: TokenLayout) -> torch.Tensor:
    """Dense (B, S, S) bool mask, True where slot q may attend to slot k; vectorised.

    Same signature and result as :func:`reference_mask`.
    """
    batch, length = layout.shape
    slot = torch.arange(length, device=layout.kind.device).expand(batch, length)
    return _rule(
        layout.spec,
        layout.kind[:, :, None],
        layout.index[:, :, None],
        layout.group[:, :, None],
        slot[:, :, None],
        layout.kind[:, None, :],
        layout.index[:, None, :],
        layout.group[:, None, :],
        slot[:, None, :],
    )


def flex_block_mask(layout: TokenLayout):
    """A FlexAttention ``BlockMask`` for the layout (same rule; for ``flex_attention`` on GPU)."""
    from torch.nn.attention.flex_attention import create_block_mask

    kind, index, group, spec = layout.kind, layout.index, layout.group, layout.spec

    def mask_mod(b, h, q_idx, kv_idx):
        return _rule(spec, kind[b, q_idx], index[b, q_idx], group[b, q_idx], q_idx,
                     kind[b, kv_idx], index[b, kv_idx], group[b, kv_idx], kv_idx)

    batch, length = layout.shape
    return create_block_mask(mask_mod, batch, None, length, length, device=str(kind.device))


def query_self_mask(num_queries: int, generation: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """(Q, Q) bool self-attention mask of the T5 query decoder.

    A hard identity for simultaneous generation (each query sees only itself), lower
    triangular for the autoregressive ablation.
    """
    if generation not in GENERATIONS:
        raise ConfigError(f"generation must be one of {GENERATIONS}, got {generation!r}")
    eye = torch.eye(num_queries, dtype=torch.bool, device=device)
    if generation == "simultaneous":
        return eye
    return torch.ones(num_queries, num_queries, dtype=torch.bool, device=device).tril()


def for_backend(mask: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """A (B, S, S) or (S, S) bool mask as the 4-D mask an attention backend honours.

    SDPA takes booleans (True = attend); the eager backends ADD the mask to the scores, so
    they get 0 / most-negative floats (a boolean added as +1 would be the pitfall of
    ARCHITECTURE.md 3.4).
    """
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    mask = mask.unsqueeze(1)  # (B, 1, S, S): one mask for every head
    if attn_implementation == "sdpa":
        return mask
    if attn_implementation == "eager":
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return additive.masked_fill(~mask, torch.finfo(dtype).min)
    raise ConfigError(f"attn_implementation {attn_implementation!r} takes no dense mask; use sdpa or eager")
