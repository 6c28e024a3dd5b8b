"""Data of the set-identifier training job: train prefixes, validation and test users.

Training (``train_mode: all_prefix``, the default) cuts each user's train sequence into windows
of at most ``max_len`` input items; a sample is ``(histories (W,), targets (W,))`` with the item
after every position (-1 where there is none or it was scored by an earlier window), so one
packed pass trains every target (``WindowBatches`` of the SASRec job, reused). The reference
(``one_prefix``) makes one sample per target position: the (at most ``max_len``) items before
it, left-padded with -1 (``PrefixBatches``). Validation and test give each user's history (last ``max_len`` items), the gold
set of the split (one item for leave-one-out, several for temporal splits) and the full history
for excluding already-seen items.

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
import torch
from torch.utils.data import DataLoader, Sampler

from recsys.errors import ArtifactError
from recsys.evaluation.metrics import pad_gold
from recsys.models.setrec import pad_histories
from recsys.pipelines.prepared import EvalExamples, PreparedDataset
from recsys.training.sasrec import PrefixBatches, WindowBatches


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


class EvalSets:
    """Collate for validation/test: ``{"histories": (B, L), "gold": (B, G), "seen": (B, H)}``, -1 = padding.

    Args:
        examples: ``PreparedDataset.eval_examples(split)``.
        max_len: history items the model reads.
    """

    def __init__(self, examples: EvalExamples, max_len: int) -> None:
        self.examples = examples
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.examples)

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        histories = [self.examples.histories[i] for i in indices]
        return {
            "histories": pad_histories(histories, self.max_len),
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
        window_stride: new targets per later window (0 = ``max_len``).

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
    ) -> None:
        super().__init__()
        self.data = data
        self.batch_size, self.eval_batch_size, self.seed, self.num_workers = batch_size, eval_batch_size, seed, num_workers
        sequences = data.train_sequences()
        if train_mode == "all_prefix":
            self.train = WindowBatches(sequences, max_len, window_stride or max_len)
            self.num_targets = self.train.num_targets
        else:
            self.train = PrefixBatches(sequences, max_len)
            self.num_targets = len(self.train)
        if len(self.train) == 0:
            raise ArtifactError(
                f"{data.root}: no user has two or more train interactions, so there is no training sample; "
                "check the split of the prepared dataset"
            )
        self.valid = EvalSets(data.eval_examples("valid"), max_len)
        self.test = EvalSets(data.eval_examples("test"), max_len)
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
