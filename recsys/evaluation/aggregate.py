"""The quality benchmark's numbers: seed-averaged per-user metrics, bootstrap intervals, paired comparisons.

Per method, per-user metrics are averaged over seeds and summarised as a mean with a 95% bootstrap
interval over users; the reference method is compared with every other method by a paired
bootstrap on the same users; the efficiency entry is the beam-search / set-identifier time ratio.

Example:
    >>> report = build_report(config, {"setrec": [SeedRun(0, trained, result)]}, meta={})
    >>> report["setrec"]["ndcg@10"]["mean"]
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.evaluation.benchmark_config import BenchmarkConfig
from recsys.evaluation.groups import PROTOCOL_GROUPS
from recsys.evaluation.methods import TrainedMethod

#: Item-group metrics reported besides the whole-population ones.
GROUP_METRICS = ("recall",)


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

    ``cold/`` and ``warm/`` keys rank over the full catalogue; ``cold_only/`` and ``warm_only/`` rank a
    cold (warm) gold item among the cold (warm) items only (``recsys.evaluation.groups.PROTOCOL_GROUPS``).

    Example:
        >>> report_metrics([10])[:2]   # [("recall@10", "all", "recall@10"), ("ndcg@10", "all", "ndcg@10")]
    """
    from recsys.evaluation.metrics import metric_keys

    keys = [(name, "all", name) for name in metric_keys(tuple(ks))]
    keys += [(f"cold/{m}@{k}", "cold", f"{m}@{k}") for k in ks for m in GROUP_METRICS]
    keys += [(f"warm/{m}@{k}", "warm", f"{m}@{k}") for k in ks for m in GROUP_METRICS]
    # the SETRec paper's protocol: cold gold ranked among cold items only, warm among warm only
    keys += [(f"{g}/{m}@{k}", g, f"{m}@{k}") for g in PROTOCOL_GROUPS for k in ks for m in GROUP_METRICS]
    return keys


def has_group(runs: list[SeedRun], group: str) -> bool:
    """True when every run's evaluation has ``group`` (per-user files of older runs lack ``cold_only``/``warm_only``)."""
    return all(group in run.result.summary for run in runs)


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
        if not has_group(runs, group):  # per-user files written before the group existed
            continue
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
    out["skipped_empty_gold"] = {g: c["skipped_empty_gold"] for g, c in runs[0].result.counts.items()
                                 if g in ("all", "cold", "warm", *PROTOCOL_GROUPS)}
    out["info"] = jsonable(runs[0].trained.info)
    return out


def _paired(a: list[SeedRun], b: list[SeedRun], ks: list[int], samples: int, p_key: str) -> dict[str, Any]:
    """Paired bootstrap of ``a`` minus ``b`` on the same users (seed-averaged), for every metric both report."""
    from recsys.evaluation.bootstrap import paired_bootstrap

    keys = [(f"{m}@{k}", "all", f"{m}@{k}") for k in ks for m in ("ndcg", "recall")]
    keys += [(f"cold/recall@{k}", "cold", f"recall@{k}") for k in ks]
    keys += [(f"cold_only/recall@{k}", "cold_only", f"recall@{k}") for k in ks]
    out: dict[str, Any] = {}
    for key, group, metric in keys:
        if not (has_group(a, group) and has_group(b, group)):
            continue
        result = paired_bootstrap(seed_averaged(a, group, metric), seed_averaged(b, group, metric), num_samples=samples)
        out[key] = {"diff": _finite(result["diff"]), "ci": [_finite(v) for v in result["ci"]],
                    p_key: _finite(result["p_a_not_better"]), "users": result["users"]}
    return out


def paired_comparisons(all_runs: dict[str, list[SeedRun]], reference: str, ks: list[int], samples: int) -> dict[str, Any]:
    """Paired bootstrap of reference minus every other method on the same users (seed-averaged)."""
    if reference not in all_runs:
        return {}
    return {name: _paired(all_runs[reference], runs, ks, samples, "p_reference_not_better")
            for name, runs in all_runs.items() if name != reference}


def tuned_comparisons(starts: dict[str, str], all_runs: dict[str, list[SeedRun]], ks: list[int], samples: int) -> dict[str, Any]:
    """Paired bootstrap of every tuned method minus its supervised starting point (``starts``: tuned -> start).

    ``p_tuned_not_better`` is the share of resamples where the tuned method is not ahead.
    """
    return {name: {"start": start, "vs": _paired(all_runs[name], all_runs[start], ks, samples, "p_tuned_not_better")}
            for name, start in starts.items() if name in all_runs and start in all_runs}


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


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (anything else as its ``str``)."""
    return json.loads(json.dumps(value, default=str))


def build_report(config: BenchmarkConfig, all_runs: dict[str, list[SeedRun]], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: one entry per method, then ``paired``, ``tuned`` (tuned methods minus their starting points,
    when the config has tuned methods), ``compared`` (methods minus their ``compare_to``, when given), ``efficiency``,
    ``seeds`` and ``meta``."""
    ks, samples = list(config.evaluation.ks), config.evaluation.bootstrap_samples
    report: dict[str, Any] = {name: summarise_method(runs, ks, samples) for name, runs in all_runs.items()}
    report["paired"] = {"reference": config.reference, "vs": paired_comparisons(all_runs, config.reference, ks, samples)}
    starts = {m.name: m.start for m in config.methods if m.tune is not None}
    if starts:
        report["tuned"] = tuned_comparisons(starts, all_runs, ks, samples)
    against = {m.name: m.compare_to for m in config.methods if m.compare_to is not None}
    if against:
        report["compared"] = {name: {"against": other, "vs": _paired(all_runs[name], all_runs[other], ks, samples,
                                                                      "p_method_not_better")}
                              for name, other in against.items() if name in all_runs and other in all_runs}
    report["efficiency"] = efficiency(report, config.reference, config.beam_method)
    report["seeds"] = {
        name: [{"seed": run.seed, "test": run.result.summary["all"], "cold": run.result.summary.get("cold", {}),
                "cold_only": run.result.summary.get("cold_only", {}),
                "valid": run.trained.valid_metrics, "inference_seconds_per_1000_users": run.result.seconds_per_1000_users,
                "train_seconds": run.trained.train_seconds}
               for run in runs]
        for name, runs in all_runs.items()
    }
    report["meta"] = meta
    return jsonable(report)
