"""Typed configuration of the set-identifier training job, read through the one config path.

A config file has the sections of :class:`TrainJobConfig`; every field below has a docstring
(``recsys train --help`` lists them, ``--print_config`` prints the result). Files, dotted
overrides and errors go through :mod:`recsys.config` (jsonargparse): unknown keys and wrongly
typed values are refused naming the file and the dotted key.

Example:
    >>> cfg = load_train_config("configs/setrec-t5-demo.yaml",
    ...                         overrides={"trainer.max_epochs": 2, "model.attention": "full", "seed": 1})
    >>> cfg.trainer.max_epochs, cfg.model.attention
    (2, 'full')
    >>> cfg.to_dict()["optim"]["lr"]
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from recsys.errors import ConfigError
from recsys.models.history_selection import HistoryConfig
from recsys.models.setrec import SetRecConfig

Strategy = Literal["auto", "ddp", "ddp_spawn", "fsdp"]
Precision = Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"]
Negatives = Literal["train", "catalogue"]
STRATEGIES = typing.get_args(Strategy)
PRECISIONS = typing.get_args(Precision)
NEGATIVES = typing.get_args(Negatives)
TrainMode = Literal["all_prefix", "one_prefix"]
TRAIN_MODES = typing.get_args(TrainMode)
ColdCF = Literal["predicted", "zero"]


@dataclass
class OptimConfig:
    """Optimiser, schedule and loss weights."""

    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases, norms and the learnable prompt/response/query tokens)."""
    warmup_steps: int = 100
    """Optimiser steps of linear warmup from 0 to ``lr``; a cosine decay follows."""
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at ``lr * min_lr_ratio``."""
    alpha: float = 0.1
    """Weight of the autoencoder reconstruction MSE in the loss."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables clipping)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """AdamW betas."""


@dataclass
class TrainerConfig:
    """Lightning Trainer settings: length, hardware, scale-out, early stopping."""

    max_epochs: int = 20
    """Most training epochs."""
    max_steps: int = -1
    """Most optimiser steps (-1: no limit; ``max_epochs`` decides)."""
    accelerator: str = "auto"
    """``cpu``, ``gpu`` or ``auto``."""
    devices: Any = 1
    """Devices per node (an int, a list of ids, or ``auto``)."""
    strategy: Strategy = "auto"
    """``auto``, ``ddp``, ``ddp_spawn`` or ``fsdp``; launch many nodes with torchrun or SLURM."""
    num_nodes: int = 1
    """Machines taking part."""
    precision: Precision = "auto"
    """``auto`` (bf16-mixed on GPU, 32-true on CPU) or a Lightning precision string."""
    patience: int = 3
    """Validations without a better ``valid/ndcg@10`` before stopping early."""
    check_val_every_n_epoch: int = 1
    """Validate every n epochs."""
    limit_train_batches: int | float = 1.0
    """A fraction (a float such as ``1.0`` or ``0.5``) or a number of batches (an int such as ``1``) per epoch;
    an int reaches Lightning as an int (``1`` is one batch, ``1.0`` is all of them)."""
    limit_val_batches: int | float = 1.0
    """A fraction (float) or a number (int) of validation batches per validation."""
    num_workers: int = 0
    """DataLoader worker processes."""
    log_every_n_steps: int = 50
    """Step interval of the training-loss log."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms (slower on GPU)."""
    progress_bar: bool = True
    """Show Lightning's progress bar."""


@dataclass
class TrackingConfig:
    """MLflow tracking (store: ``MLFLOW_TRACKING_URI`` or ``sqlite:///mlruns.db``)."""

    enabled: bool = True
    """Log params, per-epoch metrics, tags and the bundle to MLflow."""
    experiment: str = "setrec"
    """MLflow experiment name."""
    run_name: str | None = None
    """MLflow run name; None uses the name of ``out_dir``."""


@dataclass
class TrainJobConfig:
    """One training job of the set-identifier recommender."""

    data: str = "runs/data/ml-100k"
    """Prepared dataset directory (``recsys data prepare``)."""
    cf: str = "runs/tokenizers/ml-100k/cf"
    """CF embedding artifact directory (``recsys tokenize cf``)."""
    semantic: str = "runs/tokenizers/ml-100k/semantic"
    """Text embedding artifact directory (``recsys tokenize semantic``)."""
    model: SetRecConfig = field(default_factory=SetRecConfig)
    """Model: backbone, preset or pretrained_dir, N semantic tokens, ablation switches, LoRA; token dim = backbone hidden size."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser, schedule and loss weight alpha."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Lightning Trainer settings."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow tracking."""
    history: HistoryConfig = field(default_factory=HistoryConfig)
    """Which items of a history longer than ``max_len`` the model reads, the same rule in training, evaluation and
    serving (the bundle keeps it): ``recent`` or ``dare`` with ``search_k`` (``recsys.models.history_selection``)."""
    beta_grid: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    """Candidate ranking weights beta; the best on validation NDCG@10 is kept (never chosen on test)."""
    max_len: int = 20
    """History items the model reads per sample (the most recent; with ``history.selection: dare`` the most recent
    ``max_len - history.search_k`` plus ``history.search_k`` older ones)."""
    train_mode: TrainMode = "all_prefix"
    """``all_prefix``: a sample is a window of up to ``max_len`` items and one backbone pass gives the loss of
    every target in it (SASRec's training signal; ``SetRecModel.forward_packed``); ``one_prefix``: a sample is one
    (history, next item) pair, the reference path (needed for ``model.encoder_attention: bidirectional``)."""
    window_stride: int = 0
    """``all_prefix`` only: new targets per later window of a long sequence (0 = ``max_len``: windows do not
    overlap; with ``history.selection: dare``, 0 = R // 2 and it must lie in [1, R), R = ``max_len - history.search_k``).
    Smaller strides give every target a longer history at the cost of more windows."""
    batch_size: int = 256
    """Training samples per batch (per device): windows under ``all_prefix``, (history, target) pairs under ``one_prefix``."""
    eval_batch_size: int = 256
    """Users per validation/test batch."""
    exclude_history: bool = True
    """Rank only items outside the user's history in validation and test (gold items always stay rankable)."""
    negatives: Negatives = "train"
    """Items in the training softmax: ``train`` (items with a train interaction; a cold item is never a
    negative, as it did not exist yet when the history happened) or ``catalogue`` (every item)."""
    autoencoder_pretrain_epochs: int = 0
    """Epochs of reconstruction-only training of the semantic autoencoder before the recommender
    trains (``recsys.tokenizers.semantic.pretrain_autoencoder``), on the texts of items with a train
    interaction only; 0 (default) starts from random weights."""
    freeze_autoencoder: bool = False
    """Keep the semantic autoencoder fixed while the recommender trains: the semantic tokens stay a
    fixed function of the text (``optim.alpha`` then has no effect). Meant with
    ``autoencoder_pretrain_epochs`` > 0."""
    cold_cf: ColdCF = "predicted"
    """CF embedding of an item without a train interaction: ``predicted`` from its text by a ridge map
    fitted on the items with one (ARCHITECTURE.md 3.1, ``recsys.tokenizers.text_to_cf``; the bundle keeps
    the map, so items added to the service get one too) or ``zero`` (the unseen-item rule before issue 13:
    its CF token is the projection bias)."""
    seed: int = 0
    """Seeds weights, data order and dropout."""
    out_dir: str = "runs/setrec"
    """Job folder: ``checkpoints/`` (last.ckpt, best), ``bundle/``, ``result.json``."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        self.model.validate()
        if self.max_len < 1:
            raise ConfigError(f"max_len must be >= 1, got {self.max_len}")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.beta_grid or any(not 0.0 <= b <= 1.0 for b in self.beta_grid):
            raise ConfigError(f"beta_grid must be a non-empty list of values in [0, 1], got {self.beta_grid}")
        if self.autoencoder_pretrain_epochs < 0:
            raise ConfigError(f"autoencoder_pretrain_epochs must be >= 0, got {self.autoencoder_pretrain_epochs}")
        if self.train_mode not in TRAIN_MODES:
            raise ConfigError(f"train_mode must be one of {TRAIN_MODES}, got {self.train_mode!r}")
        if self.window_stride < 0:
            raise ConfigError(f"window_stride must be >= 0, got {self.window_stride}")
        self.history.validate(self.max_len)
        if self.history.selection == "dare" and self.train_mode == "all_prefix":
            recent = self.max_len - self.history.search_k
            if recent < 2:
                raise ConfigError(f"history.search_k: all_prefix training with dare needs max_len - search_k >= 2 recent items "
                                  f"(a window's scored part and its context), got {recent}; lower history.search_k")
            if self.window_stride >= recent:
                raise ConfigError(f"window_stride: with history.selection dare it must be < max_len - history.search_k "
                                  f"({recent}): a later window keeps context items to query the older history; got {self.window_stride}")
        if self.train_mode == "all_prefix" and self.model.backbone == "t5" and self.model.encoder_attention != "causal":
            raise ConfigError("train_mode all_prefix needs model.encoder_attention: causal for the t5 backbone "
                              "(a bidirectional encoder lets each item see later ones); or set train_mode: one_prefix")
        if self.autoencoder_pretrain_epochs > 0 and self.model.semantic_tokens == "projection":
            raise ConfigError("autoencoder_pretrain_epochs needs an autoencoder; model.semantic_tokens is 'projection'")
        if self.trainer.max_epochs < 1 and self.trainer.max_steps < 1:
            raise ConfigError("set trainer.max_epochs >= 1 or trainer.max_steps >= 1")
        if self.trainer.num_nodes < 1:
            raise ConfigError(f"trainer.num_nodes must be >= 1, got {self.trainer.num_nodes}")
        if self.trainer.patience < 1:
            raise ConfigError(f"trainer.patience must be >= 1, got {self.trainer.patience}")
        if self.optim.lr <= 0 or self.optim.warmup_steps < 0 or self.optim.alpha < 0 or self.optim.grad_clip < 0:
            raise ConfigError("optim.lr must be > 0 and optim.warmup_steps, optim.alpha, optim.grad_clip >= 0")
        if not 0.0 <= self.optim.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio must lie in [0, 1], got {self.optim.min_lr_ratio}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON ready)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- reading


def parse_override(text: str) -> tuple[str, Any]:
    """``"trainer.max_epochs=3"`` -> ``("trainer.max_epochs", 3)`` (the value is read as YAML).

    Example:
        >>> parse_override("beta_grid=[0.2, 0.5]")
        ('beta_grid', [0.2, 0.5])
    """
    import yaml

    from recsys.config import split_override

    key, raw = split_override(text)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({error})") from error
    return key, value


def config_from_dict(values: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> TrainJobConfig:
    """Build and validate a :class:`TrainJobConfig` from nested values plus dotted overrides.

    Args:
        values: the sections of :class:`TrainJobConfig` (a parsed YAML).
        overrides: dotted keys, e.g. ``{"trainer.max_epochs": 2}``.

    Example:
        >>> config_from_dict({"seed": 2}, {"trainer.max_epochs": 1}).trainer.max_epochs
        1
    """
    from recsys.config import config_from_values

    return config_from_values(TrainJobConfig, values, overrides, where="config")


def load_train_config(path: str | Path | Sequence[str | Path], overrides: Mapping[str, Any] | None = None) -> TrainJobConfig:
    """Read training config YAML file(s) (later files win) and apply dotted ``overrides``.

    Args:
        path: YAML file with the sections of :class:`TrainJobConfig`, or several to compose.
        overrides: ``{"trainer.max_epochs": 2, "model.attention": "full"}``.

    Raises:
        ConfigError: the file is missing or malformed, a key is unknown, a value has the wrong type
            (the message names the file and the dotted key).

    Example:
        >>> cfg = load_train_config("configs/setrec-qwen-demo.yaml", {"seed": 3})
    """
    from recsys.config import load_config

    return load_config(TrainJobConfig, path, overrides)
