"""``recsys evaluate`` and ``recsys benchmark quality``: the evaluation area's subcommands.

Commands:
    recsys evaluate --bundle bundles/setrec-ml100k --data data/ml-100k [--split test] [--no-exclude-history] [--out DIR]
    recsys benchmark quality --config configs/bench-ml100k.yaml [--seeds 3] [--out benchmarks/results]
    recsys benchmark quality --config configs/bench-ml100k.yaml --evaluation.batch_size=128 --print_config
    recsys benchmark merge --config configs/bench-ml100k.yaml --run out-a/quality-ml-100k.json:runs/a --run ... --out DIR

Each command is a :class:`recsys.config.ConfigCommand`: its settings go through the one config path
(``--config`` files, dotted keys, ``--set KEY=VALUE``, ``--print_config``; errors name the file or flag
and the key).

``recsys evaluate`` also accepts a saved SASRec (``save_sasrec``) or TIGER (``save_tiger``)
folder as ``--bundle``; the kind is read from the folder's files. History items are excluded
from the ranking by default, as in the training job (``exclude_history: true``), the
benchmark harness and the README's results; ``--no-exclude-history`` leaves them rankable.
A model that records another dataset fingerprint than ``--data`` (or none) is refused unless
``--allow-other-data`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from recsys.config import ConfigCommand
from recsys.errors import ArtifactError, ConfigError


@dataclass
class EvaluateConfig:
    """Settings of ``recsys evaluate`` (parsed through :mod:`recsys.config`)."""

    bundle: str
    """Model bundle folder (set identifiers), or a saved SASRec / TIGER folder."""
    data: str
    """Prepared dataset folder the model was trained on."""
    split: Literal["valid", "test"] = "test"
    """Split to evaluate."""
    exclude_history: bool = True
    """Never rank the user's history items (gold items stay rankable). Default: excluded, as in the training job
    (exclude_history: true), the benchmark harness and every results table of the README; --no-exclude-history
    leaves them rankable (lower numbers, not comparable with those tables)."""
    allow_other_data: bool = False
    """Evaluate although the model records another dataset fingerprint than --data (or none); refused by default,
    since the numbers would mean nothing; the output records the override (--allow-other-data)."""
    batch_size: int = 256
    """Users per model call."""
    out: str | None = None
    """Folder for per_user.parquet, summary.json and summary.md."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")


#: The documented flags of ``recsys evaluate`` -> EvaluateConfig keys (a target with "=" is a switch).
EVALUATE_FLAGS = {
    "--exclude-history": "exclude_history=true",
    "--no-exclude-history": "exclude_history=false",
    "--allow-other-data": "allow_other_data=true",
    "--batch-size": "batch_size",
}
EVALUATE = ConfigCommand(
    "recsys evaluate", EvaluateConfig,
    "Full-ranking Recall/NDCG/HR/MRR@5/10/20 of one model, overall and per group (warm/cold gold items, popularity "
    "terciles, history-length buckets): --bundle, --data, --split, --out.",
    EVALUATE_FLAGS,
)


def parse_evaluate_args(argv: list[str]) -> EvaluateConfig:
    """``recsys evaluate`` arguments -> EvaluateConfig, through the one config path.

    Example:
        >>> parse_evaluate_args(["--bundle", "b", "--data", "d", "--no-exclude-history"]).exclude_history
        False
    """
    return EVALUATE.parse(argv)[0]


#: ``recsys benchmark quality``: its command options are read first (``--seeds N`` takes the first N seeds of
#: the config; the config key ``seeds`` is set with ``--set seeds=[0,1]``; ``--methods`` picks methods by name).
QUALITY = ConfigCommand(
    "recsys benchmark quality", "recsys.evaluation.benchmark_config:BenchmarkConfig",
    "Train every method of a benchmark config with several seeds and compare them in one harness.",
    options=(
        ("--seeds", {"type": int, "default": None, "help": "use the first N seeds of the config (default: all)"}),
        ("--out", {"default": "benchmarks/results", "help": "folder of quality-<dataset>.json/.md/.png"}),
        ("--methods", {"default": None, "help": "comma-separated subset of the config's method names"}),
        ("--work-dir", {"default": None, "help": "override the config's work_dir"}),
        ("--no-mlflow", {"action": "store_true", "help": "do not log to MLflow"}),
    ),
    config_example="configs/bench-ml100k.yaml",
)


def merge_options(parser) -> None:
    """The options of ``recsys benchmark merge`` that are not config keys."""
    parser.add_argument("--run", action="append", required=True, metavar="REPORT.json:WORK_DIR",
                        help="a finished run: its quality-<dataset>.json and its work_dir (repeat)")
    parser.add_argument("--out", default="benchmarks/results", help="folder of the merged quality-<dataset>.json/.md/.png")


#: ``recsys benchmark merge``: the config is the benchmark YAML the runs came from.
MERGE = ConfigCommand(
    "recsys benchmark merge", "recsys.evaluation.benchmark_config:BenchmarkConfig",
    "Combine finished quality runs of one dataset (methods run as separate processes) into one report: "
    "--run REPORT.json:WORK_DIR (repeat), --out DIR.",
    extra=merge_options,
    config_example="configs/bench-ml100k.yaml",
)


def _subcommands(subparsers, name: str, help_text: str):
    """The sub-subparsers of ``name``, shared with another area that registered it first."""
    existing = subparsers.choices.get(name)
    if existing is not None:
        for action in existing._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action
    parser = subparsers.add_parser(name, help=help_text)
    return parser.add_subparsers(dest=f"{name}_command", metavar="BENCHMARK", required=True)


def register(subparsers) -> None:
    """Add ``evaluate`` and ``benchmark quality``."""
    EVALUATE.add_to(subparsers, "evaluate",
                    "evaluate one trained model on a prepared dataset (full ranking, groups, per-user Parquet)",
                    run_evaluate, parse_evaluate_args)
    bench = _subcommands(subparsers, "benchmark", "run benchmarks (quality: every method in one harness, several seeds)")
    QUALITY.add_to(bench, "quality", "train every method of a config with several seeds and compare them in one harness",
                   run_quality, parse_quality_args)
    MERGE.add_to(bench, "merge", "combine finished quality runs of one dataset (methods run as separate processes)",
                 run_merge, parse_merge_args)


def load_recommender(path: str | Path):
    """A :class:`Recommender` for a saved model folder: set-identifier bundle, SASRec or TIGER.

    Raises:
        ArtifactError: the folder holds none of them.
    """
    from recsys.evaluation.methods import bundle_recommender
    from recsys.evaluation.recommenders import RankingRecommender, ScoringRecommender

    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a folder; give a model bundle (set identifiers) or a saved SASRec / TIGER folder")
    if (path / "manifest.json").is_file():
        from recsys.bundle import load_bundle

        return bundle_recommender("setrec", load_bundle(path))
    if (path / "codes.safetensors").is_file():
        from recsys.training.tiger import load_tiger

        model = load_tiger(path)
        return RankingRecommender("tiger", model.rank, model.num_items, max_k=model.config.beam_size)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        from recsys.models.sasrec import SASRec
        from recsys.training.sasrec import load_sasrec

        model, config = load_sasrec(path)
        return ScoringRecommender("sasrec", lambda h: model.score(SASRec.pad_histories(h, config.max_len)), model.num_items)
    raise ArtifactError(
        f"{path} holds no model: expected manifest.json (bundle), codes.safetensors (TIGER) or config.json + "
        "model.safetensors (SASRec)"
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``recsys evaluate``."""
    from recsys.evaluation.evaluate import evaluate
    from recsys.evaluation.groups import ItemGroups
    from recsys.evaluation.report import summary_markdown
    from recsys.pipelines.prepared import PreparedDataset

    args = parse_evaluate_args(args.argv)
    from recsys.evaluation.evaluate import check_same_dataset, recorded_dataset_fingerprint

    data = PreparedDataset.load(args.data)
    recommender = load_recommender(args.bundle)
    dataset_check = check_same_dataset(args.bundle, recorded_dataset_fingerprint(args.bundle), args.data, data.fingerprint,
                                       allow=args.allow_other_data)
    if dataset_check["override"]:
        print(f"warning: --allow-other-data: the model records dataset fingerprint "
              f"{dataset_check['model']}, {args.data} has {dataset_check['data']}; the numbers below are not those of "
              "the data the model was trained on", file=sys.stderr)
    if recommender.num_items != data.num_items:
        raise ArtifactError(
            f"{args.bundle} scores {recommender.num_items} items but {args.data} has {data.num_items}; "
            "evaluate a model on the dataset it was trained on"
        )
    examples = data.eval_examples(args.split)
    if len(examples) == 0:
        raise ArtifactError(f"{args.data}: the {args.split} split has no user with a history and a gold item")
    result = evaluate(recommender, examples, ItemGroups.from_dataset(data), exclude_history=args.exclude_history,
                      batch_size=args.batch_size)
    history = ("history items excluded from the ranking (the default)" if args.exclude_history
               else "history items rankable (--no-exclude-history)")
    table = summary_markdown(result.summary, result.counts) + f"\n{args.split} split, {history}.\n"
    print(f"{recommender.name} on {args.data} ({args.split}, {result.num_users} users, "
          f"{'history excluded' if args.exclude_history else 'history rankable'}): "
          f"{result.seconds_per_1000_users:.3f} s inference per 1,000 users")
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        result.per_user.write_parquet(out / "per_user.parquet")
        (out / "summary.json").write_text(json.dumps({
            "method": recommender.name, "bundle": str(args.bundle), "data": str(args.data), "split": args.split,
            "exclude_history": args.exclude_history, "dataset_check": dataset_check,
            "users": result.num_users, "summary": result.summary,
            "counts": result.counts, "inference_seconds_per_1000_users": result.seconds_per_1000_users,
        }, indent=2, default=lambda v: None))
        (out / "summary.md").write_text(table)
        print(f"wrote {out / 'per_user.parquet'}, {out / 'summary.json'}, {out / 'summary.md'}")
    return 0


def parse_quality_args(argv: list[str]):
    """``recsys benchmark quality`` arguments -> (validated BenchmarkConfig, command options).

    Example:
        >>> config, options = parse_quality_args(["--config", "configs/bench-ml100k.yaml", "--seeds", "1"])
    """
    return QUALITY.parse(argv)


def parse_merge_args(argv: list[str]):
    """``recsys benchmark merge`` arguments -> (validated BenchmarkConfig, namespace with ``run`` and ``out``).

    Example:
        >>> config, options = parse_merge_args(["--config", "configs/bench-ml100k.yaml", "--run", "a.json:runs/a"])
    """
    return MERGE.parse(argv)


def run_quality(args: argparse.Namespace) -> int:
    """Handler of ``recsys benchmark quality``."""
    from recsys.evaluation.benchmark import run_benchmark

    config, options = parse_quality_args(args.argv)
    if options.seeds is not None:
        if not 1 <= options.seeds <= len(config.seeds):
            raise ConfigError(f"--seeds must lie in 1..{len(config.seeds)} (the config lists seeds {config.seeds})")
        config.seeds = config.seeds[: options.seeds]
    run_only = None
    if options.methods:
        wanted = [name.strip() for name in options.methods.split(",") if name.strip()]
        known = {m.name: m for m in config.methods}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise ConfigError(f"--methods: {unknown} are not in the config (methods: {sorted(known)})")
        # the starting points of listed tuned methods and the methods they are compared to stay in the config (saved
        # models are reused, not rerun; merge the runs for the paired intervals)
        needed = set(wanted) | {other for name in wanted for other in (known[name].start, known[name].compare_to) if other}
        config.methods = [m for m in config.methods if m.name in needed]
        run_only = [m.name for m in config.methods if m.name in wanted]
    if options.work_dir:
        config.work_dir = options.work_dir
    command = "recsys benchmark quality " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["benchmark", "quality"] else None
    report = run_benchmark(config, out_dir=options.out, log_to_mlflow=not options.no_mlflow, command=command, run_only=run_only)
    eff = report.get("efficiency") or {}
    print(f"{len(run_only or config.methods)} methods x {len(config.seeds)} seeds on {config.dataset} in {report['meta']['seconds']} s"
          + (f"; beam search / set identifiers inference time: {eff['beam_over_reference']:.1f}x" if eff else ""))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    """Handler of ``recsys benchmark merge``."""
    from recsys.evaluation.benchmark import merge_reports
    from recsys.evaluation.report import methods_of

    config, args = parse_merge_args(args.argv)
    sources = []
    for item in args.run:
        report, sep, work = item.rpartition(":")
        if not sep or not Path(report).is_file() or not Path(work).is_dir():
            raise ConfigError(f"--run {item!r}: give REPORT.json:WORK_DIR of a finished run (both must exist)")
        sources.append((report, work))
    command = "recsys benchmark merge " + " ".join(sys.argv[3:]) if sys.argv[1:3] == ["benchmark", "merge"] else None
    report = merge_reports(config, sources, args.out, command=command)
    print(f"merged {len(sources)} runs: methods {methods_of(report)}")
    return 0
