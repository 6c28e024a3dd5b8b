"""Tuned methods of the quality benchmark: ReRe on the trained model of a supervised method (``tune: rere``).

A tuned method names its supervised starting point (``start``, a method of the same kind). For each
seed, the starting point's model of that seed is taken from ``<work_dir>/models/<start>-seed<seed>``
when its saved config equals the config it would be trained with now (so a benchmark that already
ran ``setrec`` tunes those bundles without retraining them), and trained there otherwise. The
tuning reads the train split only and keeps the step with the best valid NDCG@10
(:mod:`recsys.tuning`); the report pairs each tuned method with its starting point
(``recsys.evaluation.aggregate``).

Cost, in the method's ``info``: ``tune_seconds_per_1000_users_per_epoch`` (optimiser steps only, no
validation) next to ``supervised_seconds_per_1000_users_per_epoch`` (the starting point's whole job
over its epochs: training, per-epoch validation, the beta grid and the bundle), both per 1,000 users
with a train sequence; the supervised figure is therefore an upper bound of its training cost.

Example:
    >>> spec = MethodSpec("setrec-rere", "setrec", {"lr": 2e-5}, tune="rere", start="setrec")
    >>> trained = tune_method(spec, 0, context)   # context.methods holds "setrec"
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError
from recsys.evaluation.methods import (
    MethodContext,
    MethodSpec,
    RankingRecommender,
    TrainedMethod,
    _config,
    bundle_recommender,
    num_parameters,
    setrec_overrides,
    train_setrec,
    train_tiger,
)


def _start_spec(spec: MethodSpec, context: MethodContext) -> MethodSpec:
    start = context.methods.get(spec.start or "")
    if start is None or start.kind != spec.kind or start.tune is not None:
        raise ConfigError(f"methods[{spec.name!r}].start: {spec.start!r} must name a supervised {spec.kind} method of "
                          f"the benchmark (methods listed: {sorted(context.methods)})")
    return start


def _normalised(values: Any) -> Any:
    return json.loads(json.dumps(values, default=str))


def _per_1000_users(seconds: float, epochs: float, users: int) -> float:
    if not epochs or not users:
        return float("nan")
    return float(seconds) / float(epochs) / (users / 1000.0)


def reusable_setrec_bundle(start: MethodSpec, seed: int, context: MethodContext) -> Path | None:
    """The starting point's bundle of ``seed`` when it exists and was trained with the config of today's run."""
    from recsys.bundle import CONFIG
    from recsys.errors import SetrecError
    from recsys.training.job import BUNDLE, load_train_config

    bundle = context.work_dir / "models" / f"{start.name}-seed{seed}" / BUNDLE
    if not (bundle / "manifest.json").is_file():
        return None
    wanted = load_train_config(context.setrec_config, overrides=setrec_overrides(start, seed, context)).to_dict()
    try:  # read back through the config path: keys added since the bundle was written take their defaults
        saved = load_train_config(str(bundle / CONFIG)).to_dict()
        fingerprint = json.loads((bundle / "manifest.json").read_text()).get("dataset_fingerprint")
    except (SetrecError, OSError, json.JSONDecodeError):
        return None
    same = _normalised(saved) == _normalised(wanted) and fingerprint == context.data.fingerprint
    return bundle if same else None


def tune_setrec_method(spec: MethodSpec, seed: int, context: MethodContext) -> TrainedMethod:
    """ReRe on the set-identifier bundle of ``spec.start`` (trained first unless reusable)."""
    from recsys.bundle import load_bundle
    from recsys.training.job import RESULT
    from recsys.tuning.rere import ReReConfig
    from recsys.tuning.setrec_rere import tune_setrec

    start = _start_spec(spec, context)
    config = _config(ReReConfig, context.rere, spec.overrides, seed, f"methods[{spec.name!r}]")
    bundle = reusable_setrec_bundle(start, seed, context)
    if bundle is None:
        trained = train_setrec(start, seed, context)
        bundle = Path(trained.info["bundle_dir"])
        supervised_seconds, epochs = trained.train_seconds, trained.info.get("epochs_run") or 1
        reused = False
    else:
        recorded = json.loads((bundle.parent / RESULT).read_text())
        supervised_seconds, epochs = recorded["seconds"], recorded.get("epochs_run") or 1
        reused = True
    result = tune_setrec(bundle, context.data.root, config, context.work_dir / "models" / f"{spec.name}-seed{seed}")
    model = load_bundle(result.bundle_dir)
    users = len(context.data.train_sequences())
    info = {
        "start": start.name,
        "start_bundle": str(bundle),
        "start_reused": reused,
        "bundle_dir": str(result.bundle_dir),
        "best_step": result.best_step,
        "steps": result.steps,
        "start_valid_ndcg@10": result.start_valid_metrics.get("ndcg@10"),
        "beta": float(model.bundle.beta),
        "parameters": num_parameters(model),
        "rere": _normalised(vars(config)),
        "tune_seconds": result.tuning_seconds,
        "tune_seconds_per_1000_users_per_epoch": _per_1000_users(result.tuning_seconds, result.epochs, users),
        "supervised_seconds_per_1000_users_per_epoch": _per_1000_users(supervised_seconds, epochs, users),
        "history": result.history,
    }
    return TrainedMethod(bundle_recommender(spec.name, model), dict(result.valid_metrics), result.seconds, info)


def tune_tiger_method(spec: MethodSpec, seed: int, context: MethodContext) -> TrainedMethod:
    """ReRe on the TIGER model of ``spec.start`` (trained first unless saved with today's config and ids)."""
    import torch

    from recsys.models.tiger import TigerConfig
    from recsys.training.tiger import load_tiger
    from recsys.tuning.rere import ReReConfig
    from recsys.tuning.tiger_rere import tune_tiger

    start = _start_spec(spec, context)
    config = _config(ReReConfig, context.rere, spec.overrides, seed, f"methods[{spec.name!r}]")
    wanted = _config(TigerConfig, context.tiger, start.overrides, seed, f"methods[{start.name!r}]")
    folder = context.work_dir / "models" / f"{start.name}-seed{seed}"
    model = None
    if folder.is_dir():
        saved = load_tiger(folder)
        extra = json.loads((folder / "config.json").read_text()).get("extra", {})
        same = (_normalised(saved.config.to_dict()) == _normalised(wanted.to_dict())
                and extra.get("dataset") == context.data.fingerprint
                and context.semantic_ids is not None and torch.equal(saved.codes.cpu().long(), context.semantic_ids.cpu().long()))
        model = saved if same else None
    reused = model is not None
    if model is None:
        trained = train_tiger(start, seed, context)
        supervised_seconds, epochs = trained.train_seconds, trained.info.get("epochs_run") or 1
    else:
        extra = json.loads((folder / "config.json").read_text()).get("extra", {})
        supervised_seconds, epochs = extra.get("train_seconds", float("nan")), extra.get("epochs_run") or 1
    result = tune_tiger(folder, context.data.root, config, context.work_dir / "models" / f"{spec.name}-seed{seed}",
                        exclude_history=context.exclude_history)
    tuned = load_tiger(result.bundle_dir).eval()
    users = len(context.data.train_sequences())
    rec = RankingRecommender(spec.name, tuned.rank, tuned.num_items, max_k=tuned.config.beam_size)
    info = {
        "start": start.name,
        "start_reused": reused,
        "model_dir": str(result.bundle_dir),
        "best_step": result.best_step,
        "steps": result.steps,
        "start_valid_ndcg@10": result.start_valid_metrics.get("ndcg@10"),
        "parameters": num_parameters(tuned),
        "beam_size": tuned.config.beam_size,
        "rere": _normalised(vars(config)),
        "tune_seconds": result.tuning_seconds,
        "tune_seconds_per_1000_users_per_epoch": _per_1000_users(result.tuning_seconds, result.epochs, users),
        "supervised_seconds_per_1000_users_per_epoch": _per_1000_users(supervised_seconds, epochs, users),
        "history": result.history,
    }
    return TrainedMethod(rec, dict(result.valid_metrics), result.seconds, info)


TUNERS = {"setrec": tune_setrec_method, "tiger": tune_tiger_method}


def tune_method(spec: MethodSpec, seed: int, context: MethodContext) -> TrainedMethod:
    """Run the post-training stage of ``spec`` (``spec.tune``) for ``seed``; see the module docstring."""
    return TUNERS[spec.kind](spec, seed, context)
