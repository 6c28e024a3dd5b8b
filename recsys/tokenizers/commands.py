"""``recsys tokenize ...``: build the item tokenizers' artifacts from a prepared dataset.

Commands:
    recsys tokenize cf --data data/ml-100k --out art/ml-100k/cf [--epochs 200 --dim 64 ...] [--import emb.npy]
    recsys tokenize cf --data data/ml-100k --out art/ml-100k/cf --semantic art/ml-100k/semantic --align con
    recsys tokenize semantic --data data/ml-100k --out art/ml-100k/semantic [--encoder DIR]
    recsys tokenize ids --data data/ml-100k --semantic art/ml-100k/semantic --out art/ml-100k/ids
    recsys tokenize table --data data/ml-100k --cf art/ml-100k/cf --semantic art/ml-100k/semantic \\
        --out art/ml-100k/table [--pretrain-epochs 50]
    recsys tokenize health --table art/ml-100k/table
    recsys tokenize add-items --table art/ml-100k/table --items new_items.jsonl

Every command logs a run to MLflow (experiment ``tokenizers``). Heavy libraries are
imported inside the handlers so ``recsys --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recsys import tracking
from recsys.errors import ConfigError, DataFormatError

EXPERIMENT = "tokenizers"


def register(subparsers) -> None:
    """Add ``recsys tokenize`` and its subcommands."""
    parser = subparsers.add_parser("tokenize", help="build item tokenizers (CF, semantic, ids, token tables)")
    sub = parser.add_subparsers(dest="tokenize_command", metavar="TOKENIZER", required=True)

    cf = sub.add_parser("cf", help="CF item embeddings: train SASRec on the train split, or import external ones",
                        description=CF_DESCRIPTION, add_help=False)
    cf.set_defaults(func=run_cf, config_args=parse_cf_args)  # parsed through recsys.config (SASRecConfig keys)

    sem = sub.add_parser("semantic", help="text embeddings of every item text (cached)", description=SEMANTIC_DESCRIPTION,
                         add_help=False)
    sem.set_defaults(func=run_semantic, config_args=parse_semantic_args)  # parsed through recsys.config (SemanticConfig keys)

    ids = sub.add_parser("ids", help="residual k-means semantic ids for the token-sequence baseline")
    ids.add_argument("--data", required=True, help="prepared dataset folder (checks the item count)")
    ids.add_argument("--semantic", required=True, help="output folder of `recsys tokenize semantic`")
    ids.add_argument("--out", required=True, help="output folder (semantic_ids.safetensors, manifest.json)")
    ids.add_argument("--levels", type=int, default=3, help="k-means levels (default 3)")
    ids.add_argument("--codes", type=int, default=256, help="centroids per level (default 256)")
    ids.add_argument("--seed", type=int, default=0)
    ids.add_argument("--niter", type=int, default=20, help="k-means iterations per level")
    ids.add_argument("--backend", choices=("faiss", "numpy"), default="faiss")
    ids.set_defaults(func=run_ids)

    table = sub.add_parser("table", help="the (num_items, N+1, d) set-identifier table, with a health report")
    table.add_argument("--data", required=True, help="prepared dataset folder")
    table.add_argument("--cf", required=True, help="output folder of `recsys tokenize cf`")
    table.add_argument("--semantic", required=True, help="output folder of `recsys tokenize semantic`")
    table.add_argument("--out", required=True, help="output table folder")
    table.add_argument("--num-tokens", type=int, default=4, help="N semantic tokens per item (default 4)")
    table.add_argument("--token-dim", type=int, default=64, help="d, the backbone hidden size (default 64)")
    table.add_argument("--seed", type=int, default=0)
    table.add_argument("--pretrain-epochs", type=int, default=0, help="pre-train the autoencoder on reconstruction alone (0 = no)")
    table.add_argument("--pretrain-lr", type=float, default=1e-3)
    table.add_argument("--pretrain-batch-size", type=int, default=256)
    table.set_defaults(func=run_table)

    health = sub.add_parser("health", help="health report of a token table")
    health.add_argument("--table", required=True, help="table folder")
    health.add_argument("--threshold", type=float, default=0.99, help="near-duplicate cosine threshold")
    health.add_argument("--max-pairwise-items", type=int, default=20000, help="compare all pairs of at most this many items (sample above)")
    health.set_defaults(func=run_health)

    add = sub.add_parser("add-items", help="cold start: add items to a table from their text alone")
    add.add_argument("--table", required=True, help="table folder (updated in place unless --out)")
    add.add_argument("--items", required=True, help="file with item_id and text columns (.jsonl, .csv, .parquet)")
    add.add_argument("--out", default=None, help="write the extended table here instead")
    add.add_argument("--cache-dir", default=None, help="embedding cache root (default: user cache)")
    add.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    add.set_defaults(func=run_add_items)


#: The documented flags of ``recsys tokenize semantic`` -> SemanticConfig keys (a target with "=" is a switch).
SEMANTIC_FLAGS = {
    "--encoder": "encoder.path",
    "--batch-size": "encoder.batch_size",
    "--max-length": "encoder.max_length",
    "--device": "encoder.device",
    "--cache-dir": "cache_dir",
    "--no-cache": "use_cache=false",
    "--no-progress": "progress=false",
}
SEMANTIC_DESCRIPTION = (
    "Text embeddings of every item text (cached). The settings are SemanticConfig keys: --encoder DIR (local Hugging "
    "Face / sentence-transformers folder; default: bundled all-MiniLM-L6-v2), --batch-size N, --max-length N, "
    "--device D, --cache-dir DIR (default: $SETREC_CACHE_DIR or ~/.cache/setrec), --no-cache, --no-progress; or "
    "dotted keys (--encoder.batch_size=N, --set use_cache=false), --config FILE; --print_config prints them."
)


def data_out_options(parser) -> None:
    """``--data`` and ``--out`` of ``recsys tokenize semantic`` (not config keys)."""
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--out", required=True, help="output folder (text_embeddings.safetensors, manifest.json)")


def parse_semantic_args(argv: list[str]):
    """``recsys tokenize semantic`` arguments -> (SemanticConfig, command options), through the one config path.

    Example:
        >>> config, options = parse_semantic_args(["--data", "d", "--out", "o", "--no-cache"])
    """
    from recsys.config import parse_command
    from recsys.tokenizers.semantic import SemanticConfig

    return parse_command(SemanticConfig, argv, "recsys tokenize semantic", SEMANTIC_DESCRIPTION,
                         extra=data_out_options, aliases=SEMANTIC_FLAGS)


#: The documented SASRec flags of ``recsys tokenize cf`` -> their SASRecConfig key (``--epochs 5`` is ``--max_epochs=5``).
SASREC_FLAGS = {
    "--epochs": "max_epochs",
    "--patience": "patience",
    "--dim": "hidden_size",
    "--layers": "num_layers",
    "--heads": "num_heads",
    "--max-len": "max_len",
    "--dropout": "dropout",
    "--lr": "lr",
    "--batch-size": "batch_size",
    "--window-batch-size": "window_batch_size",
    "--seed": "seed",
    "--train-samples": "train_samples",
    "--accelerator": "accelerator",
    "--align": "align",
    "--align-weight": "align_weight",
    "--align-temperature": "align_temperature",
    "--align-mask-ratio": "align_mask_ratio",
}

CF_DESCRIPTION = (
    "CF item embeddings: train SASRec on the train split (or --import external ones). The SASRec settings are "
    "SASRecConfig keys: --config FILE (YAML, repeatable), dotted flags (--max_epochs=5, --set max_epochs=5) or the "
    "short flags " + ", ".join(f"{flag} (= --{key})" if flag[2:] != key else flag for flag, key in SASREC_FLAGS.items())
    + "; --print_config prints them."
)


def cf_options(parser) -> None:
    """The options of ``recsys tokenize cf`` that are not SASRec keys."""
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--out", required=True, help="output folder (cf_embeddings.safetensors, manifest.json)")
    parser.add_argument("--import", dest="import_path", default=None,
                        help="import embeddings (.npy, .safetensors, .parquet) instead of training")
    parser.add_argument("--semantic", default=None,
                        help="text embeddings folder (`recsys tokenize semantic`): needed by --align con|gen; with it, items "
                             "without a train interaction get CF embeddings predicted from their text (map fitted on warm items)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's; 1 is fastest on a busy machine)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the training run to MLflow")


def parse_cf_args(argv: list[str]):
    """``recsys tokenize cf`` arguments -> (SASRecConfig, the SASRec keys given, command options).

    Example:
        >>> config, given, options = parse_cf_args(["--data", "d", "--out", "o", "--epochs", "5"])
    """
    import dataclasses

    from recsys.config import expand_aliases, expand_set, parse_command
    from recsys.models.sasrec import SASRecConfig

    config, options = parse_command(SASRecConfig, argv, "recsys tokenize cf", CF_DESCRIPTION, extra=cf_options, aliases=SASREC_FLAGS)
    fields = {f.name for f in dataclasses.fields(SASRecConfig)}
    expanded = expand_aliases(expand_set(argv), SASREC_FLAGS)
    given = sorted({arg[2:].split("=", 1)[0] for arg in expanded if arg.startswith("--")} & (fields | {"config"}))
    return config, given, options


def run_cf(args: argparse.Namespace) -> int:
    """``recsys tokenize cf``: train SASRec CF embeddings, or import external ones."""
    from recsys.tokenizers.cf import cf_manifest, import_cf_embeddings, train_cf_embeddings

    config, given, options = parse_cf_args(args.argv)
    args = options
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.import_path:
        if given:
            raise ConfigError(f"--import takes no SASRec training flags (got {', '.join(sorted(given))})")
        if args.semantic:
            raise ConfigError("--import takes no --semantic: the set-identifier job predicts cold rows from text itself")
        if args.no_mlflow:
            out = import_cf_embeddings(args.import_path, args.data, args.out)
        else:
            with tracking.start_run(EXPERIMENT, "cf-import", {"data": args.data, "out": args.out, "import": args.import_path}):
                out = import_cf_embeddings(args.import_path, args.data, args.out)
                counts = cf_manifest(out)["counts"]
                tracking.log_metrics(counts)
                tracking.log_artifact(Path(out) / "manifest.json")
    else:
        out = train_cf_embeddings(args.data, args.out, config, log_to_mlflow=not args.no_mlflow, semantic_dir=args.semantic)
    manifest = cf_manifest(out)
    counts = manifest["counts"]
    predicted = counts.get("predicted", 0)
    print(f"CF embeddings {tuple(manifest['shape'])} -> {out} ({counts['has_cf']} items with CF, "
          f"{predicted} predicted from text, {counts['no_cf'] - predicted} zero vectors by the unseen-item rule)")
    if "text_to_cf" in manifest:
        fit = manifest["text_to_cf"]
        print(f"text->CF map ({fit['method']}, lambda {fit['lambda']:.4g}) fitted on {fit['warm_items']} warm items: "
              f"{fit['cv_folds']}-fold held-out R^2 {fit['cv_r2']:.3f}, cosine {fit['cv_cosine']:.3f}")
    metrics = manifest.get("metrics")
    if metrics:
        valid, test = metrics["valid"], metrics["test"]
        print(
            f"SASRec best epoch {metrics['best_epoch']} of {metrics['epochs_run']} ({metrics['seconds_per_epoch']:.1f} s/epoch): "
            f"valid NDCG@10 {valid['ndcg@10']:.4f} Recall@10 {valid['recall@10']:.4f}; "
            f"test NDCG@10 {test['ndcg@10']:.4f} Recall@10 {test['recall@10']:.4f}"
        )
    return 0


def run_semantic(args: argparse.Namespace) -> int:
    """``recsys tokenize semantic``: embed every item text of ``--data`` into ``--out``."""
    from recsys.tokenizers.semantic import build_text_embeddings
    from recsys.tokenizers.text_encoder import TextEncoder

    config, args = parse_semantic_args(args.argv)
    encoder = TextEncoder(config.encoder)
    with tracking.start_run(EXPERIMENT, "semantic", {"data": args.data, "out": args.out, "encoder": encoder.describe(), "use_cache": config.use_cache}):
        out, stats = build_text_embeddings(args.data, args.out, config, encoder=encoder)
        tracking.log_metrics(
            {"texts": stats.texts, "unique_texts": stats.unique_texts, "cache_hits": stats.cache_hits, "encoded": stats.encoded, "seconds": stats.seconds}
        )
        tracking.log_artifact(out / "manifest.json")
    print(
        f"{stats.texts} texts ({stats.unique_texts} distinct): {stats.cache_hits} from the cache, {stats.encoded} encoded "
        f"in {stats.seconds:.1f} s -> {out}"
    )
    return 0


def run_ids(args: argparse.Namespace) -> int:
    """``recsys tokenize ids``: residual k-means semantic ids of the text embeddings."""
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.tokenizers.semantic import load_text_embeddings
    from recsys.tokenizers.semantic_ids import build_semantic_ids

    data = PreparedDataset.load(args.data)
    embeddings = load_text_embeddings(args.semantic, num_items=data.num_items)
    params = {"data": args.data, "semantic": args.semantic, "levels": args.levels, "codes": args.codes, "seed": args.seed, "niter": args.niter, "backend": args.backend}
    with tracking.start_run(EXPERIMENT, "semantic-ids", params, tags={"dataset": data.fingerprint}):
        ids = build_semantic_ids(embeddings, args.levels, args.codes, args.seed, niter=args.niter, backend=args.backend)
        ids.stats["dataset_fingerprint"] = data.fingerprint
        ids.save(args.out)
        stats = ids.stats
        metrics = {"collision_rate": stats["collision_rate"], "unique_prefixes": stats["unique_prefixes"], "max_items_per_prefix": stats["max_items_per_prefix"], "seconds": stats["seconds"]}
        metrics.update({f"utilisation_level_{i + 1}": u for i, u in enumerate(stats["utilisation_per_level"])})
        tracking.log_metrics(metrics)
    capped = f" (capped from {stats['codes_requested']}: only {stats['num_items']} items)" if stats["codes_capped"] else ""
    print(f"semantic ids {tuple(ids.codes.shape)} -> {args.out}")
    print(f"  codes per level: {stats['codes']}{capped}")
    print(f"  collision rate before the extra digit: {stats['collision_rate']:.4f} ({stats['unique_prefixes']} distinct prefixes, up to {stats['max_items_per_prefix']} items share one)")
    print("  codebook utilisation per level: " + ", ".join(f"{u:.3f}" for u in stats["utilisation_per_level"]))
    return 0


def run_table(args: argparse.Namespace) -> int:
    """``recsys tokenize table``: build, save and check the set-identifier table."""
    from recsys.tokenizers.identifiers import TableConfig, build_item_table, health_report
    from recsys.tokenizers.semantic import AutoencoderPretrainConfig

    config = TableConfig(
        num_semantic_tokens=args.num_tokens,
        token_dim=args.token_dim,
        seed=args.seed,
        pretrain=AutoencoderPretrainConfig(epochs=args.pretrain_epochs, lr=args.pretrain_lr, batch_size=args.pretrain_batch_size, seed=args.seed),
    )
    from dataclasses import asdict

    with tracking.start_run(EXPERIMENT, "item-table", {"data": args.data, "cf": args.cf, "semantic": args.semantic, **asdict(config)}):
        table, metrics = build_item_table(args.data, args.cf, args.semantic, config)
        table.save(args.out)
        report = health_report(table)
        tracking.log_metrics(metrics)
        tracking.log_metrics(report.metrics())
        tracking.log_artifact(Path(args.out) / "manifest.json")
    print(f"token table {tuple(table.tokens.shape)} -> {args.out}")
    if metrics:
        print("autoencoder pre-training: " + ", ".join(f"{k} {v:.6g}" for k, v in metrics.items()))
    print(report.as_table())
    return 0


def run_health(args: argparse.Namespace) -> int:
    """``recsys tokenize health``: print and log the health report of a saved table."""
    from recsys.tokenizers.identifiers import ItemTokenTable, health_report

    table = ItemTokenTable.load(args.table)
    with tracking.start_run(EXPERIMENT, "item-table-health", {"table": args.table, "threshold": args.threshold}):
        report = health_report(table, threshold=args.threshold, max_pairwise_items=args.max_pairwise_items)
        tracking.log_metrics(report.metrics())
    print(report.as_table())
    return 0


def read_new_items(path: str | Path) -> tuple[list[str], list[str]]:
    """(item ids, texts) from a .jsonl, .csv or .parquet file with ``item_id`` and ``text`` columns.

    Example:
        >>> ids, texts = read_new_items("new_items.jsonl")
    """
    import polars as pl

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"items file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pl.read_parquet(path)
        elif suffix == ".csv":
            frame = pl.read_csv(path, infer_schema=False)
        elif suffix in (".jsonl", ".ndjson"):
            rows = []
            for line_no, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataFormatError(f"not valid JSON ({error.msg})", path=path, line=line_no) from error
            frame = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()
        else:
            raise ConfigError(f"items file {path}: use .jsonl, .csv or .parquet")
    except (pl.exceptions.ComputeError, OSError) as error:
        raise DataFormatError(f"cannot read ({error})", path=path) from error
    for column in ("item_id", "text"):
        if column not in frame.columns:
            raise DataFormatError(f"column {column!r} is missing (found {frame.columns})", path=path, column=column)
    ids = [None if v is None else str(v) for v in frame["item_id"].to_list()]
    missing = [i + 1 for i, v in enumerate(ids) if v is None or not v.strip()]
    if missing:
        raise DataFormatError(f"{len(missing)} row(s) without item_id, e.g. rows {missing[:5]}", path=path, column="item_id")
    return ids, frame["text"].to_list()


def run_add_items(args: argparse.Namespace) -> int:
    """``recsys tokenize add-items``: add items to a table from their text (cold start)."""
    from recsys.tokenizers.identifiers import ItemTokenTable, add_items_from_text
    from recsys.tokenizers.text_encoder import EmbeddingCache, TextEncoder, TextEncoderConfig, default_cache_dir

    ids, texts = read_new_items(args.items)
    table = ItemTokenTable.load(args.table)
    recorded = table.info.get("text_encoder", {})
    encoder = None
    cache = None
    if recorded.get("path"):
        encoder = TextEncoder(
            TextEncoderConfig(path=recorded["path"], pooling=recorded.get("pooling"), normalize=recorded.get("normalize"), max_length=recorded.get("max_length"))
        )
        if not args.no_cache:
            cache = EmbeddingCache(Path(args.cache_dir) if args.cache_dir else default_cache_dir(), encoder.fingerprint, encoder.dim)
    out = args.out or args.table
    with tracking.start_run(EXPERIMENT, "add-items", {"table": args.table, "items": args.items, "out": out}):
        new_idx = add_items_from_text(table, ids, texts, text_encoder=encoder, cache=cache, progress=True)
        table.save(out)
        tracking.log_metrics({"added_items": len(new_idx), "num_items": table.num_items})
    print(f"added {len(new_idx)} item(s) as item_idx {int(new_idx[0])}..{int(new_idx[-1])}; table now {tuple(table.tokens.shape)} -> {out}")
    return 0
