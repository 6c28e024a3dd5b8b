"""The quality benchmark's config (``configs/bench-*.yaml``), read through the one config path.

Every section is a typed dataclass (:mod:`recsys.config`, jsonargparse): unknown keys and wrongly
typed values fail naming the file and the dotted key, and each method's settings are checked
against the config class of its kind before anything trains.

Command:
    recsys benchmark quality --config configs/bench-ml100k.yaml --print_config

Example:
    >>> config = load_benchmark_config("configs/bench-ml100k.yaml", overrides={"seeds": [0]})
    >>> config.methods[0].name
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recsys.errors import ConfigError
from recsys.evaluation.methods import MethodSpec

#: Keys of the report that are not method names.
RESERVED_KEYS = ("meta", "paired", "tuned", "compared", "efficiency", "seeds")


@dataclass
class DataSpec:
    """How the dataset is prepared (fields of ``recsys data prepare``)."""

    source: str
    """A path (directory or file), or ``ml-100k`` (embedded)."""
    format: str = "auto"
    """Source format (a reader name of ``recsys data prepare --format``), or ``auto``."""
    kcore: int = 0
    """Iterative k-core threshold; 0 keeps everything."""
    split: Literal["loo", "temporal"] = "loo"
    """``loo`` or ``temporal``."""
    catalogue_only: Literal["keep", "drop"] = "keep"
    """Items with no event: ``keep`` (cold items) or ``drop``."""


@dataclass
class EvaluationSpec:
    """How every method is evaluated."""

    split: Literal["valid", "test"] = "test"
    """The split the report is about (``test``; ``valid`` for debugging only)."""
    exclude_history: bool = True
    """Remove history items from the ranking (gold items always stay rankable)."""
    batch_size: int = 256
    """Users per model call; the same for every method, so inference times compare."""
    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    """Metric cut-offs."""
    bootstrap_samples: int = 1000
    """Bootstrap resamples of users for the intervals."""


@dataclass
class SemanticIdSpec:
    """RQ-KMeans semantic ids of TIGER (``recsys tokenize ids``)."""

    levels: int = 3
    """k-means levels (plus one uniqueness digit)."""
    codes: int = 64
    """Centroids per level."""
    seed: int = 0
    """Seed of the ids (fixed across method seeds: the tokenizer is an input of TIGER)."""
    niter: int = 20
    """Lloyd iterations per level."""


@dataclass
class SetRecSpec:
    """The set-identifier training job (``recsys.training.job``)."""

    config: str | None = None
    """Training YAML, e.g. ``configs/setrec-t5-demo.yaml`` (or give ``base`` instead)."""
    base: dict[str, Any] | None = None
    """The training config inline (the sections of ``TrainJobConfig``); written to
    ``<work_dir>/setrec-base.yaml`` and used when ``config`` is not given."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted overrides for every set-identifier method (e.g. ``trainer.max_epochs``)."""


@dataclass
class BenchmarkConfig:
    """A quality benchmark (``configs/bench-*.yaml``)."""

    dataset: str
    """Dataset name used in file names: ``quality-<dataset>.json``."""
    data: DataSpec
    """How to prepare the dataset."""
    methods: list[MethodSpec]
    """Methods to train and evaluate, in report order."""
    work_dir: str = "runs/bench"
    """Folder of the prepared data, artifacts, trained models and per-user tables."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds of every method."""
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    """Evaluation settings."""
    sasrec: dict[str, Any] = field(default_factory=dict)
    """Base ``SASRecConfig`` fields of SASRec methods."""
    cf: dict[str, Any] | None = None
    """``SASRecConfig`` fields of the CF tokenizer's SASRec (None: the ``sasrec`` fields, seed 0)."""
    tiger: dict[str, Any] = field(default_factory=dict)
    """Base ``TigerConfig`` fields of TIGER methods."""
    semantic_ids: SemanticIdSpec = field(default_factory=SemanticIdSpec)
    """Semantic ids of TIGER."""
    setrec: SetRecSpec = field(default_factory=SetRecSpec)
    """The set-identifier training job."""
    text_encoder: dict[str, Any] = field(default_factory=dict)
    """``TextEncoderConfig`` fields of the text embeddings (default: bundled all-MiniLM-L6-v2)."""
    torch_threads: int | None = 1
    """Intra-op threads of torch for training and inference (the same for every method); None keeps torch's default.
    One thread avoids oversubscription when the cores are shared."""
    rere: dict[str, Any] = field(default_factory=dict)
    """Base ``ReReConfig`` fields (``recsys.tuning.rere``) of tuned methods (``tune: rere``); a method's
    ``overrides`` change them for that method."""
    reference: str = "setrec"
    """Method every other method is compared with (paired intervals)."""
    beam_method: str = "tiger"
    """The beam-search method of the efficiency ratio."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        names = [m.name for m in self.methods]
        if not names:
            raise ConfigError("methods: list at least one method")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"methods: names must be unique, repeated {duplicates}")
        reserved = sorted(set(names) & set(RESERVED_KEYS))
        if reserved:
            raise ConfigError(f"methods: {reserved} are reserved report keys; rename the method")
        for i, method in enumerate(self.methods):
            earlier = {m.name: m for m in self.methods[:i]}
            if method.compare_to is not None and method.compare_to not in earlier:
                raise ConfigError(f"methods[{i}] ({method.name}).compare_to: {method.compare_to!r} must name a method "
                                  f"listed before it (earlier methods: {sorted(earlier)})")
            if method.tune is None:
                continue
            start = earlier.get(method.start)
            if start is None or start.kind != method.kind or start.tune is not None:
                raise ConfigError(f"methods[{i}] ({method.name}).start: {method.start!r} must name a supervised "
                                  f"{method.kind} method listed before it (earlier methods: {sorted(earlier)})")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if not self.evaluation.ks or min(self.evaluation.ks) < 1:
            raise ConfigError(f"evaluation.ks must be positive cut-offs, got {self.evaluation.ks}")
        if any(m.kind == "setrec" for m in self.methods) and not (self.setrec.config or self.setrec.base):
            raise ConfigError("setrec.config: a setrec method is listed, give the training YAML (or setrec.base inline)")
        if self.setrec.config and self.setrec.base:
            raise ConfigError("setrec: give either config (a YAML path) or base (inline values), not both")
        self.check_method_settings()

    def check_method_settings(self) -> None:
        """Read every method's settings through the one config path, so a wrong key or type fails now, named.

        Keys and types only: cross-field checks (``validate()``) run when the method trains. ``sasrec``/``cf`` are ``SASRecConfig`` fields, ``tiger`` ``TigerConfig`` fields, ``text_encoder``
        ``TextEncoderConfig`` fields, ``setrec.base`` a training config; each method's ``overrides`` are
        checked merged with the base of its kind (dotted training keys for ``setrec``).
        """
        from recsys.config import config_from_values
        from recsys.models.sasrec import SASRecConfig
        from recsys.models.tiger import TigerConfig
        from recsys.tokenizers.text_encoder import TextEncoderConfig
        from recsys.training.setrec_config import TrainJobConfig

        config_from_values(SASRecConfig, self.sasrec, validate=False, where="sasrec")
        if self.cf is not None:
            config_from_values(SASRecConfig, self.cf, validate=False, where="cf")
        config_from_values(TigerConfig, self.tiger, validate=False, where="tiger")
        config_from_values(TextEncoderConfig, self.text_encoder, validate=False, where="text_encoder")
        from recsys.tuning.rere import ReReConfig

        config_from_values(ReReConfig, self.rere, validate=False, where="rere")
        if self.setrec.base is not None:
            config_from_values(TrainJobConfig, self.setrec.base, self.setrec.overrides, validate=False, where="setrec.base")
        for i, method in enumerate(self.methods):
            where = f"methods[{i}] ({method.name}).overrides"
            if method.tune is not None:
                config_from_values(ReReConfig, {**self.rere, **method.overrides}, validate=False, where=where)
            elif method.kind == "sasrec":
                config_from_values(SASRecConfig, {**self.sasrec, **method.overrides}, validate=False, where=where)
            elif method.kind == "tiger":
                config_from_values(TigerConfig, {**self.tiger, **method.overrides}, validate=False, where=where)
            elif method.kind == "setrec" and self.setrec.base is not None:
                config_from_values(TrainJobConfig, self.setrec.base, {**self.setrec.overrides, **method.overrides},
                                   validate=False, where=where)


def parse_benchmark_config(values: dict[str, Any], where: str = "config") -> BenchmarkConfig:
    """Build and validate a :class:`BenchmarkConfig` from a mapping (the parsed YAML).

    Args:
        values: the YAML's keys.
        where: what to call the mapping in messages (a file name).

    Example:
        >>> parse_benchmark_config({"dataset": "x", "data": {"source": "ml-100k"},
        ...                         "methods": [{"name": "pop", "kind": "popularity"}]}).seeds
        [0, 1, 2]
    """
    from recsys.config import config_from_values

    return config_from_values(BenchmarkConfig, values, where=where)


def load_benchmark_config(path: str | Path | list[str | Path], overrides: dict[str, Any] | None = None) -> BenchmarkConfig:
    """Read benchmark YAML file(s) (later files win); ``overrides`` are dotted keys (``{"evaluation.batch_size": 128}``).

    Raises:
        ConfigError: missing file, unknown or invalid field (the file and the dotted key are named).

    Example:
        >>> load_benchmark_config("configs/bench-ml100k.yaml", {"seeds": [0]}).methods[0].name
    """
    from recsys.config import load_config

    for one in [path] if isinstance(path, (str, Path)) else path:
        if not Path(one).is_file():
            raise ConfigError(f"{one}: benchmark config not found; see configs/bench-ml100k.yaml for an example")
    return load_config(BenchmarkConfig, path, overrides)
