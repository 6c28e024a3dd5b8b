"""Train one method of the quality benchmark and wrap it as a :class:`Recommender`.

Every method is trained on the train split only, selects its epoch (and, for set
identifiers, beta) on the valid split, and is handed to the harness as either a
catalogue scorer (popularity, SASRec, set identifiers) or a list generator (TIGER's
trie-constrained beam search). The item token table of a set-identifier bundle is
computed once per model, as an index is built once at export; the timed part of an
evaluation is then what serving does per request.

Example:
    >>> context = MethodContext(data=PreparedDataset.load("runs/bench/ml-100k/data"), work_dir=Path("runs/x"))
    >>> trained = train_method(MethodSpec("popularity", "popularity"), seed=0, context=context)
    >>> trained.recommender.score([[1, 2]]).shape
"""

from __future__ import annotations

import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from recsys.errors import ArtifactError, ConfigError
from recsys.evaluation.recommenders import RankingRecommender, Recommender, ScoringRecommender

Kind = Literal["popularity", "sasrec", "tiger", "setrec", "text"]
KINDS = typing.get_args(Kind)


@dataclass
class MethodSpec:
    """One method of the benchmark."""

    name: str
    """Name in reports and in the JSON (unique within a benchmark)."""
    kind: Kind
    """``popularity``, ``sasrec``, ``tiger``, ``setrec`` or ``text`` (text similarity)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Settings that differ from the benchmark's base config of this kind (dotted keys for setrec); for a tuned
    method, ``ReReConfig`` fields that differ from the benchmark's ``rere`` section."""
    tune: Literal["rere"] | None = None
    """Post-training stage: ``rere`` (``recsys.tuning``, ReRe) tunes the trained model of method ``start``."""
    start: str | None = None
    """Tuned methods: the (supervised) method of the same kind whose model of the same seed is tuned; it is
    reused from ``<work_dir>/models`` when its saved config equals the one it would be trained with now."""
    compare_to: str | None = None
    """A method listed before this one that the report pairs it with (``compared``: this method minus that one,
    paired bootstrap on the same users), e.g. ``sasrec-dare`` against ``sasrec``."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"methods[{self.name!r}].kind must be one of {KINDS}, got {self.kind!r}")
        if (self.tune is None) != (self.start is None):
            raise ConfigError(f"methods[{self.name!r}]: give tune and start together (tune: rere, start: <method name>)")
        if self.tune is not None and self.kind not in ("setrec", "tiger"):
            raise ConfigError(f"methods[{self.name!r}]: tune: {self.tune} applies to the generative methods (setrec, tiger), "
                              f"not {self.kind}")
        if not isinstance(self.overrides, dict):
            raise ConfigError(f"methods[{self.name!r}].overrides must be a mapping, got {type(self.overrides).__name__}")


@dataclass
class MethodContext:
    """What every method's training reads: the dataset and the shared artifacts.

    Attributes:
        data: the prepared dataset.
        work_dir: folder for trained models of this benchmark.
        sasrec: base ``SASRecConfig`` fields.
        tiger: base ``TigerConfig`` fields.
        semantic_ids: (num_items, C) RQ-KMeans codes for TIGER (None when no TIGER method).
        setrec_config: path of the set-identifier training YAML.
        setrec_overrides: overrides applied to every set-identifier method.
        cf_dir: CF embeddings folder (``recsys tokenize cf``).
        semantic_dir: text embeddings folder (``recsys tokenize semantic``).
        exclude_history: whether the harness removes history items from rankings.
    """

    data: Any
    work_dir: Path
    sasrec: dict[str, Any] = field(default_factory=dict)
    tiger: dict[str, Any] = field(default_factory=dict)
    semantic_ids: torch.Tensor | None = None
    setrec_config: str | None = None
    setrec_overrides: dict[str, Any] = field(default_factory=dict)
    cf_dir: Path | None = None
    semantic_dir: Path | None = None
    exclude_history: bool = True
    """The harness's ``evaluation.exclude_history``: methods that select on valid rank the same way."""
    refused: dict[str, str] = field(default_factory=dict)
    """Methods of the config refused before training (name -> reason), e.g. text methods on a dataset without item text."""
    rere: dict[str, Any] = field(default_factory=dict)
    """Base ``ReReConfig`` fields of tuned methods (``tune: rere``)."""
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    """Every method of the benchmark by name (a tuned method finds its ``start`` here)."""


@dataclass
class TrainedMethod:
    """A trained method ready for the harness.

    Attributes:
        recommender: the scorer or list generator.
        valid_metrics: metrics of the selected model on the valid split (empty for popularity).
        train_seconds: wall time of training.
        info: facts worth logging (epochs, beta, backbone sizes, parameters, artifact path).
    """

    recommender: Recommender
    valid_metrics: dict[str, float]
    train_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def _config(cls, base: dict[str, Any], overrides: dict[str, Any], seed: int, where: str):
    """``cls`` (SASRecConfig, TigerConfig) from the base fields, the method's overrides and the seed (one config path)."""
    from recsys.config import config_from_values

    return config_from_values(cls, {**base, **overrides, "seed": seed}, where=where)


def num_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of ``module`` (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def train_popularity(spec: MethodSpec, seed: int, context: MethodContext) -> TrainedMethod:
    """Most popular items on the train split (the seed plays no part)."""
    from recsys.models.popularity import Popularity

    start = time.perf_counter()
    model = Popularity.fit(context.data)
    rec = ScoringRecommender(spec.name, model.score, model.num_items)
    return TrainedMethod(rec, {}, time.perf_counter() - start, {"parameters": 0})


def train_sasrec(spec: MethodSpec, seed: int, context: MethodContext) -> TrainedMethod:
    """SASRec with early stopping on valid NDCG@10 (``recsys.training.sasrec.fit_sasrec``).

    ``overrides`` are ``SASRecConfig`` fields; ``{align: con}`` / ``{align: gen}`` add the RLMRec
    alignment (``recsys.models.rlmrec``), which reads the benchmark's text embeddings.
    """
    from recsys.models.sasrec import SASRec, SASRecConfig
    from recsys.training.sasrec import fit_sasrec

    config = _config(SASRecConfig, context.sasrec, spec.overrides, seed, f"methods[{spec.name!r}]")
    text = None
    if config.align != "none":
        from recsys.tokenizers.semantic import load_text_embeddings

        if context.semantic_dir is None:
            raise ConfigError(f"methods[{spec.name!r}]: align {config.align!r} needs the text embeddings folder")
        text = load_text_embeddings(context.semantic_dir, context.data.num_items)
    start = time.perf_counter()
    result = fit_sasrec(context.data, config, out_dir=None, log_to_mlflow=False, text_embeddings=text)
    seconds = time.perf_counter() - start
    model = result.model.eval()

    def score(histories: list[list[int]]) -> torch.Tensor:
        return model.score(SASRec.pad_histories(histories, config.max_len))

    info = {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "parameters": num_parameters(model),
            "hidden_size": config.hidden_size, "num_layers": config.num_layers, "align": config.align}
    return TrainedMethod(ScoringRecommender(spec.name, score, model.num_items), dict(result.valid_metrics), seconds, info)


def train_tiger(spec: MethodSpec, seed: int, context: MethodContext) -> TrainedMethod:
    """TIGER over the RQ-KMeans ids, trie-constrained beam search (``recsys.training.tiger.fit_tiger``)."""
    from recsys.models.tiger import TigerConfig
    from recsys.training.tiger import fit_tiger, save_tiger

    if context.semantic_ids is None:
        raise ConfigError(f"methods[{spec.name!r}]: TIGER needs semantic ids; the benchmark builds them when a tiger method is listed")
    config = _config(TigerConfig, context.tiger, spec.overrides, seed, f"methods[{spec.name!r}]")
    start = time.perf_counter()
    result = fit_tiger(context.data, context.semantic_ids, config, out_dir=None, log_to_mlflow=False)
    seconds = time.perf_counter() - start
    model = result.model.eval()
    model_dir = context.work_dir / "models" / f"{spec.name}-seed{seed}"  # kept for tuned methods (tune: rere)
    save_tiger(model, model_dir, extra={"train_seconds": seconds, "epochs_run": result.epochs_run,
                                        "dataset": context.data.fingerprint})
    rec = RankingRecommender(spec.name, model.rank, model.num_items, max_k=config.beam_size)
    t5 = model.t5.config
    info = {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "parameters": num_parameters(model),
        "beam_size": config.beam_size,
        "model_dir": str(model_dir),
        "backbone": {"d_model": t5.d_model, "num_layers": t5.num_layers, "num_decoder_layers": t5.num_decoder_layers,
                     "num_heads": t5.num_heads, "d_ff": t5.d_ff},
    }
    return TrainedMethod(rec, dict(result.valid_metrics), seconds, info)


def train_text(spec: MethodSpec, seed: int, context: MethodContext) -> TrainedMethod:
    """Text similarity to the last history items, window picked on valid (``recsys.models.text_similarity``).

    ``overrides`` may set ``windows`` (a list of history lengths, null for the whole history).
    The seed plays no part: nothing is trained.
    """
    from recsys.models.text_similarity import DEFAULT_WINDOWS, TextSimilarity
    from recsys.tokenizers.semantic import load_text_embeddings

    unknown = set(spec.overrides) - {"windows"}
    if unknown:
        raise ConfigError(f"methods[{spec.name!r}]: unknown text-similarity settings {sorted(unknown)}; allowed: ['windows']")
    if context.semantic_dir is None:
        raise ConfigError(f"methods[{spec.name!r}]: the semantic tokenizer folder is missing")
    windows = tuple(spec.overrides.get("windows", DEFAULT_WINDOWS))
    start = time.perf_counter()
    embeddings = load_text_embeddings(context.semantic_dir, context.data.num_items)
    model, valid = TextSimilarity.fit(context.data, embeddings, windows, exclude_history=context.exclude_history)
    seconds = time.perf_counter() - start
    window = valid.pop("window")
    info = {"parameters": 0, "window": None if window < 0 else int(window), "windows_tried": list(windows)}
    return TrainedMethod(ScoringRecommender(spec.name, model.score, model.num_items), valid, seconds, info)


def setrec_overrides(spec: MethodSpec, seed: int, context: MethodContext) -> dict[str, Any]:
    """The override mapping handed to ``load_train_config`` for one set-identifier run.

    Example:
        >>> setrec_overrides(MethodSpec("full", "setrec", {"model.attention": "full"}), 1, context)["seed"]   # 1
    """
    out_dir = context.work_dir / "models" / f"{spec.name}-seed{seed}"
    return {
        **context.setrec_overrides,
        **spec.overrides,
        "seed": seed,
        "out_dir": str(out_dir),
        "data": str(context.data.root),
        "cf": str(context.cf_dir),
        **({"semantic": str(context.semantic_dir)} if context.semantic_dir is not None else {}),  # none: CF-only on data without text
    }


def bundle_recommender(name: str, model) -> ScoringRecommender:
    """Wrap a loaded bundle (``recsys.bundle.load_bundle``): item table computed once, beta and the
    long-history selection (``model.bundle.history_selector()``, as serving applies it) from the bundle."""
    from recsys.models.setrec import pad_histories

    with torch.no_grad():
        table = model.item_table().detach()
    beta, max_len = model.bundle.beta, model.bundle.max_len
    select = model.bundle.history_selector()

    def score(histories: list[list[int]]) -> torch.Tensor:
        return model.score_all(pad_histories(select(histories), max_len), beta, table=table)

    return ScoringRecommender(name, score, int(table.shape[0]))


def train_setrec(spec: MethodSpec, seed: int, context: MethodContext) -> TrainedMethod:
    """A set-identifier model through the training job (``recsys.training.job.train``), loaded from its bundle."""
    import importlib.util

    if importlib.util.find_spec("recsys.training.job") is None:
        raise ArtifactError(
            f"methods[{spec.name!r}]: recsys.training.job is not available in this checkout, so set-identifier "
            "methods cannot be trained; remove them from the benchmark's methods or update the checkout"
        )
    from recsys.bundle import load_bundle
    from recsys.training.job import load_train_config, train

    if context.setrec_config is None:
        raise ConfigError("setrec.config is required when a setrec method is listed")
    if context.cf_dir is None:
        raise ConfigError(f"methods[{spec.name!r}]: the cf tokenizer folder is missing")
    cfg = load_train_config(context.setrec_config, overrides=setrec_overrides(spec, seed, context))
    # without a semantic folder the job refuses any token set but cf by name (recsys.training.job.text_embeddings_dir)
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    model = load_bundle(result.bundle_dir)
    backbone = model.backbone_config_dict()
    info = {
        "bundle_dir": str(result.bundle_dir),
        "run_id": result.run_id,
        "beta": float(model.bundle.beta),
        "best_beta": float(result.best_beta),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "parameters": num_parameters(model),
        "model_config": model.config.to_dict(),
        "backbone": {key: backbone.get(key) for key in ("d_model", "num_layers", "num_decoder_layers", "num_heads", "d_ff", "hidden_size", "num_hidden_layers")
                     if backbone.get(key) is not None},
    }
    valid = {k.removeprefix("valid/"): float(v) for k, v in dict(result.valid_metrics).items()}
    return TrainedMethod(bundle_recommender(spec.name, model), valid, seconds, info)


TRAINERS = {"popularity": train_popularity, "sasrec": train_sasrec, "tiger": train_tiger, "setrec": train_setrec,
            "text": train_text}


def train_method(spec: MethodSpec, seed: int, context: MethodContext) -> TrainedMethod:
    """Train ``spec`` with ``seed`` on ``context.data``'s train split.

    Args:
        spec: the method.
        seed: seed of initialisation and shuffling.
        context: dataset and shared artifacts.

    Example:
        >>> train_method(MethodSpec("sasrec", "sasrec", {"max_epochs": 2}), 0, context).valid_metrics["ndcg@10"]
    """
    if spec.tune is not None:
        from recsys.evaluation.tuned_methods import tune_method

        return tune_method(spec, seed, context)
    return TRAINERS[spec.kind](spec, seed, context)
