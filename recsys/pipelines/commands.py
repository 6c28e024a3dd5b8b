"""``recsys data prepare`` and ``recsys data stats``: the pipelines' subcommands.

Commands:
    recsys data prepare --source ml-100k --out data/ml-100k
    recsys data prepare --source ../shared/data/amazon-industrial --out data/ai --kcore 0
    recsys data stats data/ml-100k
"""

from __future__ import annotations

import argparse

FORMATS = ("auto", "movielens-100k", "movielens-dat", "recbole", "amazon2018", "amazon2023", "generic")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data prepare`` and ``data stats`` to the ``recsys`` parser."""
    data = subparsers.add_parser("data", help="prepare datasets and show their statistics")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    prep = actions.add_parser(
        "prepare",
        help="turn a source into a prepared dataset (Parquet tables + manifest.json)",
        description="Read a source, check and clean it, split it and write a prepared dataset directory.",
    )
    prep.add_argument("--source", required=True, help="a directory or file, or 'ml-100k' (embedded default)")
    prep.add_argument("--out", required=True, help="output directory (replaced atomically if it is a prepared dataset)")
    prep.add_argument("--format", default="auto", choices=FORMATS, help="source format (default: detect)")
    prep.add_argument("--kcore", type=int, default=5, help="iterative k-core threshold; 0 keeps everything (default 5)")
    prep.add_argument("--split", default="loo", choices=("loo", "temporal"), help="split rule (default loo)")
    prep.add_argument("--min-rating", type=float, default=None, help="drop events rated below R")
    prep.add_argument("--on-bad-rows", default="error", choices=("error", "drop"),
                      help="stop at the first bad row (default) or drop and count bad rows")
    prep.add_argument("--repeats", default="keep", choices=("keep", "first"),
                      help="repeated (user, item) pairs: keep all (default) or only the first")
    prep.add_argument("--valid-fraction", type=float, default=0.1, help="temporal split: valid share (default 0.1)")
    prep.add_argument("--test-fraction", type=float, default=0.1, help="temporal split: test share (default 0.1)")
    prep.add_argument("--max-text-chars", type=int, default=2000, help="item text length bound (default 2000)")
    prep.add_argument("--catalogue-only", default="keep", choices=("keep", "drop"),
                      help="items of the item file without any event: keep as cold items (default) or drop")
    prep.set_defaults(func=run_prepare)

    stats = actions.add_parser("stats", help="print the statistics of a prepared dataset")
    stats.add_argument("dir", help="a directory written by `recsys data prepare`")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=run_stats)


def run_prepare(args: argparse.Namespace) -> int:
    """Handler of ``recsys data prepare``."""
    from recsys.pipelines.prepare import PrepareConfig, prepare

    config = PrepareConfig(
        source=args.source,
        out=args.out,
        format=args.format,
        kcore=args.kcore,
        split=args.split,
        min_rating=args.min_rating,
        on_bad_rows=args.on_bad_rows,
        repeats=args.repeats,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        max_text_chars=args.max_text_chars,
        catalogue_only=args.catalogue_only,
    )
    import sys

    manifest = prepare(config)
    counts = manifest["counts"]
    dropped = ", ".join(f"{k} {v:,}" for k, v in counts["rows_dropped"].items()) or "none"
    print(
        f"prepared {args.out} ({manifest['source']['format']}, fingerprint {manifest['fingerprint']}): "
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
