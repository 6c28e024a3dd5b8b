"""Human-readable outputs of evaluations: markdown tables and PNG plots.

- :func:`summary_markdown`: one model's summary (``recsys evaluate``): a row per group.
- :func:`benchmark_markdown` / :func:`write_markdown`: the quality benchmark's table (mean
  and 95% interval per method), the paired differences against the reference method and
  the efficiency ratio.
- :func:`write_plots`: metric bars with intervals, and inference time against NDCG@10.

Example:
    >>> write_markdown(report, Path("benchmarks/results/quality-ml-100k.md"))
    >>> write_plots(report, Path("benchmarks/results"), "ml-100k")   # two PNG paths
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

#: Columns of the benchmark table (report key, header). Every header names its protocol: the
#: candidates a gold item is ranked among ("all items": the full catalogue; "cold items only" /
#: "warm items only": the SETRec paper's cold-start protocol, ``recsys.evaluation.groups``).
TABLE_COLUMNS = (
    ("ndcg@10", "NDCG@10 (all items)"),
    ("recall@10", "Recall@10 (all items)"),
    ("mrr@10", "MRR@10 (all items)"),
    ("ndcg@20", "NDCG@20 (all items)"),
    ("recall@20", "Recall@20 (all items)"),
    ("cold/recall@20", "cold Recall@20 (all items)"),
    ("cold_only/recall@20", "cold Recall@20 (cold items only)"),
    ("warm_only/recall@20", "warm Recall@20 (warm items only)"),
)
PLOT_METRICS = ("ndcg@10", "recall@10", "recall@20", "cold/recall@20", "cold_only/recall@20")
NON_METHOD_KEYS = ("meta", "paired", "tuned", "compared", "efficiency", "seeds")


def methods_of(report: dict[str, Any]) -> list[str]:
    """Method names of a benchmark report, in report order."""
    return [key for key in report if key not in NON_METHOD_KEYS]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("mean") is None:
        return "n/a"
    lo, hi = entry["ci"]
    return f"{_fmt(entry['mean'])} [{_fmt(lo)}, {_fmt(hi)}]"


def _diff_cell(diffs: dict[str, Any], key: str) -> str:
    """``+0.0012 [lo, hi]`` of a paired comparison's ``key``, or ``n/a`` when it has none."""
    item = diffs.get(key, {})
    if item.get("diff") is None:
        return "n/a"
    return f"{item['diff']:+.4f} [{_fmt(item['ci'][0])}, {_fmt(item['ci'][1])}]"


def benchmark_markdown(report: dict[str, Any], command: str | None = None) -> str:
    """The benchmark table as markdown.

    Args:
        report: the JSON report of :func:`recsys.evaluation.benchmark.run_benchmark`.
        command: the command that produced it (written above the table).
    """
    meta = report.get("meta", {})
    lines = []
    if command:
        lines += [f"Command: `{command}`", ""]
    if meta:
        lines += [
            f"Dataset {meta.get('dataset')} (fingerprint {meta.get('fingerprint')}): {meta.get('users')} users, "
            f"{meta.get('items')} items; {meta.get('evaluated_users')} users evaluated on the {meta.get('split')} split; "
            f"seeds {meta.get('seeds')}; full ranking over the catalogue"
            f"{', history items excluded' if meta.get('exclude_history') else ''}. "
            f"Cells: mean [95% bootstrap interval over users] of the seed-averaged per-user metric. "
            f"Each header names the items a gold item is ranked among: all items (full catalogue), or, "
            f"for the SETRec paper's cold-start protocol, cold items only (a cold gold item) / warm items only (a warm one).",
            "",
        ]
    header = ["method", *(h for _, h in TABLE_COLUMNS), "s / 1000 users", "train s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in methods_of(report):
        entry = report[name]
        cells = [name, *(_cell(entry.get(key)) for key, _ in TABLE_COLUMNS),
                 _fmt(entry.get("inference_seconds_per_1000_users"), 3), _fmt(entry.get("train_seconds"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    cold_users = {name: report[name].get("cold/recall@20", {}).get("users") for name in methods_of(report)}
    if cold_users:
        lines += ["", f"Users with a cold gold item: {max((u or 0) for u in cold_users.values())}."]
    paired = report.get("paired", {})
    if paired.get("vs"):
        ref = paired["reference"]
        lines += ["", f"Paired bootstrap, {ref} minus each method (same users; 95% interval; "
                      "p = share of resamples where the difference is <= 0):", ""]
        lines += ["| vs | NDCG@10 diff (all items) | Recall@10 diff (all items) | cold Recall@20 diff (all items) | "
                  "cold Recall@20 diff (cold items only) | p (NDCG@10) |", "|---|---|---|---|---|---|"]
        for name, diffs in paired["vs"].items():
            lines.append(f"| {name} | {_diff_cell(diffs, 'ndcg@10')} | {_diff_cell(diffs, 'recall@10')} | {_diff_cell(diffs, 'cold/recall@20')} | {_diff_cell(diffs, 'cold_only/recall@20')} | "
                         f"{_fmt(diffs.get('ndcg@10', {}).get('p_reference_not_better'), 3)} |")
    tuned = report.get("tuned", {})
    if tuned:
        lines += ["", "Tuned methods minus their supervised starting points (paired bootstrap, same users; 95% interval; "
                      "p = share of resamples where the tuned method is not ahead):", "",
                  "| tuned | start | NDCG@10 diff | Recall@20 diff | p (NDCG@10) | tuning s / 1000 users / epoch | "
                  "supervised s / 1000 users / epoch |", "|---|---|---|---|---|---|---|"]
        for name, entry in tuned.items():
            diffs, info = entry.get("vs", {}), report.get(name, {}).get("info", {})

            lines.append(f"| {name} | {entry.get('start')} | {_diff_cell(diffs, 'ndcg@10')} | {_diff_cell(diffs, 'recall@20')} | "
                         f"{_fmt(diffs.get('ndcg@10', {}).get('p_tuned_not_better'), 3)} | "
                         f"{_fmt(info.get('tune_seconds_per_1000_users_per_epoch'), 1)} | "
                         f"{_fmt(info.get('supervised_seconds_per_1000_users_per_epoch'), 1)} |")
    compared = report.get("compared", {})
    if compared:
        lines += ["", "Methods minus the method they are compared to (paired bootstrap, same users; 95% interval; "
                      "p = share of resamples where the method is not ahead):", "",
                  "| method | against | NDCG@10 diff | Recall@20 diff | p (NDCG@10) |", "|---|---|---|---|---|"]
        for name, entry in compared.items():
            diffs = entry.get("vs", {})

            lines.append(f"| {name} | {entry.get('against')} | {_diff_cell(diffs, 'ndcg@10')} | {_diff_cell(diffs, 'recall@20')} | "
                         f"{_fmt(diffs.get('ndcg@10', {}).get('p_method_not_better'), 3)} |")
    eff = report.get("efficiency", {})
    if eff:
        lines += ["", f"Inference (batched, per 1,000 users): {eff['reference']} {_fmt(eff['reference_seconds_per_1000_users'], 3)} s, "
                      f"{eff['beam_method']} (beam {eff.get('beam_size')}) {_fmt(eff['beam_seconds_per_1000_users'], 3)} s: "
                      f"beam search takes {_fmt(eff['beam_over_reference'], 1)}x as long. Backbones "
                      f"{'equal' if eff.get('equal_backbone') else 'NOT equal'}: {eff['reference']} {eff.get('reference_backbone')}, "
                      f"{eff['beam_method']} {eff.get('beam_backbone')}."]
    return "\n".join(lines) + "\n"


def write_markdown(report: dict[str, Any], path: str | Path, command: str | None = None) -> Path:
    """Write :func:`benchmark_markdown` to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(benchmark_markdown(report, command or report.get("meta", {}).get("command")))
    return path


def write_plots(report: dict[str, Any], out_dir: str | Path, dataset: str) -> list[Path]:
    """Two PNGs: ``quality-<dataset>-metrics.png`` (bars with 95% intervals) and
    ``quality-<dataset>-efficiency.png`` (inference seconds per 1,000 users, log scale, vs NDCG@10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir = Path(out_dir)
    methods = methods_of(report)
    bars = out_dir / f"quality-{dataset}-metrics.png"
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(methods) + 2), 4.2))
    width = 0.8 / len(PLOT_METRICS)
    x = np.arange(len(methods))
    for j, key in enumerate(PLOT_METRICS):
        means, errors = [], [[], []]
        for name in methods:
            entry = report[name].get(key) or {}
            mean = entry.get("mean")
            lo, hi = entry.get("ci", [None, None])
            means.append(0.0 if mean is None else mean)
            errors[0].append(0.0 if mean is None or lo is None else max(mean - lo, 0.0))
            errors[1].append(0.0 if mean is None or hi is None else max(hi - mean, 0.0))
        ax.bar(x + (j - (len(PLOT_METRICS) - 1) / 2) * width, means, width, yerr=errors, capsize=2, label=key)
    ax.set_xticks(x, methods, rotation=25, ha="right")
    ax.set_ylabel("metric (95% bootstrap interval)")
    ax.set_title(f"{dataset}: test metrics, mean over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(bars, dpi=120)
    plt.close(fig)

    scatter = out_dir / f"quality-{dataset}-efficiency.png"
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for name in methods:
        entry = report[name]
        ndcg = entry.get("ndcg@10") or {}
        seconds = entry.get("inference_seconds_per_1000_users")
        if ndcg.get("mean") is None or not seconds:
            continue
        lo, hi = ndcg["ci"]
        ax.errorbar([seconds], [ndcg["mean"]], yerr=[[ndcg["mean"] - lo], [hi - ndcg["mean"]]], fmt="o", capsize=3)
        ax.annotate(name, (seconds, ndcg["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("inference seconds per 1,000 users (batched, log scale)")
    ax.set_ylabel("NDCG@10 (95% interval)")
    ax.set_title(f"{dataset}: quality vs inference cost")
    fig.tight_layout()
    fig.savefig(scatter, dpi=120)
    plt.close(fig)
    return [bars, scatter]


def summary_markdown(summary: dict[str, dict[str, float]], counts: dict[str, dict[str, int]], ks=(5, 10, 20)) -> str:
    """One model's summary (``recsys evaluate``): a row per group, Recall/NDCG/HR/MRR at each k.

    Example:
        >>> print(summary_markdown(result.summary, result.counts))
    """
    from recsys.evaluation.groups import ranked_among

    keys = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hr", "mrr")]
    lines = ["| group | ranked among | users | skipped | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 4)]
    for group, values in summary.items():
        count = counts.get(group, {})
        lines.append(f"| {group} | {ranked_among(group)} | {count.get('users', 0)} | {count.get('skipped_empty_gold', 0)} | "
                     + " | ".join(_fmt(values.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"
