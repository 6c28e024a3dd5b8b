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

Modules, one concern each: :mod:`~recsys.evaluation.benchmark_config` (the YAML),
:mod:`~recsys.evaluation.artifacts` (dataset and tokenizer artifacts), :mod:`~recsys.evaluation.methods`
(training one method), :mod:`~recsys.evaluation.aggregate` (intervals, paired comparisons, the report),
:mod:`~recsys.evaluation.report` (markdown, plots), :mod:`~recsys.evaluation.merge` (combining runs);
MLflow goes through :class:`recsys.tracking.RunTree`. This module runs them in order.

Example:
    >>> config = load_benchmark_config("configs/bench-ml100k.yaml", overrides={"seeds": [0]})
    >>> report = run_benchmark(config, out_dir=Path("benchmarks/results"))
    >>> report["setrec"]["ndcg@10"]["mean"], report["efficiency"]["beam_over_reference"]
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from recsys.evaluation.aggregate import (  # noqa: F401  (the benchmark's public API, re-exported)
    GROUP_METRICS,
    SeedRun,
    build_report,
    efficiency,
    jsonable,
    paired_comparisons,
    report_metrics,
    seed_averaged,
    summarise_method,
)
from recsys.evaluation.artifacts import TEXT_KINDS, prepare_artifacts, refuse_text_methods  # noqa: F401
from recsys.evaluation.benchmark_config import (  # noqa: F401
    RESERVED_KEYS,
    BenchmarkConfig,
    DataSpec,
    EvaluationSpec,
    SemanticIdSpec,
    SetRecSpec,
    load_benchmark_config,
    parse_benchmark_config,
)
from recsys.evaluation.merge import load_seed_runs, merge_reports  # noqa: F401
from recsys.evaluation.methods import train_method
from recsys.tracking import RunTree, git_commit

EXPERIMENT = "benchmark-quality"


def run_benchmark(
    config: BenchmarkConfig,
    out_dir: str | Path = "benchmarks/results",
    log_to_mlflow: bool = True,
    log=print,
    command: str | None = None,
    run_only: list[str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every method with every seed; write JSON, markdown and plots.

    Args:
        config: the benchmark.
        out_dir: where ``quality-<dataset>.json``, ``.md`` and ``.png`` files go.
        log_to_mlflow: one parent run (experiment ``benchmark-quality``) with a nested run per method and seed.
        log: progress printer.
        command: the command line that started the run (written into the report and table).
        run_only: names of the methods to run (None: all); the others stay in the config, so a tuned method's
            ``start`` is known (its saved model is reused) without being run.

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
    tracker = RunTree(log_to_mlflow, EXPERIMENT, f"quality-{config.dataset}", jsonable(dataclasses.asdict(config)))
    status = "FAILED"
    try:
        context = prepare_artifacts(config, log)
        data = context.data
        examples = data.eval_examples(config.evaluation.split)
        groups = ItemGroups.from_dataset(data)
        per_user_dir = Path(config.work_dir) / "per_user"
        per_user_dir.mkdir(parents=True, exist_ok=True)
        all_runs: dict[str, list[SeedRun]] = {}
        selected = [spec for spec in config.methods if run_only is None or spec.name in run_only]
        for spec in selected:
            if spec.start and spec.start not in {s.name for s in selected}:
                log(f"{spec.name}: its start {spec.start!r} is not run here; the tuned-minus-start interval needs both "
                    f"runs: recsys benchmark merge --run <this report>:<work_dir> --run <{spec.start}'s report>:<same work_dir>")
        for spec in selected:
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
                    metrics |= {f"test_cold_only/{k}": v for k, v in result.summary.get("cold_only", {}).items()}
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
                                   complete=spec is selected[-1], refused=context.refused)
        report = json.loads(files[0].read_text())
        if tracker.enabled:
            flat = {}
            for name in all_runs:
                for key in ("ndcg@10", "recall@10", "recall@20", "cold/recall@20", "cold_only/recall@20"):
                    if report[name].get(key, {}).get("mean") is not None:
                        flat[f"{name}/{key}"] = report[name][key]["mean"]
                flat[f"{name}/inference_seconds_per_1000_users"] = report[name]["inference_seconds_per_1000_users"]
            if report["efficiency"]:
                flat["beam_over_reference"] = report["efficiency"]["beam_over_reference"]
            tracker.log_metrics(tracker.parent, flat)
            for file in files:
                tracker.log_artifact(tracker.parent, file)
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
        "config": jsonable(dataclasses.asdict(config)),
        "mlflow_parent_run": tracker.parent,
        "git_commit": git_commit(),
        "refused_methods": refused or {},
    }
    report = build_report(config, all_runs, meta)
    stem = out_dir / f"quality-{config.dataset}"
    json_path = stem.with_suffix(".json")
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(json_path)
    return [json_path, write_markdown(report, stem.with_suffix(".md")), *write_plots(report, out_dir, config.dataset)]
