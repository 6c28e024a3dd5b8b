"""Train SASRec with Lightning on the train split; early stopping on validation NDCG@10.

Protocol (the RecBole sequential protocol): every target position of a user's train
sequence is one training sample whose input is the (at most ``max_len``) items before it;
the loss is full-softmax cross-entropy over the whole catalogue. :class:`PrefixBatches` is
that protocol written plainly (the reference, ``train_samples="prefixes"``);
:class:`WindowBatches` is the fast path (the default): one causal pass over a window of
``max_len`` items scores every target in it, so each epoch still scores every target once,
with the same history whenever the user has at most ``max_len`` earlier train items (tests
hold the two equal; with ``window_stride=1`` they are identical). Validation and test score
the full catalogue for each user with ``recsys.evaluation.metrics`` (batched, ties count
against the gold item) and exclude nothing: items already in the history stay rankable,
as in RecBole's full-sort evaluation of sequential models. When a split holds several
gold items for a user (temporal splits) the first one is the next-item target.

The best epoch on validation NDCG@10 is kept in memory and restored before testing.

Example:
    >>> data = PreparedDataset.load("/tmp/setrec-data/ml-100k")
    >>> result = fit_sasrec(data, SASRecConfig(max_epochs=50), out_dir=Path("runs/sasrec"))
    >>> result.test_metrics["ndcg@10"], result.seconds_per_epoch
    >>> model, config = load_sasrec("runs/sasrec")
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from recsys.errors import ArtifactError, ConfigError
from recsys.evaluation.metrics import gold_ranks, loo_metrics
from recsys.models.sasrec import PAD, SASRec, SASRecConfig
from recsys.pipelines.prepared import EvalExamples, PreparedDataset

MONITOR = "valid/ndcg@10"
KS = (5, 10, 20)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: v2: positions count from the oldest item kept (v1 counted back from the most recent one;
#: v1 weights give wrong scores under v2 positions, so they are refused).
WEIGHTS_FORMAT = "setrec-sasrec-v2"


# --------------------------------------------------------------------------- data


class PrefixBatches:
    """Collate function turning sample indices into (histories, targets) of the prefix protocol.

    Sequences are stored flat (``items``) with each sample's target position and the start of
    its sequence, so memory stays linear in the number of interactions.

    Args:
        sequences: each user's train items, oldest first.
        max_len: most recent items kept in a history.
    """

    def __init__(self, sequences: list[list[int]], max_len: int) -> None:
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        self.items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if sequences else np.zeros(0, np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(sequences) else np.zeros(0, np.int64)
        # every position but the first of each sequence is a target
        self.target_pos = np.concatenate(
            [np.arange(start + 1, start + n) for start, n in zip(starts, lengths)]
        ) if len(sequences) else np.zeros(0, np.int64)
        self.seq_start = np.repeat(starts, np.maximum(lengths - 1, 0))
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.target_pos)

    def __call__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        target_pos, seq_start = self.target_pos[idx], self.seq_start[idx]
        width = int(min(self.max_len, (target_pos - seq_start).max()))
        pos = target_pos[:, None] - np.arange(width, 0, -1)[None, :]  # (B, width), oldest first
        valid = pos >= seq_start[:, None]
        histories = np.where(valid, self.items[np.maximum(pos, 0)], PAD)
        return torch.from_numpy(histories), torch.from_numpy(self.items[target_pos])


class WindowBatches:
    """Collate function of the fast path: windows of ``max_len`` items scoring many targets in one causal pass.

    A user's first window holds the items before each of their first ``max_len`` targets, so
    those targets get exactly their prefix-protocol history. Each later window ends at a
    target ``window_stride`` further on, and only its targets not scored before count, so
    every target is scored once per epoch with at least ``max_len - window_stride + 1``
    history items. Returns ``(histories (B, W), targets (B, W))``, targets -1 where a
    position is padding or was scored by an earlier window.

    Args:
        sequences: each user's train items, oldest first.
        max_len: window length (the model's ``max_len``).
        stride: new targets per later window (1 reproduces :class:`PrefixBatches` exactly).
    """

    def __init__(self, sequences: list[list[int]], max_len: int, stride: int) -> None:
        if stride < 1:
            raise ConfigError(f"window stride must be >= 1, got {stride}")
        stride = min(stride, max_len)
        self.items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if sequences else np.zeros(0, np.int64)
        starts, ends, firsts = [], [], []  # window inputs items[start:end]; targets items[start+1:end+1], counted from first
        offset = 0
        for seq in sequences:
            last = offset + len(seq) - 1  # flat index of the last target
            if len(seq) >= 2:
                end = min(offset + max_len, last)  # exclusive end of inputs; targets up to index end
                starts.append(offset); ends.append(end); firsts.append(offset + 1)
                covered = end
                while covered < last:
                    target_end = min(covered + stride, last)
                    starts.append(target_end - max_len); ends.append(target_end); firsts.append(covered + 1)
                    covered = target_end
            offset += len(seq)
        self.starts, self.ends, self.firsts = (np.asarray(a, dtype=np.int64) for a in (starts, ends, firsts))
        self.max_len = max_len
        self.num_targets = int(sum(max(len(s) - 1, 0) for s in sequences))

    def __len__(self) -> int:
        return len(self.starts)

    def __call__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        starts, ends, firsts = self.starts[idx], self.ends[idx], self.firsts[idx]
        width = int((ends - starts).max())
        pos = ends[:, None] - np.arange(width, 0, -1)[None, :]  # input positions, left-padded
        valid = pos >= starts[:, None]
        histories = np.where(valid, self.items[np.maximum(pos, 0)], PAD)
        target_pos = pos + 1
        scored = valid & (target_pos >= firsts[:, None])
        targets = np.where(scored, self.items[np.minimum(target_pos, len(self.items) - 1)], -1)
        return torch.from_numpy(histories), torch.from_numpy(targets)


class EvalBatches:
    """Collate function for evaluation: padded histories and the first gold item of each example."""

    def __init__(self, examples: EvalExamples, max_len: int) -> None:
        self.histories = [h[-max_len:] for h in examples.histories]
        self.gold = [g[0] for g in examples.gold]
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.gold)

    def __call__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        histories = SASRec.pad_histories([self.histories[i] for i in indices], self.max_len)
        return histories, torch.tensor([self.gold[i] for i in indices], dtype=torch.long)


def _index_loader(collate, batch_size: int, shuffle: bool, num_workers: int, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        range(len(collate)),
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collate,
        num_workers=num_workers,
        generator=generator,
        persistent_workers=num_workers > 0,
    )


class SASRecDataModule(L.LightningDataModule):
    """Train prefixes, validation and test examples of a prepared dataset.

    Args:
        data: the prepared dataset.
        config: batch sizes, ``max_len``, workers, seed.
    """

    def __init__(self, data: PreparedDataset, config: SASRecConfig) -> None:
        super().__init__()
        self.data = data
        self.config = config
        sequences = data.train_sequences()
        if config.train_samples == "windows":
            self.train = WindowBatches(sequences, config.max_len, config.window_stride)
        else:
            self.train = PrefixBatches(sequences, config.max_len)
        if len(self.train) == 0:
            raise ArtifactError(
                f"{data.root}: no user has two or more train interactions, so SASRec has nothing to learn from; "
                "check the split of the prepared dataset"
            )
        self.valid = EvalBatches(data.eval_examples("valid"), config.max_len)
        self.test = EvalBatches(data.eval_examples("test"), config.max_len)
        if len(self.valid) == 0:
            raise ArtifactError(
                f"{data.root}: the valid split has no user with a history, so early stopping on validation "
                "NDCG@10 is impossible; prepare the dataset with a split that has validation items"
            )

    def train_dataloader(self) -> DataLoader:
        batch_size = self.config.window_batch_size if self.config.train_samples == "windows" else self.config.batch_size
        return _index_loader(self.train, batch_size, True, self.config.num_workers, self.config.seed)

    def val_dataloader(self) -> DataLoader:
        return _index_loader(self.valid, self.config.eval_batch_size, False, 0)

    def test_dataloader(self) -> DataLoader:
        return _index_loader(self.test, self.config.eval_batch_size, False, 0)


# --------------------------------------------------------------------------- model


def sasrec_loss(model: SASRec, histories: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean full-softmax cross-entropy of a batch of either protocol.

    Args:
        model: the SASRec model.
        histories: (B, W) left-padded items.
        targets: (B,) the next item of each history (:class:`PrefixBatches`), or (B, W) the
            next item after every position, -1 where not scored (:class:`WindowBatches`).

    Example:
        >>> loss = sasrec_loss(model, *WindowBatches(sequences, 50, 25)(range(8)))
    """
    if targets.ndim == 1:
        return F.cross_entropy(model.score(histories), targets)
    hidden = model(histories)
    scored = targets >= 0
    return F.cross_entropy(model.logits(hidden[scored]), targets[scored])


def aligned_sasrec_loss(model: SASRec, alignment, histories: torch.Tensor, targets: torch.Tensor,
                        weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross-entropy plus ``weight`` times the RLMRec alignment loss (``recsys.models.rlmrec``), one forward pass.

    Users are the hidden states at the scored positions (the last position for :class:`PrefixBatches`);
    items are every history item and target of the batch. With RLMRec-Gen the masked inputs
    (``alignment.input_mask``) are masked in the same pass the cross-entropy reads, as in RLMRec's code.

    Args:
        model: the SASRec model.
        alignment: a :class:`recsys.models.rlmrec.CFTextAlignment`.
        histories: (B, W) left-padded items.
        targets: (B,) or (B, W), as in :func:`sasrec_loss`.
        weight: the alignment weight (``SASRecConfig.align_weight``).

    Returns:
        (total loss, cross-entropy, alignment loss), scalars.
    """
    masked = alignment.input_mask(histories)
    hidden = model(histories, masked, getattr(alignment, "mask_embedding", None))
    if targets.ndim == 1:
        scored = torch.zeros(histories.shape, dtype=torch.bool, device=histories.device)
        scored[:, -1] = True
        flat_targets = targets
    else:
        scored = targets >= 0
        flat_targets = targets[scored]
    ce = F.cross_entropy(model.logits(hidden[scored]), flat_targets)
    items = torch.cat([histories.reshape(-1), targets.reshape(-1)])
    align = alignment.loss(model.item_embeddings(), histories, hidden, scored, items, masked)
    return ce + weight * align, ce, align


class SASRecModule(L.LightningModule):
    """Lightning wrapper: full-softmax cross-entropy training, full-ranking validation.

    Args:
        num_items: catalogue size.
        config: SASRec settings.
        text_embeddings: (num_items, dz) item text embeddings; required when ``config.align`` is not
            "none" (the RLMRec alignment head, :class:`recsys.models.rlmrec.CFTextAlignment`), unused otherwise.
    """

    def __init__(self, num_items: int, config: SASRecConfig, text_embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.model = SASRec(num_items, config)
        self.alignment = None
        if config.align != "none":
            from recsys.models.rlmrec import CFTextAlignment

            if text_embeddings is None:
                raise ConfigError(f"SASRecConfig.align={config.align!r} needs the item text embeddings "
                                  "(`recsys tokenize cf --semantic DIR`); align 'none' needs none")
            if text_embeddings.shape[0] != num_items:
                raise ConfigError(f"SASRecConfig.align: text embeddings have {text_embeddings.shape[0]} rows, "
                                  f"the catalogue {num_items} items; build both from the same prepared dataset")
            self.alignment = CFTextAlignment(text_embeddings, config.hidden_size, config.align, config.align_temperature,
                                             config.align_mask_ratio)
        self._ranks: list[torch.Tensor] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        histories, targets = batch
        size = int((targets >= 0).sum())
        if self.alignment is None:
            loss = sasrec_loss(self.model, histories, targets)
        else:
            loss, ce, align = aligned_sasrec_loss(self.model, self.alignment, histories, targets, self.config.align_weight)
            self.log("train/ce", ce, on_step=False, on_epoch=True, batch_size=size)
            self.log("train/align", align, on_step=False, on_epoch=True, batch_size=size)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._ranks = []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        histories, gold = batch
        self._ranks.append(gold_ranks(self.model.score(histories), gold).cpu())

    def on_validation_epoch_end(self) -> None:
        metrics = loo_metrics(torch.cat(self._ranks), KS)
        for name, value in metrics.items():
            if name.startswith(("ndcg", "recall", "mrr")):
                self.log(f"valid/{name}", value, prog_bar=name == "ndcg@10")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)


class BestWeights(L.Callback):
    """Keeps a copy of the weights of the best validation epoch (higher ``monitor`` is better)."""

    def __init__(self, monitor: str = MONITOR) -> None:
        self.monitor = monitor
        self.best_score = -float("inf")
        self.best_epoch = -1
        self.best_metrics: dict[str, float] = {}
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if score > self.best_score:
            self.best_score = score
            self.best_epoch = trainer.current_epoch
            self.best_metrics = {
                k.removeprefix("valid/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("valid/")
            }
            self.state = copy.deepcopy(pl_module.model.state_dict())


class EpochTimer(L.Callback):
    """Wall-clock seconds of each training epoch (its validation included)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_sasrec(model: SASRec, examples: EvalExamples, batch_size: int = 1024, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Full-ranking leave-one-out metrics of ``model`` on ``examples`` (first gold item per user).

    Args:
        model: a SASRec model (put in eval mode here).
        examples: ``PreparedDataset.eval_examples("valid" | "test")``.
        batch_size: users scored at once.

    Example:
        >>> evaluate_sasrec(model, data.eval_examples("test"))["ndcg@10"]
    """
    model.eval()
    device = next(model.parameters()).device
    batches = EvalBatches(examples, model.config.max_len)
    ranks = []
    for start in range(0, len(batches), batch_size):
        histories, gold = batches(list(range(start, min(start + batch_size, len(batches)))))
        ranks.append(gold_ranks(model.score(histories.to(device)), gold.to(device)).cpu())
    return loo_metrics(torch.cat(ranks) if ranks else torch.zeros(0), ks)


# --------------------------------------------------------------------------- fit


@dataclass
class SASRecFitResult:
    """What :func:`fit_sasrec` returns.

    Attributes:
        model: the SASRec model with the weights of the best validation epoch, in eval mode, on CPU.
        config: the config it was trained with.
        valid_metrics: metrics of the best epoch on the valid split (``ndcg@10``, ``recall@10``, ...).
        test_metrics: metrics of that model on the test split.
        epochs_run: epochs trained before early stopping or ``max_epochs``.
        best_epoch: 0-based epoch whose weights were kept.
        seconds_per_epoch: mean wall-clock seconds of a training epoch (its validation included).
        mlflow_run_id: the MLflow run, or None when not logged.
    """

    model: SASRec
    config: SASRecConfig
    valid_metrics: dict[str, float]
    test_metrics: dict[str, float]
    epochs_run: int
    best_epoch: int
    seconds_per_epoch: float
    mlflow_run_id: str | None = None
    epoch_seconds: list[float] = field(default_factory=list)


def fit_sasrec(
    data: PreparedDataset,
    config: SASRecConfig,
    out_dir: Path | None = None,
    log_to_mlflow: bool = True,
    experiment: str = "sasrec",
    run_name: str | None = None,
    text_embeddings: torch.Tensor | None = None,
) -> SASRecFitResult:
    """Train SASRec on the train split, keep the best epoch on validation NDCG@10, test it.

    Args:
        data: a prepared dataset.
        config: model and training settings.
        out_dir: when given, the trained model is saved there (:func:`save_sasrec`) with ``metrics.json``.
        log_to_mlflow: log params, per-epoch metrics, test metrics and the saved model to MLflow
            (store from ``MLFLOW_TRACKING_URI``).
        experiment: MLflow experiment name.
        run_name: MLflow run name (default ``sasrec-<dataset folder>``).
        text_embeddings: (num_items, dz) item text embeddings (``recsys.tokenizers.semantic.load_text_embeddings``);
            required when ``config.align`` is "con" or "gen" (RLMRec), not read otherwise.

    Example:
        >>> result = fit_sasrec(PreparedDataset.load("data/ml-100k"), SASRecConfig(max_epochs=5), log_to_mlflow=False)
        >>> fit_sasrec(data, SASRecConfig(align="con"), log_to_mlflow=False, text_embeddings=load_text_embeddings(d, n))
    """
    L.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = SASRecDataModule(data, config)
    module = SASRecModule(data.num_items, config, text_embeddings if config.align != "none" else None)
    best, timer = BestWeights(), EpochTimer()
    logger = False
    if log_to_mlflow:
        from recsys.tracking import flatten, lightning_logger

        logger = lightning_logger(
            experiment, run_name=run_name or f"sasrec-{data.root.name}", tags={"dataset": data.fingerprint, "data_dir": str(data.root)}
        )
        logger.log_hyperparams(
            flatten({**dataclasses.asdict(config), "num_items": data.num_items, "train_rows": len(datamodule.train)})
        )
    trainer = L.Trainer(
        max_epochs=config.max_epochs,
        min_epochs=config.min_epochs,
        accelerator=config.accelerator,
        devices=1,
        logger=logger,
        callbacks=[L.pytorch.callbacks.EarlyStopping(MONITOR, mode="max", patience=config.patience), best, timer],
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        log_every_n_steps=50,
    )
    trainer.fit(module, datamodule=datamodule)  # the logger names valid/ndcg@10 valid/ndcg10 (recsys.tracking.metric_name)
    if best.state is None:
        raise ArtifactError("SASRec training ended before its first validation; raise max_epochs")
    model = module.model.cpu()
    model.load_state_dict(best.state)
    model.eval()
    valid_metrics = evaluate_sasrec(model, data.eval_examples("valid"), config.eval_batch_size)
    test_metrics = evaluate_sasrec(model, data.eval_examples("test"), config.eval_batch_size)
    seconds = float(np.mean(timer.seconds)) if timer.seconds else float("nan")
    run_id = None
    if logger:
        run_id = logger.run_id
        logger.log_metrics(
            {f"best_valid/{k}": v for k, v in valid_metrics.items()}  # the logger applies recsys.tracking.metric_name
            | {f"test/{k}": v for k, v in test_metrics.items()}
            | {"best_epoch": best.best_epoch, "seconds_per_epoch": seconds}
        )
    result = SASRecFitResult(
        model=model,
        config=config,
        valid_metrics=valid_metrics,
        test_metrics=test_metrics,
        epochs_run=len(timer.seconds),
        best_epoch=best.best_epoch,
        seconds_per_epoch=seconds,
        mlflow_run_id=run_id,
        epoch_seconds=list(timer.seconds),
    )
    if out_dir is not None:
        save_sasrec(model, config, out_dir, extra={"valid": valid_metrics, "test": test_metrics,
                                                     "best_epoch": best.best_epoch, "epochs_run": result.epochs_run,
                                                     "seconds_per_epoch": seconds, "dataset": data.fingerprint,
                                                     "mlflow_run_id": run_id})
        if logger:
            logger.experiment.log_artifacts(run_id, str(out_dir), artifact_path="sasrec")
    return result


# --------------------------------------------------------------------------- save / load


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to write into; on success it replaces ``target``.

    On an exception the temporary directory is removed and ``target`` is left untouched.

    Example:
        >>> with atomic_directory(Path("out/cf")) as tmp:
        ...     (tmp / "manifest.json").write_text("{}")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_sasrec(model: SASRec, config: SASRecConfig, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (config, num_items) to ``out_dir``, atomically.

    Args:
        model: the trained model.
        config: its config.
        out_dir: target directory (replaced when it exists).
        extra: optional metrics and facts written to ``metrics.json``.

    Example:
        >>> save_sasrec(result.model, result.config, "runs/sasrec")
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": WEIGHTS_FORMAT})
        (tmp / CONFIG_FILE).write_text(
            json.dumps({"num_items": model.num_items, "config": dataclasses.asdict(config)}, indent=2)
        )
        if extra is not None:
            (tmp / "metrics.json").write_text(json.dumps(extra, indent=2, default=str))
    return out_dir


def load_sasrec(path: str | Path) -> tuple[SASRec, SASRecConfig]:
    """Load a model written by :func:`save_sasrec`, in eval mode (safetensors only, no pickles).

    Raises:
        ArtifactError: a file is missing or the weights do not fit the config.

    Example:
        >>> model, config = load_sasrec("runs/sasrec")
    """
    from safetensors.torch import load_file

    path = Path(path)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise ArtifactError(f"{path / name} is missing; save a trained SASRec there with save_sasrec")
    meta = json.loads((path / CONFIG_FILE).read_text())
    try:
        config = SASRecConfig(**meta["config"])
    except (KeyError, TypeError) as error:
        raise ArtifactError(f"{path / CONFIG_FILE}: not a SASRec config ({error})") from error
    except ConfigError as error:
        raise ArtifactError(f"{path / CONFIG_FILE}: {error}") from error
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as handle:
        weights_format = (handle.metadata() or {}).get("format")
    if weights_format != WEIGHTS_FORMAT:
        raise ArtifactError(
            f"{path / WEIGHTS_FILE} has format {weights_format!r}, this version reads {WEIGHTS_FORMAT!r} "
            "(position ids changed in v2); retrain it with fit_sasrec or `recsys tokenize cf`"
        )
    model = SASRec(int(meta["num_items"]), config)
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    except RuntimeError as error:
        raise ArtifactError(f"{path / WEIGHTS_FILE} does not match {path / CONFIG_FILE}: {error}") from error
    return model.eval(), config
