"""Merge finished quality-benchmark runs of one dataset into one report (``recsys benchmark merge``).

Command:
    recsys benchmark merge --config configs/bench-ml100k.yaml --run a/quality-ml-100k.json:runs/a --run ...

Example:
    >>> report = merge_reports(config, [("a/quality-x.json", "runs/a"), ("b/quality-x.json", "runs/b")], "out")
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError
from recsys.evaluation.aggregate import SeedRun, build_report
from recsys.evaluation.benchmark_config import BenchmarkConfig
from recsys.evaluation.methods import TrainedMethod


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
