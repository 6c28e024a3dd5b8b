"""The quality benchmark: every method, several seeds, one harness, one report.

Command:
    recsys benchmark quality --config configs/bench-ml100k.yaml [--seeds 3] [--out benchmarks/results]

Steps: prepare the dataset (``recsys data prepare``), build the shared artifacts once
(text embeddings; CF embeddings when a set-identifier method is listed; RQ-KMeans ids
when TIGER is), then for every method and seed train on the train split (model
selection on valid), evaluate on the test split with :func:`recsys.evaluation.evaluate.evaluate`
and keep the per-user metrics. Per method, per-user metrics are averaged over seeds and
summarised as a mean with a 95% bootstrap interval over users; the reference method
(set identifiers) is compared with every other method by a paired bootstrap on the same
users. The output is ``quality-<dataset>.json`` (method name -> metric -> ``{"mean", "ci"}``
plus ``inference_seconds_per_1000_users``), a markdown table and PNG plots; everything is
logged to MLflow under one parent run with one nested run per method and seed.

Example:
    >>> config = load_benchmark_config("configs/bench-ml100k.yaml", overrides={"seeds": [0]})
    >>> report = run_benchmark(config, out_dir=Path("benchmarks/results"))
    >>> report["setrec"]["ndcg@10"]["mean"], report["efficiency"]["beam_over_reference"]
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import ConfigError
from recsys.evaluation.methods import MethodContext, MethodSpec, TrainedMethod, train_method

#: Keys of the report that are not method names.
RESERVED_KEYS = ("meta", "paired", "efficiency", "seeds")
#: Item-group metrics reported besides the whole-population ones.
GROUP_METRICS = ("recall",)
EXPERIMENT = "benchmark-quality"


@dataclass
class DataSpec:
    """How the dataset is prepared (fields of ``recsys data prepare``)."""

    source: str
    """A path (directory or file), or ``ml-100k`` (embedded)."""
    format: str = "auto"
    """Source format, or ``auto``."""
    kcore: int = 0
    """Iterative k-core threshold; 0 keeps everything."""
    split: str = "loo"
    """``loo`` or ``temporal``."""
    catalogue_only: str = "keep"
    """Items with no event: ``keep`` (cold items) or ``drop``."""


@dataclass
class EvaluationSpec:
    """How every method is evaluated."""

    split: str = "test"
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
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        if self.evaluation.split not in ("valid", "test"):
            raise ConfigError(f"evaluation.split must be 'valid' or 'test', got {self.evaluation.split!r}")
        if not self.evaluation.ks or min(self.evaluation.ks) < 1:
            raise ConfigError(f"evaluation.ks must be positive cut-offs, got {self.evaluation.ks}")
        if any(m.kind == "setrec" for m in self.methods) and not (self.setrec.config or self.setrec.base):
            raise ConfigError("setrec.config: a setrec method is listed, give the training YAML (or setrec.base inline)")
        if self.setrec.config and self.setrec.base:
            raise ConfigError("setrec: give either config (a YAML path) or base (inline values), not both")


def _build(cls, values: Any, where: str):
    """A dataclass from a mapping, naming unknown or missing fields."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(values).__name__}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown fields {unknown}; allowed: {sorted(allowed)}")
    try:
        return cls(**values)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}") from error


def _set_dotted(target: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def parse_benchmark_config(values: dict[str, Any], where: str = "config") -> BenchmarkConfig:
    """Build a :class:`BenchmarkConfig` from a mapping (the parsed YAML)."""
    values = dict(values)
    nested = {
        "data": DataSpec,
        "evaluation": EvaluationSpec,
        "semantic_ids": SemanticIdSpec,
        "setrec": SetRecSpec,
    }
    if "data" not in values or "dataset" not in values or "methods" not in values:
        missing = [k for k in ("dataset", "data", "methods") if k not in values]
        raise ConfigError(f"{where}: missing required fields {missing}")
    for key, cls in nested.items():
        if key in values:
            values[key] = _build(cls, values[key] or {}, f"{where}: {key}")
    methods = values["methods"]
    if not isinstance(methods, list):
        raise ConfigError(f"{where}: methods must be a list of {{name, kind, overrides}}")
    values["methods"] = [_build(MethodSpec, m, f"{where}: methods[{i}]") for i, m in enumerate(methods)]
    config = _build(BenchmarkConfig, values, where)
    config.seeds = [int(s) for s in config.seeds]
    config.validate()
    return config


def load_benchmark_config(path: str | Path, overrides: dict[str, Any] | None = None) -> BenchmarkConfig:
    """Read a benchmark YAML; ``overrides`` are dotted keys (``{"evaluation.batch_size": 128}``).

    Raises:
        ConfigError: missing file, unknown or invalid field (named).

    Example:
        >>> load_benchmark_config("configs/bench-ml100k.yaml", {"seeds": [0]}).methods[0].name
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: benchmark config not found; see configs/bench-ml100k.yaml for an example")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    for key, value in (overrides or {}).items():
        _set_dotted(values, key, value)
    return parse_benchmark_config(values, where=str(path))


# --------------------------------------------------------------------------- artifacts


def _manifest_fingerprint(path: Path, *keys: str) -> str | None:
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return None
    value: Any = json.loads(manifest.read_text())
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, str) else None


#: Method kinds that read item text, and why (interaction-only datasets refuse them by name).
TEXT_KINDS = {
    "tiger": "its semantic ids are RQ-KMeans codes of the items' text embeddings",
    "text": "it ranks items by the cosine of their text embeddings",
    "setrec": "the set-identifier training job builds every item's tokens from its text embedding "
              "(also with model.token_set: cf, whose item encoder still reads them)",
}


def refuse_text_methods(config: BenchmarkConfig, data, log=print) -> dict[str, str]:
    """Remove the methods that need item text from ``config`` when some item has none; return them with the reason.

    Interaction-only datasets (no item file, or items without any text) still run every
    method that does not need text (popularity, SASRec); the others are refused by name here,
    before any training starts. Raises ConfigError when no method is left.
    """
    without_text = int((data.items["text"].fill_null("").str.strip_chars() == "").sum())
    if not without_text:
        return {}
    refused = {m.name: f"needs item text: {TEXT_KINDS[m.kind]}" for m in config.methods if m.kind in TEXT_KINDS}
    if not refused:
        return {}
    config.methods = [m for m in config.methods if m.name not in refused]
    why = f"{without_text:,} of {data.num_items:,} items have no text"
    if not config.methods:
        raise ConfigError(f"every method needs item text and {why}: " + "; ".join(f"{k} {v}" for k, v in refused.items()))
    log(f"refused before training ({why}): " + "; ".join(f"{name} ({reason})" for name, reason in refused.items()))
    return {name: f"{reason}; {why}" for name, reason in refused.items()}


def prepare_artifacts(config: BenchmarkConfig, log=print) -> MethodContext:
    """Prepare the dataset and build the tokenizer artifacts the listed methods need.

    Artifacts already in ``work_dir`` are reused when their manifest names the same
    dataset fingerprint; the text embeddings also come from the embedding cache.
    """
    import torch

    from recsys.pipelines.prepare import PrepareConfig, prepare
    from recsys.pipelines.prepared import PreparedDataset

    work = Path(config.work_dir)
    data_dir = work / "data"
    spec = config.data
    prepare(PrepareConfig(source=spec.source, out=str(data_dir), format=spec.format, kcore=spec.kcore,
                          split=spec.split, catalogue_only=spec.catalogue_only))
    data = PreparedDataset.load(data_dir)
    log(f"data: {data.num_users} users, {data.num_items} items, fingerprint {data.fingerprint}")
    refused = refuse_text_methods(config, data, log)
    kinds = {m.kind for m in config.methods}
    setrec_config = config.setrec.config
    if setrec_config is None and config.setrec.base is not None:
        import yaml

        setrec_config = str(work / "setrec-base.yaml")
        Path(setrec_config).write_text(yaml.safe_dump(config.setrec.base, sort_keys=False))
    context = MethodContext(data=data, work_dir=work, sasrec=dict(config.sasrec), tiger=dict(config.tiger),
                            setrec_config=setrec_config, setrec_overrides=dict(config.setrec.overrides),
                            exclude_history=config.evaluation.exclude_history, refused=refused)
    if kinds & {"tiger", "setrec", "text"}:
        from recsys.tokenizers.semantic import SemanticConfig, build_text_embeddings, load_text_embeddings
        from recsys.tokenizers.text_encoder import TextEncoderConfig

        semantic_dir = work / "semantic"
        if _manifest_fingerprint(semantic_dir, "dataset", "fingerprint") != data.fingerprint:
            encoder = _build(TextEncoderConfig, dict(config.text_encoder), "text_encoder")
            _, stats = build_text_embeddings(data_dir, semantic_dir, SemanticConfig(encoder=encoder, progress=False))
            log(f"text embeddings: {stats.encoded} encoded, {stats.cache_hits} from the cache")
        context.semantic_dir = semantic_dir
        if "tiger" in kinds:
            from recsys.tokenizers.semantic_ids import build_semantic_ids

            ids = config.semantic_ids
            built = build_semantic_ids(load_text_embeddings(semantic_dir, data.num_items), levels=ids.levels,
                                       codes=ids.codes, seed=ids.seed, niter=ids.niter)
            context.semantic_ids = torch.as_tensor(built.codes)
            log(f"semantic ids: {tuple(built.codes.shape)}, collision rate {built.stats['collision_rate']:.3f}")
    if "setrec" in kinds:
        from recsys.tokenizers.cf import train_cf_embeddings

        cf_dir = work / "cf"
        if _manifest_fingerprint(cf_dir, "dataset", "fingerprint") != data.fingerprint and \
                _manifest_fingerprint(cf_dir, "dataset_fingerprint") != data.fingerprint:
            from recsys.models.sasrec import SASRecConfig

            cf_values = dict(config.sasrec if config.cf is None else config.cf)
            cf_config = _build(SASRecConfig, {"seed": 0, **cf_values} if config.cf is None else cf_values, "cf")
            train_cf_embeddings(data_dir, cf_dir, cf_config, log_to_mlflow=False)
            log(f"CF embeddings written to {cf_dir}")
        context.cf_dir = cf_dir
    return context


# --------------------------------------------------------------------------- aggregation


@dataclass
class SeedRun:
    """One method trained with one seed and evaluated.

    Attributes:
        seed: the training seed.
        trained: training outcome (valid metrics, info).
        result: the harness's :class:`recsys.evaluation.evaluate.EvaluationResult`.
    """

    seed: int
    trained: TrainedMethod
    result: Any


def report_metrics(ks: list[int]) -> list[tuple[str, str, str]]:
    """(report key, group, per-user metric) of every reported metric.

    Example:
        >>> report_metrics([10])[:2]   # [("recall@10", "all", "recall@10"), ("ndcg@10", "all", "ndcg@10")]
    """
    from recsys.evaluation.metrics import metric_keys

    keys = [(name, "all", name) for name in metric_keys(tuple(ks))]
    keys += [(f"cold/{m}@{k}", "cold", f"{m}@{k}") for k in ks for m in GROUP_METRICS]
    keys += [(f"warm/{m}@{k}", "warm", f"{m}@{k}") for k in ks for m in GROUP_METRICS]
    return keys


def seed_averaged(runs: list[SeedRun], group: str, metric: str) -> np.ndarray:
    """Per-user ``metric`` of ``group`` averaged over seeds, ordered by user_idx (NaN: no gold in group)."""
    stacked = np.stack([run.result.metric(metric, group) for run in runs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN users: no gold item in the group
        return np.nanmean(stacked, axis=0)


def _finite(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def summarise_method(runs: list[SeedRun], ks: list[int], samples: int) -> dict[str, Any]:
    """Mean and 95% bootstrap interval of every metric, seed spread, timing, for one method."""
    from recsys.evaluation.bootstrap import bootstrap_ci

    out: dict[str, Any] = {}
    for key, group, metric in report_metrics(ks):
        values = seed_averaged(runs, group, metric)
        finite = values[~np.isnan(values)]
        lo, hi = bootstrap_ci(values, num_samples=samples)
        per_seed = [run.result.summary[group][metric] for run in runs]
        out[key] = {
            "mean": _finite(float(finite.mean())) if finite.size else None,
            "ci": [_finite(lo), _finite(hi)],
            "seed_std": _finite(float(np.std(per_seed))) if len(per_seed) > 1 else 0.0,
            "users": int(finite.size),
        }
    seconds = [run.result.seconds_per_1000_users for run in runs]
    out["inference_seconds_per_1000_users"] = float(np.mean(seconds))
    out["inference_seconds_per_1000_users_per_seed"] = [float(s) for s in seconds]
    out["train_seconds"] = float(np.mean([run.trained.train_seconds for run in runs]))
    out["valid_ndcg@10"] = _finite(float(np.mean([run.trained.valid_metrics.get("ndcg@10", math.nan) for run in runs])))
    out["users"] = runs[0].result.num_users
    out["skipped_empty_gold"] = {g: c["skipped_empty_gold"] for g, c in runs[0].result.counts.items() if g in ("all", "cold", "warm")}
    out["info"] = _jsonable(runs[0].trained.info)
    return out


def paired_comparisons(all_runs: dict[str, list[SeedRun]], reference: str, ks: list[int], samples: int) -> dict[str, Any]:
    """Paired bootstrap of reference minus every other method on the same users (seed-averaged)."""
    from recsys.evaluation.bootstrap import paired_bootstrap

    if reference not in all_runs:
        return {}
    keys = [(f"{m}@{k}", "all", f"{m}@{k}") for k in ks for m in ("ndcg", "recall")]
    keys += [(f"cold/recall@{k}", "cold", f"recall@{k}") for k in ks]
    out: dict[str, Any] = {}
    for name, runs in all_runs.items():
        if name == reference:
            continue
        out[name] = {}
        for key, group, metric in keys:
            result = paired_bootstrap(seed_averaged(all_runs[reference], group, metric), seed_averaged(runs, group, metric),
                                      num_samples=samples)
            out[name][key] = {"diff": _finite(result["diff"]), "ci": [_finite(v) for v in result["ci"]],
                              "p_reference_not_better": _finite(result["p_a_not_better"]), "users": result["users"]}
    return out


def efficiency(summary: dict[str, Any], reference: str, beam: str) -> dict[str, Any]:
    """Inference time ratio beam search / set identifiers, with both backbones for the equal-size check."""
    if reference not in summary or beam not in summary:
        return {}
    ref, bm = summary[reference], summary[beam]
    ratio = bm["inference_seconds_per_1000_users"] / max(ref["inference_seconds_per_1000_users"], 1e-12)
    ref_backbone, beam_backbone = ref["info"].get("backbone", {}), bm["info"].get("backbone", {})
    shared = [k for k in ("d_model", "num_layers", "num_decoder_layers", "num_heads", "d_ff") if k in ref_backbone and k in beam_backbone]
    return {
        "reference": reference,
        "beam_method": beam,
        "beam_size": bm["info"].get("beam_size"),
        "reference_seconds_per_1000_users": ref["inference_seconds_per_1000_users"],
        "beam_seconds_per_1000_users": bm["inference_seconds_per_1000_users"],
        "beam_over_reference": ratio,
        "reference_backbone": ref_backbone,
        "beam_backbone": beam_backbone,
        "equal_backbone": bool(shared) and all(ref_backbone[k] == beam_backbone[k] for k in shared),
        "reference_parameters": ref["info"].get("parameters"),
        "beam_parameters": bm["info"].get("parameters"),
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def build_report(config: BenchmarkConfig, all_runs: dict[str, list[SeedRun]], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: one entry per method, then ``paired``, ``efficiency``, ``seeds`` and ``meta``."""
    ks, samples = list(config.evaluation.ks), config.evaluation.bootstrap_samples
    report: dict[str, Any] = {name: summarise_method(runs, ks, samples) for name, runs in all_runs.items()}
    report["paired"] = {"reference": config.reference, "vs": paired_comparisons(all_runs, config.reference, ks, samples)}
    report["efficiency"] = efficiency(report, config.reference, config.beam_method)
    report["seeds"] = {
        name: [{"seed": run.seed, "test": run.result.summary["all"], "cold": run.result.summary.get("cold", {}),
                "valid": run.trained.valid_metrics, "inference_seconds_per_1000_users": run.result.seconds_per_1000_users,
                "train_seconds": run.trained.train_seconds}
               for run in runs]
        for name, runs in all_runs.items()
    }
    report["meta"] = meta
    return _jsonable(report)


# --------------------------------------------------------------------------- run


class _Tracker:
    """MLflow parent run with nested runs, through the client (no global active run)."""

    def __init__(self, enabled: bool, run_name: str, params: dict[str, Any]) -> None:
        self.enabled = enabled
        self.parent = None
        if not enabled:
            return
        from mlflow.tracking import MlflowClient

        from recsys import tracking

        self.client = MlflowClient(tracking.configure())
        self.experiment = tracking.experiment_id(EXPERIMENT)
        self.parent = self.client.create_run(self.experiment, run_name=run_name, tags={"git_commit": tracking.git_commit()}).info.run_id
        self.log_params(self.parent, params)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        from recsys.tracking import flatten

        flat = [Param(k, str(v)[:500]) for k, v in flatten(params).items()]
        for start in range(0, len(flat), 100):
            self.client.log_batch(run_id, params=flat[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        rows = [Metric(k.replace("@", "_at_"), float(v), stamp, 0) for k, v in metrics.items()
                if v is not None and not (isinstance(v, float) and math.isnan(v))]
        for start in range(0, len(rows), 200):
            self.client.log_batch(run_id, metrics=rows[start : start + 200])

    def child(self, name: str, params: dict[str, Any]) -> str | None:
        if not self.enabled:
            return None
        run_id = self.client.create_run(self.experiment, run_name=name, tags={"mlflow.parentRunId": self.parent}).info.run_id
        self.log_params(run_id, params)
        return run_id

    def finish(self, run_id: str | None, status: str = "FINISHED") -> None:
        if self.enabled and run_id is not None:
            self.client.set_terminated(run_id, status)


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | Path = "benchmarks/results",
    log_to_mlflow: bool = True,
    log=print,
    command: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate every method with every seed; write JSON, markdown and plots.

    Args:
        config: the benchmark.
        out_dir: where ``quality-<dataset>.json``, ``.md`` and ``.png`` files go.
        log_to_mlflow: one parent run (experiment ``benchmark-quality``) with a nested run per method and seed.
        log: progress printer.
        command: the command line that started the run (written into the report and table).

    Returns:
        The report written to ``quality-<dataset>.json``.
    """
    from recsys.evaluation.evaluate import evaluate
    from recsys.evaluation.groups import ItemGroups

    config.validate()
    started = time.perf_counter()
    if config.torch_threads is not None:
        import torch

        torch.set_num_threads(config.torch_threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = _Tracker(log_to_mlflow, f"quality-{config.dataset}", _jsonable(dataclasses.asdict(config)))
    status = "FAILED"
    try:
        context = prepare_artifacts(config, log)
        data = context.data
        examples = data.eval_examples(config.evaluation.split)
        groups = ItemGroups.from_dataset(data)
        per_user_dir = Path(config.work_dir) / "per_user"
        per_user_dir.mkdir(parents=True, exist_ok=True)
        all_runs: dict[str, list[SeedRun]] = {}
        for spec in config.methods:
            all_runs[spec.name] = []
            for seed in config.seeds:
                child = tracker.child(f"{spec.name}-seed{seed}", {"method": spec.name, "kind": spec.kind, "seed": seed,
                                                                 "overrides": spec.overrides})
                trained = train_method(spec, seed, context)
                result = evaluate(trained.recommender, examples, groups, ks=tuple(config.evaluation.ks),
                                  exclude_history=config.evaluation.exclude_history, batch_size=config.evaluation.batch_size)
                result.per_user.write_parquet(per_user_dir / f"{spec.name}-seed{seed}.parquet")
                all_runs[spec.name].append(SeedRun(seed, trained, result))
                if child is not None:
                    metrics = {f"test/{k}": v for k, v in result.summary["all"].items()}
                    metrics |= {f"test_cold/{k}": v for k, v in result.summary.get("cold", {}).items()}
                    metrics |= {f"valid/{k}": v for k, v in trained.valid_metrics.items()}
                    metrics |= {"inference_seconds_per_1000_users": result.seconds_per_1000_users,
                                "train_seconds": trained.train_seconds}
                    tracker.log_metrics(child, metrics)
                    tracker.finish(child)
                log(f"{spec.name} seed {seed}: test ndcg@10 {result.summary['all']['ndcg@10']:.4f}, "
                    f"valid ndcg@10 {trained.valid_metrics.get('ndcg@10', float('nan')):.4f}, "
                    f"{result.seconds_per_1000_users:.3f} s/1000 users, trained in {trained.train_seconds:.1f} s")
            # the report so far: a run cut short still leaves every finished method on disk
            files = _write_outputs(config, all_runs, data, examples, tracker, started, command, out_dir,
                                   complete=spec is config.methods[-1], refused=context.refused)
        report = json.loads(files[0].read_text())
        if tracker.enabled:
            flat = {}
            for name in all_runs:
                for key in ("ndcg@10", "recall@10", "recall@20", "cold/recall@20"):
                    if report[name].get(key, {}).get("mean") is not None:
                        flat[f"{name}/{key}"] = report[name][key]["mean"]
                flat[f"{name}/inference_seconds_per_1000_users"] = report[name]["inference_seconds_per_1000_users"]
            if report["efficiency"]:
                flat["beam_over_reference"] = report["efficiency"]["beam_over_reference"]
            tracker.log_metrics(tracker.parent, flat)
            for file in files:
                tracker.client.log_artifact(tracker.parent, str(file))
        status = "FINISHED"
        log(f"wrote {', '.join(str(f) for f in files)} in {report['meta']['seconds']} s")
        return report
    finally:
        if tracker.enabled:
            tracker.finish(tracker.parent, status)


def _write_outputs(config, all_runs, data, examples, tracker, started, command, out_dir: Path, complete: bool,
                   refused: dict | None = None) -> list[Path]:
    """Write ``quality-<dataset>.json`` (atomically), ``.md`` and the plots for the methods finished so far."""
    from recsys.evaluation.report import write_markdown, write_plots

    meta = {
        "dataset": config.dataset,
        "command": command,
        "complete": complete,
        "fingerprint": data.fingerprint,
        "users": data.num_users,
        "items": data.num_items,
        "split": config.evaluation.split,
        "evaluated_users": len(examples),
        "seeds": list(config.seeds),
        "exclude_history": config.evaluation.exclude_history,
        "bootstrap_samples": config.evaluation.bootstrap_samples,
        "interval": "95% percentile bootstrap over users of the seed-averaged per-user metric",
        "torch_threads": config.torch_threads,
        "seconds": round(time.perf_counter() - started, 1),
        "config": _jsonable(dataclasses.asdict(config)),
        "mlflow_parent_run": tracker.parent,
        "git_commit": _git_commit(),
        "refused_methods": refused or {},
    }
    report = build_report(config, all_runs, meta)
    stem = out_dir / f"quality-{config.dataset}"
    json_path = stem.with_suffix(".json")
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(json_path)
    return [json_path, write_markdown(report, stem.with_suffix(".md")), *write_plots(report, out_dir, config.dataset)]


def _git_commit() -> str:
    from recsys.tracking import git_commit

    return git_commit()


# --------------------------------------------------------------------------- merging runs


def load_seed_runs(report_path: str | Path, work_dir: str | Path) -> dict[str, list[SeedRun]]:
    """Rebuild the runs of a finished report from its JSON and the per-user tables in ``work_dir/per_user``.

    Used to combine methods run as separate processes (``recsys benchmark merge``): the per-user
    metrics are re-read, so paired intervals between them are exact.
    """
    import polars as pl

    from recsys.evaluation.evaluate import EvaluationResult
    from recsys.evaluation.report import methods_of

    report = json.loads(Path(report_path).read_text())
    runs: dict[str, list[SeedRun]] = {}
    for name in methods_of(report):
        runs[name] = []
        for entry in report["seeds"][name]:
            frame = pl.read_parquet(Path(work_dir) / "per_user" / f"{name}-seed{entry['seed']}.parquet")
            summary, counts = {}, {}
            metrics = [c for c in frame.columns if "@" in c]
            for group in frame["group"].unique(maintain_order=True).to_list():
                rows = frame.filter(pl.col("group") == group)
                present = rows.filter(pl.col("num_gold") > 0)
                summary[group] = {m: (float(present[m].mean()) if present.height else math.nan) for m in metrics}
                counts[group] = {"users": present.height, "skipped_empty_gold": rows.height - present.height}
            users = counts["all"]["users"] + counts["all"]["skipped_empty_gold"]
            seconds = entry["inference_seconds_per_1000_users"] * users / 1000.0
            result = EvaluationResult(name, frame, summary, counts, seconds, users)
            trained = TrainedMethod(None, dict(entry.get("valid") or {}), float(entry["train_seconds"]), report[name].get("info", {}))
            runs[name].append(SeedRun(int(entry["seed"]), trained, result))
    return runs


def merge_reports(config: BenchmarkConfig, sources: list[tuple[str | Path, str | Path]], out_dir: str | Path,
                  command: str | None = None) -> dict[str, Any]:
    """One report (JSON, markdown, plots) from several finished runs of the same benchmark.

    Args:
        config: the benchmark (method order, reference, bootstrap settings).
        sources: (report JSON, work_dir) of each run; a method found twice keeps its first run.
        out_dir: where ``quality-<dataset>.*`` are written.
        command: the command line, for the table.
    """
    from recsys.evaluation.report import write_markdown, write_plots

    found: dict[str, list[SeedRun]] = {}
    fingerprints = set()
    for report_path, work_dir in sources:
        fingerprints.add(json.loads(Path(report_path).read_text())["meta"]["fingerprint"])
        for name, runs in load_seed_runs(report_path, work_dir).items():
            found.setdefault(name, runs)
    if len(fingerprints) != 1:
        raise ConfigError(f"the reports come from different datasets (fingerprints {sorted(fingerprints)}); merge runs of one dataset")
    order = [m.name for m in config.methods if m.name in found] + [n for n in found if n not in {m.name for m in config.methods}]
    runs = {name: found[name] for name in order}
    first = json.loads(Path(sources[0][0]).read_text())["meta"]
    meta = {**first, "command": command, "merged_from": [str(p) for p, _ in sources],
            "complete": all(m.name in runs for m in config.methods)}
    report = build_report(config, runs, meta)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"quality-{config.dataset}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    write_markdown(report, stem.with_suffix(".md"))
    write_plots(report, out_dir, config.dataset)
    return report
