"""Typed configuration of the set-identifier training job, read from YAML with dotted overrides.

A config file has the sections of :class:`TrainJobConfig`; every field below has a one-line
docstring (``recsys train --help`` lists them). Unknown keys and wrongly typed values are
refused with the dotted name of the field.

Example:
    >>> cfg = load_train_config("configs/setrec-t5-demo.yaml",
    ...                         overrides={"trainer.max_epochs": 2, "model.attention": "full", "seed": 1})
    >>> cfg.trainer.max_epochs, cfg.model.attention
    (2, 'full')
    >>> cfg.to_dict()["optim"]["lr"]
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from recsys.errors import ConfigError
from recsys.models.setrec import LoraSettings, SetRecConfig

STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
NEGATIVES = ("train", "catalogue")


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
    strategy: str = "auto"
    """``auto``, ``ddp``, ``ddp_spawn`` or ``fsdp``; launch many nodes with torchrun or SLURM."""
    num_nodes: int = 1
    """Machines taking part."""
    precision: str = "auto"
    """``auto`` (bf16-mixed on GPU, 32-true on CPU) or a Lightning precision string."""
    patience: int = 3
    """Validations without a better ``valid/ndcg@10`` before stopping early."""
    check_val_every_n_epoch: int = 1
    """Validate every n epochs."""
    limit_train_batches: float = 1.0
    """Fraction (<= 1.0) or number (> 1) of training batches per epoch."""
    limit_val_batches: float = 1.0
    """Fraction or number of validation batches per validation."""
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
    beta_grid: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    """Candidate ranking weights beta; the best on validation NDCG@10 is kept (never chosen on test)."""
    max_len: int = 20
    """History items kept (the most recent) per sample."""
    batch_size: int = 256
    """Training samples per batch (per device)."""
    eval_batch_size: int = 256
    """Users per validation/test batch."""
    exclude_history: bool = True
    """Rank only items outside the user's history in validation and test (gold items always stay rankable)."""
    negatives: str = "train"
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
        if self.negatives not in NEGATIVES:
            raise ConfigError(f"negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        if self.trainer.strategy not in STRATEGIES:
            raise ConfigError(f"trainer.strategy must be one of {STRATEGIES}, got {self.trainer.strategy!r}")
        if self.trainer.precision not in PRECISIONS:
            raise ConfigError(f"trainer.precision must be one of {PRECISIONS}, got {self.trainer.precision!r}")
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


def _check_type(value: Any, annotation: Any, name: str) -> Any:
    """Check (and mildly coerce: int -> float) ``value`` against a field annotation."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, name)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: expected {annotation}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (inner,) = typing.get_args(annotation) or (Any,)
        return [_check_type(v, inner, f"{name}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        return _from_dict(annotation, value, name)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{name}: expected {annotation.__name__}, got {value!r}")
    return value


def _from_dict(cls: type, values: Any, prefix: str = "") -> Any:
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config field(s) {[where + u for u in unknown]}; known: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _check_type(value, hints[key], name)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"trainer.max_epochs=3"`` -> ``("trainer.max_epochs", 3)`` (the value is read as YAML).

    Example:
        >>> parse_override("beta_grid=[0.2, 0.5]")
        ('beta_grid', [0.2, 0.5])
    """
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({error})") from error
    return key.strip(), value


def config_from_dict(values: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> TrainJobConfig:
    """Build and validate a :class:`TrainJobConfig` from nested values plus dotted overrides."""
    import copy

    tree = copy.deepcopy(dict(values))
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    model = tree.get("model") or {}
    if isinstance(model, Mapping) and model.get("lora") is not None and not isinstance(model["lora"], Mapping):
        raise ConfigError(f"model.lora: expected a mapping or null, got {model['lora']!r}")
    config = _from_dict(TrainJobConfig, tree)
    config.validate()
    return config


def load_train_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainJobConfig:
    """Read a training config YAML and apply dotted ``overrides``.

    Args:
        path: YAML file with the sections of :class:`TrainJobConfig`.
        overrides: ``{"trainer.max_epochs": 2, "model.attention": "full"}``.

    Raises:
        ConfigError: the file is missing or malformed, a key is unknown, a value has the wrong type.

    Example:
        >>> cfg = load_train_config("configs/setrec-qwen-demo.yaml", {"seed": 3})
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see configs/setrec-*.yaml")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    try:
        return config_from_dict(values, overrides)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


# --------------------------------------------------------------------------- help text


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings (string right after each field) of a dataclass."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def dotted_fields(cls: type = TrainJobConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every settable dotted key with its default and docstring, e.g. ``("optim.lr", "0.001", "...")``."""
    docs = field_docs(cls)
    default = cls()
    rows: list[tuple[str, str, str]] = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        value = getattr(default, f.name)
        hint = typing.get_type_hints(cls)[f.name]
        nested = hint if dataclasses.is_dataclass(hint) else None
        if nested is None and f.name == "lora":
            nested = LoraSettings
        if nested is not None and f.name != "lora":
            rows.extend(dotted_fields(nested, prefix=f"{name}."))
        else:
            rows.append((name, repr(value), docs.get(f.name, "")))
            if nested is LoraSettings:
                rows.extend((f"{name}.{k}", d, doc) for k, d, doc in dotted_fields(LoraSettings, prefix=""))
    return rows


def overrides_help() -> str:
    """A text table of the dotted keys for ``recsys train --help``."""
    lines = ["config keys (set with --set KEY=VALUE, VALUE read as YAML):"]
    for name, default, doc in dotted_fields():
        lines.append(f"  {name} (default {default}): {doc}")
    return "\n".join(lines)
