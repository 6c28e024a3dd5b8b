"""Data of the set-identifier training job: train prefixes, validation and test users.

Training (``train_mode: all_prefix``, the default) cuts each user's train sequence into windows
of at most ``max_len`` input items; a sample is ``(histories (W,), targets (W,))`` with the item
after every position (-1 where there is none or it was scored by an earlier window), so one
packed pass trains every target (``WindowBatches`` of the SASRec job, reused). The reference
(``one_prefix``) makes one sample per target position: the (at most ``max_len``) items before
it, left-padded with -1 (``PrefixBatches``). Validation and test give each user's history (the ``max_len`` items the
model reads), the gold set of the split (one item for leave-one-out, several for temporal splits) and the full
history for excluding already-seen items.

Long histories (``history.selection: dare``, :mod:`recsys.models.history_selection`): validation,
test and every one-prefix sample read the items the selection rule keeps, exactly as serving does;
packed windows use the approximation of :class:`SelectedWindowBatches`. With ``recent`` (the
default) the data are what they were before the rule existed.

The training order is a function of (seed, epoch) only (:class:`EpochSampler`), so a run resumed
from an epoch checkpoint sees the same batches as an uninterrupted one. Under ``ddp``/``fsdp``
Lightning swaps in a ``DistributedSampler``, which is also seeded per epoch.

Example:
    >>> dm = SetRecDataModule(PreparedDataset.load("runs/data/ml-100k"), max_len=20, batch_size=256)
    >>> histories, targets = next(iter(dm.train_dataloader()))   # (256, <=20), (256,)
    >>> batch = next(iter(dm.val_dataloader()))                    # dict: histories, gold, seen
"""

from __future__ import annotations

from typing import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from recsys.errors import ArtifactError, ConfigError
from recsys.evaluation.metrics import pad_gold
from recsys.models.history_selection import HistorySelector
from recsys.models.setrec import pad_histories
from recsys.pipelines.prepared import EvalExamples, PreparedDataset
from recsys.training.sasrec import PrefixBatches, WindowBatches

PAD = -1  # history padding of the set-identifier model (recsys.models.setrec.pad_histories)


class EpochSampler(Sampler[int]):
    """A random permutation of ``range(n)`` that depends only on (seed, epoch).

    Lightning calls :meth:`set_epoch` before every epoch, so resuming at epoch e reproduces
    the order of an uninterrupted run.

    Example:
        >>> s = EpochSampler(5, seed=0); s.set_epoch(1); list(s)   # same list every time
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


def dare_window_stride(max_len: int, window_stride: int, search_k: int) -> int:
    """The stride of packed windows under ``dare``: ``window_stride``, or R // 2 when it is 0 (R = max_len - search_k).

    R // 2 keeps half of each later window's recent segment as context (the query of the search) and
    scores the other half; with the ``recent`` default (stride = max_len, no context) the search
    would have no query.

    Raises:
        ConfigError: the stride is not in [1, R).

    Example:
        >>> dare_window_stride(50, 0, 10)
        20
    """
    recent = max_len - search_k
    stride = window_stride or recent // 2
    if not 1 <= stride < recent:
        raise ConfigError(f"window_stride: with history.selection dare it must lie in [1, {recent}) "
                          f"(max_len - history.search_k), got {stride}")
    return stride


class SelectedWindowBatches:
    """Packed windows (``all_prefix``) whose later windows read ``search_k`` older items chosen by the DARE search.

    A user's first window is :class:`~recsys.training.sasrec.WindowBatches`'s: its first ``max_len``
    inputs, every prefix at most ``max_len`` items, nothing to select. Every later window holds
    K = ``search_k`` older items selected by the rule, then a contiguous segment of R = max_len - K
    items ending at its last target. The segment's first ``R - stride`` items (or more, at a
    sequence's end) are context: their targets were scored by an earlier window, so they are not
    scored here, as in later windows of ``WindowBatches``; the other positions are scored. The
    search's query is the mean attention embedding of that context part and its candidates are all
    the user's items before the segment.

    This is the packed approximation of the rule: the exact rule would rebuild each prefix's
    history around its own last R items (one pass per target); here all the window's scored
    prefixes share the K selected items and read between R - stride + 1 and R recent items. It
    does not leak: the query (context part) and the candidates (before the segment) lie strictly
    before the window's first scored target, which every scored prefix reads (causal attention
    does the rest); the selected items come first in the window and are never scored. Returns
    ``(histories (B, W), targets (B, W))`` like ``WindowBatches``, -1 where a position is padding,
    a selected item, or context.

    Args:
        sequences: each user's train items, oldest first.
        max_len: M, window length.
        stride: new targets per later window, in [1, R) (:func:`dare_window_stride`).
        selector: the :class:`~recsys.models.history_selection.HistorySelector` (``dare``).

    Example:
        >>> batches = SelectedWindowBatches(sequences, 50, 20, selector)
        >>> histories, targets = batches([0, 1, 2])
    """

    def __init__(self, sequences: list[list[int]], max_len: int, stride: int, selector: HistorySelector) -> None:
        k = selector.search_k
        recent = max_len - k
        if k < 1 or not 1 <= stride < recent:
            raise ConfigError(f"window_stride: dare windows need search_k >= 1 and 1 <= stride < {recent}, got "
                              f"search_k {k}, stride {stride}")
        self.selector, self.max_len, self.search_k = selector, max_len, k
        self.items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if sequences else np.zeros(0, np.int64)
        # segment inputs items[start:end], targets counted from first; candidates items[origin:start] (later windows)
        starts, ends, firsts, origins, later = [], [], [], [], []
        offset = 0
        for seq in sequences:
            last = offset + len(seq) - 1  # flat index of the last target
            if len(seq) >= 2:
                end = min(offset + max_len, last)
                starts.append(offset); ends.append(end); firsts.append(offset + 1); origins.append(offset); later.append(False)
                covered = end
                while covered < last:
                    target_end = min(covered + stride, last)
                    starts.append(target_end - recent); ends.append(target_end); firsts.append(covered + 1)
                    origins.append(offset); later.append(True)
                    covered = target_end
            offset += len(seq)
        self.starts, self.ends, self.firsts, self.origins = (np.asarray(a, dtype=np.int64) for a in (starts, ends, firsts, origins))
        self.later = np.asarray(later, dtype=bool)
        self.num_targets = int(sum(max(len(s) - 1, 0) for s in sequences))

    def __len__(self) -> int:
        return len(self.starts)

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """One window: (inputs (n,), targets (n,)), -1 targets where not scored."""
        start, end, first = int(self.starts[index]), int(self.ends[index]), int(self.firsts[index])
        inputs = self.items[start:end]
        positions = np.arange(start, end)
        targets = np.where(positions + 1 >= first, self.items[np.minimum(positions + 1, len(self.items) - 1)], -1)
        if not self.later[index]:
            return inputs, targets
        candidates = self.items[int(self.origins[index]):start]
        context = self.items[start:first - 1]  # inputs whose targets were scored before: before every scored target
        kept = candidates[self.selector.select_older(candidates, context)]
        return np.concatenate([kept, inputs]), np.concatenate([np.full(len(kept), -1, dtype=np.int64), targets])

    def __call__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.window(int(i)) for i in indices]
        width = max(len(inputs) for inputs, _ in rows)
        histories = np.full((len(rows), width), PAD, dtype=np.int64)
        targets = np.full((len(rows), width), -1, dtype=np.int64)
        for row, (inputs, scored) in enumerate(rows):
            histories[row, width - len(inputs):] = inputs
            targets[row, width - len(scored):] = scored
        return torch.from_numpy(histories), torch.from_numpy(targets)


class SelectedPrefixBatches(PrefixBatches):
    """One-prefix samples (the reference path) whose histories are what the selection rule keeps.

    A target's history is every train item before it; the rule (:class:`HistorySelector`) keeps at most
    ``max_len`` of them, left-padded with -1. Same samples and order as :class:`PrefixBatches`.

    Example:
        >>> histories, targets = SelectedPrefixBatches(sequences, 50, selector)([0, 1])
    """

    def __init__(self, sequences: list[list[int]], max_len: int, selector: HistorySelector) -> None:
        super().__init__(sequences, max_len)
        self.selector = selector

    def __call__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        histories = [self.selector.select(self.items[start:end]) for start, end in zip(self.seq_start[idx], self.target_pos[idx])]
        width = max(1, max(len(h) for h in histories))
        out = np.full((len(histories), width), PAD, dtype=np.int64)
        for row, items in enumerate(histories):
            if len(items):
                out[row, width - len(items):] = items
        return torch.from_numpy(out), torch.from_numpy(self.items[self.target_pos[idx]])


class EvalSets:
    """Collate for validation/test: ``{"histories": (B, L), "gold": (B, G), "seen": (B, H)}``, -1 = padding.

    Args:
        examples: ``PreparedDataset.eval_examples(split)``.
        max_len: history items the model reads.
        selector: which ``max_len`` items of a longer history are read (None: the last ``max_len``).
    """

    def __init__(self, examples: EvalExamples, max_len: int, selector: HistorySelector | None = None) -> None:
        self.examples = examples
        self.max_len = max_len
        self.selector = selector or HistorySelector(None, max_len)

    def __len__(self) -> int:
        return len(self.examples)

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        histories = [self.examples.histories[i] for i in indices]
        return {
            "histories": pad_histories(self.selector(histories), self.max_len),
            "gold": pad_gold([self.examples.gold[i] for i in indices]),
            "seen": pad_histories(histories, max(len(h) for h in histories)),
        }


class SetRecDataModule(L.LightningDataModule):
    """Train prefixes plus valid/test users of a prepared dataset.

    Args:
        data: the prepared dataset.
        max_len: history items kept per sample.
        batch_size: training samples per batch.
        eval_batch_size: users per evaluation batch.
        seed: seeds the training order.
        num_workers: DataLoader workers.
        train_mode: ``all_prefix`` (windows, every target of a window in one pass) or ``one_prefix``.
        window_stride: new targets per later window (0 = ``max_len``; under ``dare`` 0 = R // 2, see
            :func:`dare_window_stride`).
        selector: the long-history selection (:class:`HistorySelector`); None or ``recent``: the last ``max_len``.

    Raises:
        ArtifactError: no training sample, or no validation user.
    """

    def __init__(
        self,
        data: PreparedDataset,
        max_len: int,
        batch_size: int,
        eval_batch_size: int = 256,
        seed: int = 0,
        num_workers: int = 0,
        train_mode: str = "all_prefix",
        window_stride: int = 0,
        selector: HistorySelector | None = None,
    ) -> None:
        super().__init__()
        self.data = data
        self.batch_size, self.eval_batch_size, self.seed, self.num_workers = batch_size, eval_batch_size, seed, num_workers
        selector = selector or HistorySelector(None, max_len)
        if selector.max_len != max_len:
            raise ConfigError(f"history: the selector reads {selector.max_len} items but max_len is {max_len}")
        dare = selector.search_k > 0
        sequences = data.train_sequences()
        self.train: WindowBatches | SelectedWindowBatches | PrefixBatches
        if train_mode == "all_prefix" and dare:
            stride = dare_window_stride(max_len, window_stride, selector.search_k)
            self.train = SelectedWindowBatches(sequences, max_len, stride, selector)
            self.num_targets = self.train.num_targets
        elif train_mode == "all_prefix":
            self.train = WindowBatches(sequences, max_len, window_stride or max_len)
            self.num_targets = self.train.num_targets
        elif dare:
            self.train = SelectedPrefixBatches(sequences, max_len, selector)
            self.num_targets = len(self.train)
        else:
            self.train = PrefixBatches(sequences, max_len)
            self.num_targets = len(self.train)
        if len(self.train) == 0:
            raise ArtifactError(
                f"{data.root}: no user has two or more train interactions, so there is no training sample; "
                "check the split of the prepared dataset"
            )
        self.valid = EvalSets(data.eval_examples("valid"), max_len, selector)
        self.test = EvalSets(data.eval_examples("test"), max_len, selector)
        if len(self.valid) == 0:
            raise ArtifactError(
                f"{data.root}: the valid split has no user with a history, so early stopping and the choice of beta "
                "are impossible; prepare the dataset with a split that has validation items"
            )

    def counts(self) -> dict[str, int]:
        """Samples and users per split (logged as params)."""
        return {"train_samples": len(self.train), "train_targets": self.num_targets,
                "valid_users": len(self.valid), "test_users": len(self.test)}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            range(len(self.train)),
            batch_size=self.batch_size,
            sampler=EpochSampler(len(self.train), self.seed),
            collate_fn=self.train,
            generator=torch.Generator().manual_seed(self.seed),  # never draws from the global RNG
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, collate: EvalSets) -> DataLoader:
        return DataLoader(range(len(collate)), batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.valid)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test)
