"""Set identifiers as an artifact: the (num_items, N+1, d) token table of ARCHITECTURE.md section 3.1.

The tokens are made by the trainable :class:`~recsys.models.item_tokens.ItemTokenEncoder`
(CF token + N semantic tokens; how, and the unseen-item rule, in :mod:`recsys.models.item_tokens`);
the recommender owns one and trains it jointly. :func:`build_item_encoder` builds one over a
prepared dataset's CF and text artifacts.

The table is also an artifact of its own (:class:`ItemTokenTable`): a folder with
``item_tokens.safetensors`` (tensor ``tokens``, (num_items, N+1, d)), ``items.parquet``
(the item map: item_idx, item_id, has_cf, added, text, cf_predicted), ``item_encoder.safetensors`` (the
projection and autoencoder that made it, so new items can be added later) and
``manifest.json`` with checksums; written atomically, verified on load. New items join
from text alone (:func:`add_items_from_text`); :func:`health_report` checks a table.

Commands:
    recsys tokenize table --data data/ml-100k --cf artifacts/ml-100k/cf \
        --semantic artifacts/ml-100k/semantic --out artifacts/ml-100k/table --pretrain-epochs 50
    recsys tokenize health --table artifacts/ml-100k/table
    recsys tokenize add-items --table artifacts/ml-100k/table --items new_items.jsonl

Example:
    >>> table, metrics = build_item_table("data/ml-100k", "art/cf", "art/semantic")
    >>> table.tokens.shape                        # (num_items, N+1, d)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import polars as pl
import torch

from recsys.checksum import sha256_file
from recsys.errors import ArtifactError, ConfigError, UnknownItemError
from recsys.models.item_tokens import ItemTokenEncoder
from recsys.tokenizers.artifact_io import (
    atomic_directory,
    read_json,
    read_safetensors_checked,
    verify_checksum,
    write_json_atomic,
    write_safetensors_atomic,
)
from recsys.tokenizers.semantic import AutoencoderPretrainConfig

#: CF embeddings of items without a train interaction (:func:`build_item_encoder`).
COLD_CF_MODES = ("predicted", "zero")
#: Width of the zero text embeddings of a CF-only encoder built without text (:func:`build_item_encoder`).
NO_TEXT_DIM = 1


# --------------------------------------------------------------------------------------
# The table artifact
# --------------------------------------------------------------------------------------

SCHEMA_VERSION = 1
KIND = "item_token_table"
TOKENS_FILE = "item_tokens.safetensors"
ITEMS_FILE = "items.parquet"
ENCODER_FILE = "item_encoder.safetensors"
MANIFEST_FILE = "manifest.json"
ITEM_COLUMNS = {"item_idx": pl.Int32, "item_id": pl.String, "has_cf": pl.Boolean, "added": pl.Boolean, "text": pl.String,
                "cf_predicted": pl.Boolean}
#: Item-map columns older tables lack, with the value they load as.
OPTIONAL_ITEM_COLUMNS = {"cf_predicted": False}


def item_map(item_ids: Sequence[str], has_cf: torch.Tensor, texts: Sequence[str] | None = None, added: bool = False, start: int = 0,
             cf_predicted: torch.Tensor | None = None) -> pl.DataFrame:
    """The item-map rows of a table: item_idx (from ``start``), item_id, has_cf, added, text, cf_predicted
    (True where the CF embedding was predicted from text)."""
    n = len(item_ids)
    predicted = [False] * n if cf_predicted is None else cf_predicted.bool().cpu().tolist()
    return pl.DataFrame(
        {
            "item_idx": pl.Series(range(start, start + n), dtype=pl.Int32),
            "item_id": pl.Series([str(i) for i in item_ids], dtype=pl.String),
            "has_cf": pl.Series(has_cf.bool().cpu().tolist(), dtype=pl.Boolean),
            "added": pl.Series([added] * n, dtype=pl.Boolean),
            "text": pl.Series(list(texts) if texts is not None else [None] * n, dtype=pl.String),
            "cf_predicted": pl.Series(predicted, dtype=pl.Boolean),
        }
    )


@dataclass
class ItemTokenTable:
    """The (num_items, N+1, d) token table with its item map.

    Attributes:
        tokens: (num_items, N+1, d) float32; token 0 is the CF token.
        items: item map, one row per item in item_idx order (see :data:`ITEM_COLUMNS`).
        info: provenance recorded in the manifest (dataset fingerprint, text encoder, config).
        encoder: the :class:`ItemTokenEncoder` that made the table, when known; saved with
            it so that items can be added later.

    Example:
        >>> table = ItemTokenTable.from_encoder(encoder, item_ids=items["item_id"].to_list())
        >>> table.save("artifacts/ml-100k/table"); ItemTokenTable.load("artifacts/ml-100k/table")
        >>> table.scores(query)            # (B, num_items) inner products
    """

    tokens: torch.Tensor
    items: pl.DataFrame
    info: dict = field(default_factory=dict)
    encoder: ItemTokenEncoder | None = None

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise ArtifactError(f"item tokens must be (num_items, N+1, d), got {tuple(self.tokens.shape)}")
        if self.items.height != self.tokens.shape[0]:
            raise ArtifactError(f"item map has {self.items.height} rows but the token table {self.tokens.shape[0]}")
        if self.items["item_idx"].to_list() != list(range(self.items.height)):
            raise ArtifactError("item map item_idx must be 0..n-1 in order")
        if self.items["item_id"].n_unique() != self.items.height:
            dupes = self.items.filter(pl.col("item_id").is_duplicated())["item_id"].unique().to_list()[:5]
            raise ArtifactError(f"item map has duplicate item_id values, e.g. {dupes}")
        if self.encoder is not None and self.encoder.num_items != self.tokens.shape[0]:
            raise ArtifactError(f"encoder knows {self.encoder.num_items} items but the table has {self.tokens.shape[0]}")

    @property
    def num_items(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def tokens_per_item(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def token_dim(self) -> int:
        return int(self.tokens.shape[2])

    @classmethod
    def from_encoder(
        cls,
        encoder: ItemTokenEncoder,
        item_ids: Sequence[str],
        texts: Sequence[str] | None = None,
        info: dict | None = None,
    ) -> "ItemTokenTable":
        """Compute the table of every item of ``encoder`` (no gradients)."""
        if len(item_ids) != encoder.num_items:
            raise ArtifactError(f"{len(item_ids)} item ids for an encoder of {encoder.num_items} items")
        with torch.no_grad():
            tokens = encoder.table().detach().float().cpu()
        return cls(tokens, item_map(item_ids, encoder.has_cf, texts, cf_predicted=encoder.cf_predicted), dict(info or {}), encoder)

    def index_of(self, item_ids: Sequence[str]) -> torch.Tensor:
        """item_idx of each id; raises :class:`UnknownItemError` listing ids not in the table."""
        lookup = dict(zip(self.items["item_id"].to_list(), range(self.num_items)))
        unknown = [i for i in item_ids if str(i) not in lookup]
        if unknown:
            raise UnknownItemError(f"{len(unknown)} item id(s) not in the table, e.g. {unknown[:5]}; add them first (`recsys tokenize add-items`)")
        return torch.tensor([lookup[str(i)] for i in item_ids], dtype=torch.int64)

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """Inner product of (B, (N+1)*d) query vectors with every flattened item row: (B, num_items)."""
        flat = self.tokens.flatten(1)
        if queries.ndim != 2 or queries.shape[1] != flat.shape[1]:
            raise ConfigError(f"queries must be (B, {flat.shape[1]}), got {tuple(queries.shape)}")
        return queries.to(flat) @ flat.T

    def add_items(self, item_ids: Sequence[str], text_embeddings: torch.Tensor, texts: Sequence[str] | None = None) -> torch.Tensor:
        """Cold start: append items known only by their text embeddings; returns their item_idx.

        Semantic tokens come from the saved encoder; the CF token is predicted from the text when the
        encoder holds a text->CF map, else it follows the unseen-item rule (zero CF embedding ->
        projection bias).
        """
        if self.encoder is None:
            raise ArtifactError("this table was saved without its item encoder; rebuild it with `recsys tokenize table`")
        ids = [str(i) for i in item_ids]
        if len(ids) != text_embeddings.shape[0]:
            raise ConfigError(f"{len(ids)} item ids but {text_embeddings.shape[0]} text embeddings")
        known = set(self.items["item_id"].to_list())
        clash = [i for i in ids if i in known]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if clash or repeated:
            raise ConfigError(f"item ids must be new and distinct: already in the table {clash[:5]}, repeated {repeated[:5]}")
        new_idx = self.encoder.add_items(text_embeddings)
        with torch.no_grad():
            new_tokens = self.encoder(new_idx).detach().float().cpu()
        self.tokens = torch.cat([self.tokens, new_tokens])
        rows = item_map(ids, self.encoder.has_cf[new_idx], texts, added=True, start=self.items.height,
                        cf_predicted=self.encoder.cf_predicted[new_idx])
        self.items = pl.concat([self.items, rows])
        return new_idx

    def save(self, directory: str | Path) -> Path:
        """Write the folder atomically: tokens, item map, encoder (when known), manifest with checksums."""
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            files = {TOKENS_FILE: {"sha256": write_safetensors_atomic(tmp / TOKENS_FILE, {"tokens": self.tokens.float()})}}
            self.items.select(list(ITEM_COLUMNS)).write_parquet(tmp / ITEMS_FILE)
            files[ITEMS_FILE] = {"sha256": sha256_file(tmp / ITEMS_FILE)}
            encoder_info = None
            if self.encoder is not None:
                state = {k: v.detach().cpu() for k, v in self.encoder.state_dict().items()}
                files[ENCODER_FILE] = {"sha256": write_safetensors_atomic(tmp / ENCODER_FILE, state)}
                encoder_info = self.encoder.hyperparameters()
            manifest = {
                "kind": KIND,
                "schema_version": SCHEMA_VERSION,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "num_items": self.num_items,
                "tokens_per_item": self.tokens_per_item,
                "token_dim": self.token_dim,
                "item_encoder": encoder_info,
                "info": self.info,
                "files": files,
            }
            write_json_atomic(tmp / MANIFEST_FILE, manifest)
        return directory

    @classmethod
    def load(cls, directory: str | Path, with_encoder: bool = True) -> "ItemTokenTable":
        """Read a folder written by :meth:`save`, verifying every checksum and shape."""
        directory = Path(directory)
        manifest = read_json(directory / MANIFEST_FILE, f"item token table {directory}")
        if manifest.get("kind") != KIND:
            raise ArtifactError(f"{directory} is not an item token table (manifest kind {manifest.get('kind')!r}); run `recsys tokenize table`")
        files = manifest.get("files", {})
        tokens = read_safetensors_checked(directory / TOKENS_FILE, files.get(TOKENS_FILE, {}).get("sha256")).get("tokens")
        expected = (manifest.get("num_items"), manifest.get("tokens_per_item"), manifest.get("token_dim"))
        if tokens is None or tuple(tokens.shape) != expected or tokens.dtype != torch.float32:
            raise ArtifactError(f"{directory / TOKENS_FILE}: expected float32 'tokens' of shape {expected}; rebuild the table")
        verify_checksum(directory / ITEMS_FILE, files.get(ITEMS_FILE, {}).get("sha256"))
        items = pl.read_parquet(directory / ITEMS_FILE)
        items = items.with_columns(pl.lit(value, dtype=ITEM_COLUMNS[name]).alias(name)
                                   for name, value in OPTIONAL_ITEM_COLUMNS.items() if name not in items.columns)
        missing = set(ITEM_COLUMNS) - set(items.columns)
        if missing:
            raise ArtifactError(f"{directory / ITEMS_FILE} lacks columns {sorted(missing)}; rebuild the table")
        encoder = None
        hp = manifest.get("item_encoder")
        if with_encoder and hp and ENCODER_FILE in files:
            state = read_safetensors_checked(directory / ENCODER_FILE, files[ENCODER_FILE]["sha256"])
            encoder = ItemTokenEncoder.from_state_dict(state, hp["num_semantic_tokens"], hp["token_dim"],
                                                       hp.get("semantic", "autoencoder"))
        return cls(tokens, items, manifest.get("info", {}), encoder)


# --------------------------------------------------------------------------------------
# Building a table from the tokenizer artifacts, and cold start
# --------------------------------------------------------------------------------------


@dataclass
class TableConfig:
    """How ``recsys tokenize table`` builds a table for inspection.

    Attributes:
        num_semantic_tokens: N.
        token_dim: d (the backbone hidden size the recommender will use).
        seed: seeds the projection and autoencoder initial weights.
        pretrain: reconstruction-only pre-training of the autoencoder (epochs 0 = none).
    """

    num_semantic_tokens: int = 4
    token_dim: int = 64
    seed: int = 0
    pretrain: AutoencoderPretrainConfig = field(default_factory=lambda: AutoencoderPretrainConfig(epochs=0))


def build_item_encoder(
    data_dir: str | Path,
    cf_dir: str | Path,
    semantic_dir: str | Path | None,
    num_semantic_tokens: int = 4,
    token_dim: int = 64,
    seed: int = 0,
    semantic: str = "projection",
    cold_cf: str = "predicted",
) -> tuple[ItemTokenEncoder, pl.DataFrame]:
    """An untrained :class:`ItemTokenEncoder` over a prepared dataset's CF and text artifacts.

    Args:
        data_dir: the prepared dataset (its ``items.parquet`` gives the item map).
        cf_dir: output of ``recsys tokenize cf``.
        semantic_dir: output of ``recsys tokenize semantic``, or None for a CF-only encoder on data
            without item text (``model.token_set: cf``): its text embeddings are a zero placeholder
            column, so the semantic tokens are zero and unused, and ``cold_cf`` must be ``zero``.
        num_semantic_tokens / token_dim: N and d.
        seed: initial weights.
        semantic: how semantic tokens are made (:data:`~recsys.models.item_tokens.SEMANTIC_MODES`); with a text map it is
            fitted on the texts of items with a train interaction only.
        cold_cf: CF embeddings of items without a train interaction: ``predicted`` (from their text
            by a ridge map fitted here on the items with a train interaction and a CF row only,
            :func:`recsys.tokenizers.text_to_cf.fit_text_to_cf`; the encoder keeps the map for items
            added later) or ``zero`` (the unseen-item rule before issue 13).

    Returns:
        (encoder, items frame of the dataset).

    Example:
        >>> encoder, items = build_item_encoder("data/ml-100k", "art/cf", "art/semantic", 4, 64)
    """
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.tokenizers.cf import load_cf_embeddings
    from recsys.tokenizers.semantic import load_text_embeddings

    if num_semantic_tokens < 1 or token_dim < 1:
        raise ConfigError(f"num_semantic_tokens and token_dim must be >= 1, got {num_semantic_tokens} and {token_dim}")
    if cold_cf not in COLD_CF_MODES:
        raise ConfigError(f"cold_cf must be one of {COLD_CF_MODES}, got {cold_cf!r}")
    if semantic_dir is None and cold_cf != "zero":
        raise ConfigError("cold_cf 'predicted' maps item text to CF embeddings; without text (no semantic_dir) use cold_cf 'zero'")
    data = PreparedDataset.load(data_dir)
    cf, has_cf = load_cf_embeddings(cf_dir)  # rows without a train interaction are zero here
    if semantic_dir is None:
        text = torch.zeros(data.num_items, NO_TEXT_DIM)  # a placeholder: bundles record a text width >= 1
    else:
        text = load_text_embeddings(semantic_dir, num_items=data.num_items)
    if cf.shape[0] != data.num_items:
        raise ArtifactError(
            f"{cf_dir} has CF embeddings for {cf.shape[0]} items but {data_dir} has {data.num_items}; "
            "rebuild them from the same prepared dataset"
        )
    cf, has_cf = torch.as_tensor(cf).clone(), torch.as_tensor(has_cf)
    predicted, mapping = None, None
    if cold_cf == "predicted":
        from recsys.tokenizers.text_to_cf import fit_text_to_cf

        # warm = a train interaction (train split only) and a CF row; valid/test never enter the fit
        warm = has_cf & torch.from_numpy(data.train_item_mask())
        mapping = fit_text_to_cf(text, cf, warm, seed=seed)
        predicted = ~has_cf
        cf[predicted] = mapping.predict(text[predicted])
    torch.manual_seed(seed)
    encoder = ItemTokenEncoder(cf, has_cf, text, num_semantic_tokens, token_dim, semantic,
                               cf_predicted=predicted, text_to_cf=mapping)
    if semantic != "autoencoder":
        encoder.fit_text_projection(text[torch.from_numpy(data.train_item_mask())], seed=seed)
    return encoder, data.items


def build_item_table(
    data_dir: str | Path,
    cf_dir: str | Path,
    semantic_dir: str | Path,
    config: TableConfig | None = None,
    progress: bool = True,
) -> tuple[ItemTokenTable, dict]:
    """Build the table (autoencoder optionally pre-trained on reconstruction alone).

    The recommender trains the projection and autoencoder jointly; this table is for
    inspection and for checking the artifacts fit together before training.

    Returns:
        (table with its encoder, pre-training metrics or {}).

    Example:
        >>> table, metrics = build_item_table("data/ml-100k", "art/cf", "art/semantic", TableConfig(pretrain=AutoencoderPretrainConfig(epochs=20)))
    """
    from recsys.tokenizers.semantic import pretrain_autoencoder, text_embeddings_manifest

    config = config or TableConfig()
    encoder, items = build_item_encoder(data_dir, cf_dir, semantic_dir, config.num_semantic_tokens, config.token_dim, config.seed,
                                        semantic="autoencoder")  # the table artifact keeps its pre-trained autoencoder
    metrics: dict = {}
    if config.pretrain.epochs > 0:
        result = pretrain_autoencoder(encoder.text_embeddings, encoder.autoencoder, config.pretrain, progress=progress)
        metrics = result.metrics()
    semantic_manifest = text_embeddings_manifest(semantic_dir)
    info = {
        "dataset": {"path": str(Path(data_dir).resolve()), "fingerprint": semantic_manifest.get("dataset", {}).get("fingerprint")},
        "cf_dir": str(Path(cf_dir).resolve()),
        "semantic_dir": str(Path(semantic_dir).resolve()),
        "text_encoder": semantic_manifest.get("encoder", {}),
        "config": asdict(config),
        "pretrain_metrics": metrics,
    }
    texts = items["text"].to_list() if "text" in items.columns else None
    table = ItemTokenTable.from_encoder(encoder, items["item_id"].cast(pl.String).to_list(), texts, info)
    return table, metrics


def add_items_from_text(
    table: ItemTokenTable,
    item_ids: Sequence[str],
    texts: Sequence[str],
    text_encoder=None,
    cache=None,
    progress: bool = False,
) -> torch.Tensor:
    """Cold start: embed ``texts`` with the table's text encoder and append the items.

    Args:
        table: a table holding its item encoder (e.g. from :meth:`ItemTokenTable.load`).
        item_ids: new, distinct ids.
        texts: one non-empty text per id.
        text_encoder: a :class:`~recsys.tokenizers.text_encoder.TextEncoder`; None loads the
            one recorded in the table. Its fingerprint must match the recorded one.
        cache: optional embedding cache.
        progress: show a progress bar.

    Returns:
        item_idx of the new items.

    Example:
        >>> table = ItemTokenTable.load("art/table")
        >>> add_items_from_text(table, ["new-1"], ["cordless drill, 18V"]); table.save("art/table")
    """
    from recsys.tokenizers.text_encoder import TextEncoder, TextEncoderConfig, check_texts, embed_texts

    check_texts(texts, where="new items", ids=list(item_ids))
    recorded = table.info.get("text_encoder", {})
    if text_encoder is None:
        if not recorded.get("path"):
            raise ArtifactError("the table does not record its text encoder; pass the encoder explicitly")
        text_encoder = TextEncoder(
            TextEncoderConfig(path=recorded["path"], pooling=recorded.get("pooling"), normalize=recorded.get("normalize"), max_length=recorded.get("max_length"))
        )
    if recorded.get("fingerprint") and text_encoder.fingerprint != recorded["fingerprint"]:
        raise ArtifactError(
            f"text encoder {text_encoder.path} (fingerprint {text_encoder.fingerprint}) is not the one the table was built with "
            f"({recorded.get('path')}, fingerprint {recorded['fingerprint']}); use that encoder"
        )
    vectors, _ = embed_texts(list(texts), text_encoder, cache, progress=progress, ids=list(item_ids), where="new items")
    return table.add_items(item_ids, torch.from_numpy(vectors), texts)


# --------------------------------------------------------------------------------------
# Health report
# --------------------------------------------------------------------------------------


@dataclass
class HealthReport:
    """Sanity numbers of a token table.

    Attributes:
        num_items: items in the table.
        tokens_per_item: N+1.
        token_dim: d.
        reconstruction_mse: autoencoder MSE on all items' text embeddings (NaN without encoder).
        mean_cosine: mean cosine similarity over all pairs of distinct items (flattened token rows).
        max_cosine: largest such cosine among the pairs checked.
        near_duplicate_pairs: pairs checked with cosine above ``threshold``.
        threshold: the near-duplicate threshold.
        pairs_checked: pairs compared for max/near-duplicates (all, or those of a sample).
        sampled: True when max/near-duplicates come from a random sample of items.
        items_without_cf: items whose CF token is the bias (unseen-item rule).
        added_items: items added from text after the table was built.
    """

    num_items: int
    tokens_per_item: int
    token_dim: int
    reconstruction_mse: float
    mean_cosine: float
    max_cosine: float
    near_duplicate_pairs: int
    threshold: float
    pairs_checked: int
    sampled: bool
    items_without_cf: int
    added_items: int

    def metrics(self) -> dict[str, float]:
        """Numbers for MLflow (prefixed ``health_``; log them with :func:`recsys.tracking.log_metrics`)."""
        keys = ("num_items", "tokens_per_item", "reconstruction_mse", "mean_cosine", "max_cosine", "near_duplicate_pairs", "items_without_cf", "added_items")
        return {f"health_{k}": float(getattr(self, k)) for k in keys if not (isinstance(getattr(self, k), float) and math.isnan(getattr(self, k)))}

    def as_table(self) -> str:
        """A two-column text table."""
        rows = [
            ("items", f"{self.num_items}"),
            ("tokens per item (N+1)", f"{self.tokens_per_item}"),
            ("token dim (d)", f"{self.token_dim}"),
            ("reconstruction MSE", f"{self.reconstruction_mse:.6g}"),
            ("mean cosine (all pairs)", f"{self.mean_cosine:.4f}"),
            ("max cosine", f"{self.max_cosine:.4f}"),
            (f"near-duplicate pairs (cos > {self.threshold})", f"{self.near_duplicate_pairs}"),
            ("pairs checked", f"{self.pairs_checked}" + (" (sample)" if self.sampled else "")),
            ("items without CF (bias token)", f"{self.items_without_cf}"),
            ("items added from text", f"{self.added_items}"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  -----"]
        lines += [f"{name.ljust(width)}  {value}" for name, value in rows]
        return "\n".join(lines)


def health_report(
    table: ItemTokenTable,
    threshold: float = 0.99,
    max_pairwise_items: int = 20000,
    seed: int = 0,
    block: int = 4096,
) -> HealthReport:
    """Check a token table: reconstruction, similarity between items, near-duplicates.

    Items are compared by the cosine of their flattened token rows (the vectors the
    inner-product index ranks). The mean over all pairs is exact for any size
    (from the sum of unit vectors); max and near-duplicates compare every pair of up to
    ``max_pairwise_items`` items, else of a seeded sample of that many.

    Example:
        >>> print(health_report(ItemTokenTable.load("art/table")).as_table())
    """
    flat = table.tokens.flatten(1).float()
    n = flat.shape[0]
    unit = torch.nn.functional.normalize(flat, dim=1)
    nonzero = float((flat.norm(dim=1) > 0).sum())
    total = unit.sum(0)
    mean_cos = float((total @ total - nonzero) / (n * (n - 1))) if n > 1 else math.nan
    sampled = n > max_pairwise_items
    subset = unit
    if sampled:
        generator = torch.Generator().manual_seed(seed)
        subset = unit[torch.randperm(n, generator=generator)[:max_pairwise_items]]
    m = subset.shape[0]
    max_cos, near = -math.inf, 0
    for start in range(0, m, block):
        sims = subset[start : start + block] @ subset.T
        rows = torch.arange(start, min(start + block, m)).unsqueeze(1)
        upper = torch.arange(m).unsqueeze(0) > rows  # each pair once, never an item with itself
        sims = sims.masked_fill(~upper, -math.inf)
        if upper.any():
            max_cos = max(max_cos, float(sims.max()))
        near += int((sims > threshold).sum())
    recon = math.nan
    if table.encoder is not None:
        from recsys.tokenizers.semantic import reconstruction_mse

        recon = reconstruction_mse(table.encoder.autoencoder, table.encoder.text_embeddings)
    return HealthReport(
        num_items=n,
        tokens_per_item=table.tokens_per_item,
        token_dim=table.token_dim,
        reconstruction_mse=recon,
        mean_cosine=mean_cos,
        max_cosine=max_cos if m > 1 else math.nan,
        near_duplicate_pairs=near,
        threshold=threshold,
        pairs_checked=m * (m - 1) // 2,
        sampled=sampled,
        items_without_cf=int((~table.items["has_cf"]).sum()),
        added_items=int(table.items["added"].sum()),
    )
