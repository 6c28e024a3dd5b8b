"""Train the TIGER baseline with Lightning on the train split; early stopping on validation NDCG@10.

Protocol: the same prefix samples as SASRec (``recsys.training.sasrec.PrefixBatches``:
every target position of a user's train sequence, with the at most ``max_history``
items before it). The loss is the teacher-forced cross-entropy of the target item's
semantic-id codes. Validation runs the trie-constrained beam search (beam
``config.beam_size``) on the valid split only; the best epoch's weights are kept.

Command (through the benchmark): ``recsys benchmark quality --config configs/bench-ml100k.yaml``.

Example:
    >>> ids = build_semantic_ids(load_text_embeddings("artifacts/ml-100k/semantic"), levels=3, codes=64)
    >>> result = fit_tiger(data, ids.codes, TigerConfig(max_epochs=5), log_to_mlflow=False)
    >>> result.valid_metrics["ndcg@10"]; save_tiger(result.model, "runs/tiger")
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from recsys.errors import ArtifactError
from recsys.evaluation.metrics import list_ranks, mean_metrics, pad_gold, per_user_metrics
from recsys.models.tiger import Tiger, TigerConfig
from recsys.pipelines.prepared import EvalExamples, PreparedDataset
from recsys.training.sasrec import PrefixBatches

MONITOR = "valid/ndcg@10"
KS = (5, 10, 20)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CODES_FILE = "codes.safetensors"


@torch.no_grad()
def evaluate_tiger(model: Tiger, examples: EvalExamples, batch_size: int = 256, ks: tuple[int, ...] = KS,
                   exclude_history: bool = False) -> dict[str, float]:
    """Beam-search metrics of ``model`` on ``examples`` (gold sets).

    Nothing is excluded by default (supervised training selects epochs so); ``exclude_history`` removes
    each user's history items but the gold ones from the list, as the benchmark harness does
    (``recsys.evaluation.evaluate``).

    Example:
        >>> evaluate_tiger(model, data.eval_examples("valid"))["ndcg@10"]
    """
    model.eval()
    ranks, masks = [], []
    for start in range(0, len(examples), batch_size):
        stop = min(start + batch_size, len(examples))
        exclude = None
        if exclude_history:
            exclude = [[i for i in h if i not in set(g)] for h, g in zip(examples.histories[start:stop], examples.gold[start:stop])]
        items, _ = model.beam_search(examples.histories[start:stop], model.config.beam_size, exclude)
        gold = pad_gold(examples.gold[start:stop])
        ranks.append(list_ranks(items.cpu(), gold))
        masks.append(gold >= 0)
    if not ranks:
        return {}
    width = max(r.shape[1] for r in ranks)
    rank = torch.cat([F.pad(r, (0, width - r.shape[1]), value=float("inf")) for r in ranks])
    mask = torch.cat([F.pad(m, (0, width - m.shape[1]), value=False) for m in masks])
    means, _ = mean_metrics(per_user_metrics(rank, mask, ks))
    return means


class TigerModule(L.LightningModule):
    """Lightning wrapper: teacher-forced code cross-entropy, beam-search validation.

    Args:
        codes: (num_items, C) semantic ids.
        config: TIGER settings.
        valid: validation examples (the valid split; never test).
    """

    def __init__(self, codes: torch.Tensor, config: TigerConfig, valid: EvalExamples) -> None:
        super().__init__()
        self.config = config
        self.model = Tiger(codes, config)
        self.valid = valid

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        histories, targets = batch
        loss = self.model.loss(histories, targets)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))
        return loss

    def validate_epoch(self) -> dict[str, float]:
        """Beam-search metrics on the valid split, logged as ``valid/<metric>``; called by :class:`_BestWeights`
        at the end of every training epoch (Lightning runs plain callbacks' epoch-end hooks before the
        module's, so validating in the module's own hook would hand the callback the previous epoch's score)."""
        metrics = evaluate_tiger(self.model, self.valid, self.config.eval_batch_size)
        self.model.train()
        for name, value in metrics.items():
            if name.startswith(("ndcg", "recall", "mrr")):
                self.log(f"valid/{name}", value, prog_bar=name == "ndcg@10")
        return metrics

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)


class _BestWeights(L.Callback):
    """Keeps the weights of the best epoch on ``valid/ndcg@10`` and times epochs."""

    def __init__(self) -> None:
        self.best_score = -float("inf")
        self.best_epoch = -1
        self.best_metrics: dict[str, float] = {}
        self.state: dict[str, torch.Tensor] | None = None
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        metrics = pl_module.validate_epoch()  # this epoch's weights, this epoch's score
        score = float(metrics.get(MONITOR.removeprefix("valid/"), -float("inf")))
        if score > self.best_score:
            self.best_score = score
            self.best_epoch = trainer.current_epoch
            self.best_metrics = {k: float(v) for k, v in metrics.items() if k.startswith(("ndcg", "recall", "mrr"))}
            self.state = copy.deepcopy(pl_module.model.state_dict())


@dataclass
class TigerFitResult:
    """What :func:`fit_tiger` returns.

    Attributes:
        model: the best-validation-epoch model, eval mode, CPU.
        config: its config.
        valid_metrics: beam-search metrics of the best epoch on the valid split.
        epochs_run: epochs trained.
        best_epoch: 0-based epoch whose weights were kept.
        seconds_per_epoch: mean wall-clock seconds per epoch (validation included).
        train_samples: number of prefix samples per epoch.
        mlflow_run_id: the MLflow run, or None.
    """

    model: Tiger
    config: TigerConfig
    valid_metrics: dict[str, float]
    epochs_run: int
    best_epoch: int
    seconds_per_epoch: float
    train_samples: int
    mlflow_run_id: str | None = None
    epoch_seconds: list[float] = field(default_factory=list)


def fit_tiger(
    data: PreparedDataset,
    codes: torch.Tensor,
    config: TigerConfig,
    out_dir: Path | None = None,
    log_to_mlflow: bool = True,
) -> TigerFitResult:
    """Train TIGER on the train split; keep the best epoch on validation NDCG@10.

    Args:
        data: a prepared dataset.
        codes: (num_items, C) semantic ids (``build_semantic_ids(...).codes``).
        config: model and training settings.
        out_dir: when given, the model is saved there (:func:`save_tiger`).
        log_to_mlflow: log params and per-epoch metrics to MLflow (experiment ``tiger``).

    Example:
        >>> fit_tiger(data, ids.codes, TigerConfig(max_epochs=2), log_to_mlflow=False).valid_metrics
    """
    if codes.shape[0] != data.num_items:
        raise ArtifactError(f"semantic ids cover {codes.shape[0]} items, the dataset {data.num_items}; rebuild them from this dataset")
    L.seed_everything(config.seed, workers=True, verbose=False)
    samples = PrefixBatches(data.train_sequences(), config.max_history)
    loader = DataLoader(
        range(len(samples)),
        batch_size=config.batch_size,
        shuffle=True,
        collate_fn=samples,
        generator=torch.Generator().manual_seed(config.seed),
    )
    module = TigerModule(codes, config, data.eval_examples("valid"))
    best = _BestWeights()
    logger = False
    if log_to_mlflow:
        from recsys.tracking import flatten, lightning_logger

        logger = lightning_logger("tiger", run_name=f"tiger-{data.root.name}", tags={"dataset": data.fingerprint, "data_dir": str(data.root)})
        logger.log_hyperparams(flatten({**dataclasses.asdict(config), "num_items": data.num_items, "train_samples": len(samples)}))
    trainer = L.Trainer(
        max_epochs=config.max_epochs,
        accelerator="auto",
        devices=1,
        logger=logger,
        callbacks=[L.pytorch.callbacks.EarlyStopping(MONITOR, mode="max", patience=config.patience, check_on_train_epoch_end=True), best],
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        log_every_n_steps=50,
    )
    trainer.fit(module, train_dataloaders=loader)
    if best.state is None:
        raise ArtifactError("TIGER training ended before its first validation; raise max_epochs")
    model = module.model.cpu()
    model.load_state_dict(best.state)
    model.eval()
    seconds = float(np.mean(best.seconds)) if best.seconds else float("nan")
    run_id = logger.run_id if logger else None
    if logger:
        logger.log_metrics({f"best_valid/{k}": v for k, v in best.best_metrics.items()} | {"best_epoch": best.best_epoch, "seconds_per_epoch": seconds})
    result = TigerFitResult(model, config, best.best_metrics, len(best.seconds), best.best_epoch, seconds, len(samples), run_id, list(best.seconds))
    if out_dir is not None:
        save_tiger(model, out_dir, extra={"valid": best.best_metrics, "best_epoch": best.best_epoch, "dataset": data.fingerprint})
    return result


def save_tiger(model: Tiger, out_dir: str | Path, extra: dict | None = None) -> Path:
    """Write weights, codes and config (``model.safetensors``, ``codes.safetensors``, ``config.json``), atomically.

    Example:
        >>> save_tiger(result.model, "runs/tiger")
    """
    from safetensors.torch import save_file

    from recsys.training.sasrec import atomic_directory

    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        # tied embeddings: safetensors refuses shared storage, keep one copy
        state = {k: v.clone() for k, v in state.items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "setrec-tiger-v1"})
        save_file({"codes": model.codes.cpu().contiguous()}, str(tmp / CODES_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps({"config": model.config.to_dict(), "extra": extra or {}}, indent=2, default=str))
    return out_dir


def load_tiger(path: str | Path) -> Tiger:
    """Load a model written by :func:`save_tiger`, in eval mode (safetensors only).

    Raises:
        ArtifactError: a file is missing or the weights do not fit.
    """
    from safetensors.torch import load_file

    path = Path(path)
    for name in (WEIGHTS_FILE, CODES_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise ArtifactError(f"{path / name} is missing; save a trained TIGER model there with save_tiger")
    config = TigerConfig(**json.loads((path / CONFIG_FILE).read_text())["config"])
    model = Tiger(load_file(str(path / CODES_FILE))["codes"], config)
    try:
        model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    except RuntimeError as error:
        raise ArtifactError(f"{path / WEIGHTS_FILE} does not fit the config in {path / CONFIG_FILE}: {error}") from error
    return model.eval()
