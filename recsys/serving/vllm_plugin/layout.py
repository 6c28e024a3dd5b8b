"""The decoder-only set-identifier layout, rebuilt from sequence lengths alone.

One user's sequence is ``[prompt P] [L items x (N+1) tokens] [response R] [queries N+1]``
(the agreed layout of the model). Its length fixes L, so shared positions and the
sparse mask follow from the length: prompt p -> p; every token of item j -> P + j;
response r -> P + L + r; every query -> P + L + R. A token sees exactly the tokens of
a smaller shared position, and itself: that is the prompt's causal rule, "earlier
items but never siblings", "all items and earlier responses", and "everything before
the queries but no other query" in one comparison.

vLLM hands a pooling model the whole batch flattened, with ordinary positions that
restart at 0 at each sequence start (one prefill per request: chunked prefill and
prefix caching are off for this model). :func:`segments_from_positions` finds the
starts; :func:`packed_layout` rebuilds positions and a padded per-sequence mask.

Example:
    >>> layout = SetLayout(prompt_tokens=2, response_tokens=1, item_tokens=3)
    >>> layout.length(num_items=2)                  # 2 + 6 + 1 + 3 = 12
    >>> layout.positions(12).tolist()               # [0, 1, 2, 2, 2, 3, 3, 3, 4, 5, 5, 5]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SetLayout:
    """Token counts of the decoder-only layout.

    Attributes:
        prompt_tokens: P, learnable prompt embeddings before the history.
        response_tokens: R, learnable response embeddings after the history.
        item_tokens: N+1, tokens per item (also the number of queries).
    """

    prompt_tokens: int
    response_tokens: int
    item_tokens: int

    def length(self, num_items: int) -> int:
        """Sequence length of a history of ``num_items`` items."""
        return self.prompt_tokens + (num_items + 1) * self.item_tokens + self.response_tokens

    def num_items(self, length: int) -> int | None:
        """History length L of a sequence of ``length`` tokens, or None when no L fits."""
        rest = length - self.prompt_tokens - self.response_tokens - self.item_tokens
        if rest < 0 or rest % self.item_tokens:
            return None
        return rest // self.item_tokens

    def positions(self, length: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Shared position ids (int64) of one sequence of ``length`` tokens.

        Raises:
            ValueError: no history length gives ``length`` tokens.
        """
        num_items = self.num_items(length)
        if num_items is None:
            raise ValueError(f"a sequence of {length} tokens does not fit the layout {self}")
        p, r, t = self.prompt_tokens, self.response_tokens, self.item_tokens
        parts = [
            torch.arange(p, device=device),
            p + torch.arange(num_items, device=device).repeat_interleave(t),
            p + num_items + torch.arange(r, device=device),
            torch.full((t,), p + num_items + r, device=device),
        ]
        return torch.cat(parts).to(torch.int64)

    def mask(self, length: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(length, length) bool mask of one sequence: True where row may attend to column."""
        return visible(self.positions(length, device))


def visible(positions: torch.Tensor) -> torch.Tensor:
    """Who sees whom from shared positions: a strictly smaller position, or itself.

    Args:
        positions: (..., T) shared position ids of one sequence (or a batch of them).

    Returns:
        (..., T, T) bool, True where the row token may attend to the column token.
    """
    earlier = positions.unsqueeze(-1) > positions.unsqueeze(-2)
    eye = torch.eye(positions.shape[-1], dtype=torch.bool, device=positions.device)
    return earlier | eye


def segments_from_positions(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Starts and lengths of the sequences packed in a flat batch.

    A sequence starts wherever the ordinary position is 0.

    Args:
        positions: (T_total,) positions vLLM passes (0..len-1 per sequence).

    Returns:
        (starts, lengths): int64 tensors, one entry per sequence, on the input's device.
    """
    total = positions.shape[0]
    starts = torch.nonzero(positions == 0, as_tuple=False).flatten()
    if starts.numel() == 0 or starts[0] != 0:
        # A batch always starts a sequence at 0; anything before the first 0 is one segment.
        starts = torch.cat([torch.zeros(1, dtype=starts.dtype, device=starts.device), starts])
    ends = torch.cat([starts[1:], torch.tensor([total], device=starts.device, dtype=starts.dtype)])
    return starts, ends - starts


@dataclass
class PackedLayout:
    """Everything the attention of one packed batch needs, computed once per forward.

    Attributes:
        positions: (T_total,) shared position ids (0 for tokens of sequences that do not
            fit the layout, which vLLM may add as padding).
        gather: (B, T_max) index into the flat batch of each padded slot (0 for empty slots).
        valid: (B, T_max) bool, True for real slots.
        mask: (B, 1, T_max, T_max) bool attention mask; empty slots see only themselves.
        flat_index: (T_total,) position of each flat token in the (B * T_max) padded view.
        fits: (B,) bool, False for sequences that do not fit the layout.
    """

    positions: torch.Tensor
    gather: torch.Tensor
    valid: torch.Tensor
    mask: torch.Tensor
    flat_index: torch.Tensor
    fits: torch.Tensor


def packed_layout(layout: SetLayout, positions: torch.Tensor) -> PackedLayout:
    """Rebuild shared positions and the padded per-sequence mask of a flat vLLM batch.

    Args:
        layout: the token counts.
        positions: (T_total,) ordinary positions, restarting at 0 per sequence.

    Example:
        >>> packed = packed_layout(SetLayout(1, 1, 2), torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3]))
        >>> packed.positions.tolist()   # [0, 1, 1, 2, 3, 3, 0, 1, 2, 2]
    """
    device = positions.device
    starts, lengths = segments_from_positions(positions)
    lengths_cpu = lengths.tolist()
    batch, t_max = len(lengths_cpu), max(lengths_cpu)
    shared = torch.zeros(positions.shape[0], dtype=torch.int64, device=device)
    padded_pos = torch.zeros(batch, t_max, dtype=torch.int64, device=device)
    fits = torch.zeros(batch, dtype=torch.bool)
    slot = torch.arange(t_max, device=device)
    valid = slot.unsqueeze(0) < lengths.unsqueeze(1)
    for row, (start, length) in enumerate(zip(starts.tolist(), lengths_cpu)):
        if layout.num_items(length) is None:
            continue  # padding or a foreign sequence: each token sees only itself
        fits[row] = True
        pos = layout.positions(length, device)
        shared[start : start + length] = pos
        padded_pos[row, :length] = pos
    gather = torch.where(valid, starts.unsqueeze(1) + slot.unsqueeze(0), torch.zeros_like(padded_pos))
    mask = visible(padded_pos) & valid.unsqueeze(1) & valid.unsqueeze(2)
    not_fit = (~fits).to(device)
    if bool(not_fit.any()):
        mask[not_fit] = torch.eye(t_max, dtype=torch.bool, device=device)
    mask |= torch.eye(t_max, dtype=torch.bool, device=device)  # empty slots: themselves only
    flat_index = (torch.arange(batch, device=device).unsqueeze(1) * t_max + slot.unsqueeze(0))[valid]
    return PackedLayout(shared, gather, valid, mask.unsqueeze(1), flat_index, fits)
