"""``recsys tokenize ...``: build the item tokenizers' artifacts from a prepared dataset.

Commands:
    recsys tokenize cf --data data/ml-100k --out art/ml-100k/cf [--epochs 200 --dim 64 ...] [--import emb.npy]
    recsys tokenize cf --data data/ml-100k --out art/ml-100k/cf --semantic art/ml-100k/semantic --align con
    recsys tokenize cf --data data/ml-100k --out art/ml-100k/cf --embeddings decoupled [--attention-size 32]   # DARE
    recsys tokenize semantic --data data/ml-100k --out art/ml-100k/semantic [--encoder DIR]
    recsys tokenize ids --data data/ml-100k --semantic art/ml-100k/semantic --out art/ml-100k/ids
    recsys tokenize table --data data/ml-100k --cf art/ml-100k/cf --semantic art/ml-100k/semantic \\
        --out art/ml-100k/table [--pretrain-epochs 50]
    recsys tokenize health --table art/ml-100k/table
    recsys tokenize add-items --table art/ml-100k/table --items new_items.jsonl

Every command parses its arguments through the one config path (:mod:`recsys.config`: the flags
above, dotted keys, ``--set KEY=VALUE``, ``--config FILE``, ``--print_config``) and logs a run to
MLflow (experiment ``tokenizers``). Heavy libraries are imported inside the handlers so
``recsys --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from recsys import tracking
from recsys.config import ConfigCommand
from recsys.errors import ConfigError, DataFormatError

EXPERIMENT = "tokenizers"


def register(subparsers) -> None:
    """Add ``recsys tokenize`` and its subcommands; each parses its arguments through :mod:`recsys.config`."""
    parser = subparsers.add_parser("tokenize", help="build item tokenizers (CF, semantic, ids, token tables)")
    sub = parser.add_subparsers(dest="tokenize_command", metavar="TOKENIZER", required=True)
    CF.add_to(sub, "cf", "CF item embeddings: train SASRec on the train split, or import external ones", run_cf, parse_cf_args)
    SEMANTIC.add_to(sub, "semantic", "text embeddings of every item text (cached)", run_semantic, parse_semantic_args)
    IDS.add_to(sub, "ids", "residual k-means semantic ids for the token-sequence baseline", run_ids, parse_ids_args)
    TABLE.add_to(sub, "table", "the (num_items, N+1, d) set-identifier table, with a health report", run_table, parse_table_args)
    HEALTH.add_to(sub, "health", "health report of a token table", run_health, parse_health_args)
    ADD_ITEMS.add_to(sub, "add-items", "cold start: add items to a table from their text alone", run_add_items,
                     parse_add_items_args)


def data_out_options(parser) -> None:
    """``--data`` and ``--out`` of ``recsys tokenize semantic`` (not config keys)."""
    parser.add_argument("--data", required=True, help="prepared dataset folder")
    parser.add_argument("--out", required=True, help="output folder (text_embeddings.safetensors, manifest.json)")


SEMANTIC = ConfigCommand(
    "recsys tokenize semantic", "recsys.tokenizers.semantic:SemanticConfig",
    "Text embeddings of every item text of --data (cached), written to --out. --encoder DIR is a local Hugging Face / "
    "sentence-transformers folder (default: the bundled all-MiniLM-L6-v2); the cache root defaults to "
    "$SETREC_CACHE_DIR or ~/.cache/setrec.",
    {"--encoder": "encoder.path", "--batch-size": "encoder.batch_size", "--max-length": "encoder.max_length",
     "--device": "encoder.device", "--cache-dir": "cache_dir", "--no-cache": "use_cache=false",
     "--no-progress": "progress=false"},
    data_out_options,
)


def parse_semantic_args(argv: list[str]):
    """``recsys tokenize semantic`` arguments -> (SemanticConfig, command options), through the one config path.

    Example:
        >>> config, options = parse_semantic_args(["--data", "d", "--out", "o", "--no-cache"])
    """
    return SEMANTIC.parse(argv)


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


#: ``recsys tokenize cf``: its documented SASRec flags are aliases of SASRecConfig keys (``--epochs 5`` is ``--max_epochs=5``).
CF = ConfigCommand(
    "recsys tokenize cf", "recsys.models.sasrec:SASRecConfig",
    "CF item embeddings: train SASRec on the train split (or --import external ones).",
    {"--epochs": "max_epochs", "--patience": "patience", "--dim": "hidden_size", "--layers": "num_layers",
     "--heads": "num_heads", "--max-len": "max_len", "--dropout": "dropout", "--lr": "lr", "--batch-size": "batch_size",
     "--window-batch-size": "window_batch_size", "--seed": "seed", "--train-samples": "train_samples",
     "--accelerator": "accelerator", "--align": "align", "--align-weight": "align_weight",
     "--align-temperature": "align_temperature", "--align-mask-ratio": "align_mask_ratio",
     "--embeddings": "embeddings", "--attention-size": "attention_size"},
    cf_options,
)


def parse_cf_args(argv: list[str]):
    """``recsys tokenize cf`` arguments -> (SASRecConfig, the SASRec keys given, command options).

    Example:
        >>> config, given, options = parse_cf_args(["--data", "d", "--out", "o", "--epochs", "5"])
    """
    import dataclasses

    from recsys.config import given_keys
    from recsys.models.sasrec import SASRecConfig

    config, options = CF.parse(argv)
    fields = {f.name for f in dataclasses.fields(SASRecConfig)}
    given = sorted(given_keys(argv, CF.aliases) & (fields | {"config"}))
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
    if "attention_shape" in manifest:
        print(f"attention embeddings {tuple(manifest['attention_shape'])} (decoupled, DARE)")
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


def ids_options(parser) -> None:
    """The folders of ``recsys tokenize ids`` (not SemanticIdConfig keys)."""
    parser.add_argument("--data", required=True, help="prepared dataset folder (checks the item count)")
    parser.add_argument("--semantic", required=True, help="output folder of `recsys tokenize semantic`")
    parser.add_argument("--out", required=True, help="output folder (semantic_ids.safetensors, manifest.json)")


IDS = ConfigCommand(
    "recsys tokenize ids", "recsys.tokenizers.semantic_ids:SemanticIdConfig",
    "Residual k-means semantic ids of the text embeddings in --semantic (the token-sequence baseline), written to --out.",
    extra=ids_options,
)


def parse_ids_args(argv: list[str]):
    """``recsys tokenize ids`` arguments -> (validated SemanticIdConfig, the folders), through the one config path.

    Example:
        >>> config, options = parse_ids_args(["--data", "d", "--semantic", "s", "--out", "o", "--levels", "2"])
    """
    return IDS.parse(argv)


def run_ids(args: argparse.Namespace) -> int:
    """``recsys tokenize ids``: residual k-means semantic ids of the text embeddings."""
    from dataclasses import asdict

    from recsys.pipelines.prepared import PreparedDataset
    from recsys.tokenizers.semantic import load_text_embeddings
    from recsys.tokenizers.semantic_ids import build_semantic_ids

    config, args = parse_ids_args(args.argv)
    data = PreparedDataset.load(args.data)
    embeddings = load_text_embeddings(args.semantic, num_items=data.num_items)
    params = {"data": args.data, "semantic": args.semantic, **asdict(config)}
    with tracking.start_run(EXPERIMENT, "semantic-ids", params, tags={"dataset": data.fingerprint}):
        ids = build_semantic_ids(embeddings, **asdict(config))
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


@dataclass
class TableCommandConfig:
    """Settings of ``recsys tokenize table`` (parsed through :mod:`recsys.config`; the library's is TableConfig)."""

    data: str
    """Prepared dataset folder."""
    cf: str
    """Output folder of `recsys tokenize cf`."""
    semantic: str
    """Output folder of `recsys tokenize semantic`."""
    out: str
    """Output table folder."""
    num_tokens: int = 4
    """N semantic tokens per item."""
    token_dim: int = 64
    """d, the backbone hidden size the recommender will use."""
    seed: int = 0
    """Seeds the projection and autoencoder initial weights and the autoencoder pre-training (TableConfig.seed and
    TableConfig.pretrain.seed)."""
    pretrain_epochs: int = 0
    """Pre-train the autoencoder on reconstruction alone for this many epochs (0 = no)."""
    pretrain_lr: float = 1e-3
    """AdamW learning rate of the pre-training."""
    pretrain_batch_size: int = 256
    """Items per pre-training step."""

    def validate(self) -> None:
        for key in ("num_tokens", "token_dim", "pretrain_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.pretrain_epochs < 0:
            raise ConfigError(f"pretrain_epochs: must be >= 0, got {self.pretrain_epochs}")

    def table_config(self):
        """The library's :class:`~recsys.tokenizers.identifiers.TableConfig` of these settings."""
        from recsys.tokenizers.identifiers import TableConfig
        from recsys.tokenizers.semantic import AutoencoderPretrainConfig

        pretrain = AutoencoderPretrainConfig(epochs=self.pretrain_epochs, lr=self.pretrain_lr,
                                             batch_size=self.pretrain_batch_size, seed=self.seed)
        return TableConfig(num_semantic_tokens=self.num_tokens, token_dim=self.token_dim, seed=self.seed, pretrain=pretrain)


TABLE = ConfigCommand(
    "recsys tokenize table", TableCommandConfig, "The (num_items, N+1, d) set-identifier table, with a health report.",
    {"--num-tokens": "num_tokens", "--token-dim": "token_dim", "--pretrain-epochs": "pretrain_epochs",
     "--pretrain-lr": "pretrain_lr", "--pretrain-batch-size": "pretrain_batch_size"},
)


def parse_table_args(argv: list[str]) -> TableCommandConfig:
    """``recsys tokenize table`` arguments -> TableCommandConfig, through the one config path.

    Example:
        >>> parse_table_args(["--data", "d", "--cf", "c", "--semantic", "s", "--out", "o", "--num-tokens", "2"]).num_tokens
        2
    """
    return TABLE.parse(argv)[0]


def run_table(args: argparse.Namespace) -> int:
    """``recsys tokenize table``: build, save and check the set-identifier table."""
    from dataclasses import asdict

    from recsys.tokenizers.identifiers import build_item_table, health_report

    args = parse_table_args(args.argv)
    config = args.table_config()
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


@dataclass
class HealthConfig:
    """Settings of ``recsys tokenize health`` (parsed through :mod:`recsys.config`)."""

    table: str
    """Table folder (output of `recsys tokenize table`)."""
    threshold: float = 0.99
    """Near-duplicate cosine threshold."""
    max_pairwise_items: int = 20000
    """Compare all pairs of at most this many items (a seeded sample above)."""

    def validate(self) -> None:
        if self.max_pairwise_items < 2:
            raise ConfigError(f"max_pairwise_items: must be >= 2, got {self.max_pairwise_items}")


HEALTH = ConfigCommand(
    "recsys tokenize health", HealthConfig,
    "Health report of a token table (reconstruction, similarity between items, near-duplicates).",
    {"--max-pairwise-items": "max_pairwise_items"},
)


def parse_health_args(argv: list[str]) -> HealthConfig:
    """``recsys tokenize health`` arguments -> HealthConfig, through the one config path.

    Example:
        >>> parse_health_args(["--table", "t", "--threshold", "0.95"]).threshold
        0.95
    """
    return HEALTH.parse(argv)[0]


def run_health(args: argparse.Namespace) -> int:
    """``recsys tokenize health``: print and log the health report of a saved table."""
    from recsys.tokenizers.identifiers import ItemTokenTable, health_report

    args = parse_health_args(args.argv)
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


@dataclass
class AddItemsConfig:
    """Settings of ``recsys tokenize add-items`` (parsed through :mod:`recsys.config`)."""

    table: str
    """Table folder (updated in place unless out is given)."""
    items: str
    """File with item_id and text columns (.jsonl, .csv, .parquet)."""
    out: str | None = None
    """Write the extended table here instead."""
    cache_dir: str | None = None
    """Embedding cache root (default: $SETREC_CACHE_DIR or ~/.cache/setrec)."""
    use_cache: bool = True
    """Read and write the embedding cache (--no-cache: neither)."""


ADD_ITEMS = ConfigCommand(
    "recsys tokenize add-items", AddItemsConfig, "Cold start: add items to a table from their text alone.",
    {"--cache-dir": "cache_dir", "--no-cache": "use_cache=false"},
)


def parse_add_items_args(argv: list[str]) -> AddItemsConfig:
    """``recsys tokenize add-items`` arguments -> AddItemsConfig, through the one config path.

    Example:
        >>> parse_add_items_args(["--table", "t", "--items", "new.jsonl", "--no-cache"]).use_cache
        False
    """
    return ADD_ITEMS.parse(argv)[0]


def run_add_items(args: argparse.Namespace) -> int:
    """``recsys tokenize add-items``: add items to a table from their text (cold start)."""
    from recsys.tokenizers.identifiers import ItemTokenTable, add_items_from_text
    from recsys.tokenizers.text_encoder import EmbeddingCache, TextEncoder, TextEncoderConfig, default_cache_dir

    args = parse_add_items_args(args.argv)
    ids, texts = read_new_items(args.items)
    table = ItemTokenTable.load(args.table)
    recorded = table.info.get("text_encoder", {})
    encoder = None
    cache = None
    if recorded.get("path"):
        encoder = TextEncoder(
            TextEncoderConfig(path=recorded["path"], pooling=recorded.get("pooling"), normalize=recorded.get("normalize"), max_length=recorded.get("max_length"))
        )
        if args.use_cache:
            cache = EmbeddingCache(Path(args.cache_dir) if args.cache_dir else default_cache_dir(), encoder.fingerprint, encoder.dim)
    out = args.out or args.table
    with tracking.start_run(EXPERIMENT, "add-items", {"table": args.table, "items": args.items, "out": out}):
        new_idx = add_items_from_text(table, ids, texts, text_encoder=encoder, cache=cache, progress=True)
        table.save(out)
        tracking.log_metrics({"added_items": len(new_idx), "num_items": table.num_items})
    print(f"added {len(new_idx)} item(s) as item_idx {int(new_idx[0])}..{int(new_idx[-1])}; table now {tuple(table.tokens.shape)} -> {out}")
    return 0
