"""``recsys data prepare`` and ``recsys data stats``: the pipelines' subcommands.

Commands:
    recsys data prepare --source ml-100k --out data/ml-100k
    recsys data prepare --source ../shared/data/amazon-industrial --out data/ai --kcore 0
    recsys data stats data/ml-100k
"""

from __future__ import annotations

import argparse

from recsys.config import ConfigCommand

#: ``recsys data prepare``: its documented hyphenated flags are aliases of PrepareConfig keys spelt with "_".
PREPARE = ConfigCommand(
    "recsys data prepare", "recsys.pipelines.prepare:PrepareConfig",
    "Read a source, check and clean it, split it and write a prepared dataset directory (e.g. --source ml-100k "
    "--out data/ml-100k --kcore 0).",
    {"--min-rating": "min_rating", "--on-bad-rows": "on_bad_rows", "--valid-fraction": "valid_fraction",
     "--test-fraction": "test_fraction", "--max-text-chars": "max_text_chars", "--catalogue-only": "catalogue_only"},
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data prepare`` and ``data stats`` to the ``recsys`` parser.

    ``data prepare`` parses its arguments through :mod:`recsys.config` (``config_args=parse_prepare_args``).
    """
    data = subparsers.add_parser("data", help="prepare datasets and show their statistics")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    PREPARE.add_to(actions, "prepare", "turn a source into a prepared dataset (Parquet tables + manifest.json)",
                   run_prepare, parse_prepare_args)

    stats = actions.add_parser("stats", help="print the statistics of a prepared dataset")
    stats.add_argument("dir", help="a directory written by `recsys data prepare`")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=run_stats)


def parse_prepare_args(argv: list[str]):
    """``recsys data prepare`` arguments -> PrepareConfig, through the one config path.

    Example:
        >>> parse_prepare_args(["--source", "ml-100k", "--out", "data/ml-100k", "--kcore", "0"]).kcore
        0
    """
    return PREPARE.parse(argv)[0]


def run_prepare(args: argparse.Namespace) -> int:
    """Handler of ``recsys data prepare``."""
    from recsys.pipelines.prepare import prepare

    config = parse_prepare_args(args.argv)
    import sys

    manifest = prepare(config)
    counts = manifest["counts"]
    dropped = ", ".join(f"{k} {v:,}" for k, v in counts["rows_dropped"].items()) or "none"
    print(
        f"prepared {config.out} ({manifest['source']['format']}, fingerprint {manifest['fingerprint']}): "
        f"{counts['users']:,} users, {counts['items']:,} items ({counts['cold_items']:,} cold), "
        f"{counts['interactions']:,} interactions of {counts['rows_read']:,} read; dropped: {dropped}; "
        f"{manifest['seconds']} s"
    )
    time = manifest["source"].get("time") or {}
    if time:
        print(f"time column {time.get('column')!r}: {time.get('kind')}, ts in {time.get('unit')} "
              f"(unit from the {time.get('unit_from')})")
    if "kcore_removed_per_split" in counts:
        removed = counts["kcore_removed_per_split"]
        print(f"split: as given by the source; the k-core removed {removed['train']:,} train, {removed['valid']:,} valid "
              f"and {removed['test']:,} test rows of it (--kcore 0 keeps the split exactly as given)")
    for warning in manifest.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def run_stats(args: argparse.Namespace) -> int:
    """Handler of ``recsys data stats``."""
    import json

    from recsys.pipelines.stats import dataset_stats, format_stats

    table = dataset_stats(args.dir)
    print(json.dumps(table, indent=2) if args.json else format_stats(table, title=args.dir))
    return 0
