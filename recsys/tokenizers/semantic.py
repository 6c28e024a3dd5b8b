"""Semantic tokens of an item from its text (ARCHITECTURE.md section 3.1).

A frozen text embedding z_i (all-MiniLM-L6-v2 by default, 384-d) passes through an MLP
autoencoder: the encoder (dz -> 512 -> 256 -> 128 -> N*d) gives the N semantic tokens,
the mirrored decoder reconstructs z_i. The autoencoder is trained jointly with the
recommender (weight alpha on its reconstruction MSE); :func:`pretrain_autoencoder`
trains it alone on reconstruction, for inspection.

The text embeddings of a prepared dataset are an artifact of their own, written by

    recsys tokenize semantic --data data/ml-100k --out artifacts/ml-100k/semantic

as ``text_embeddings.safetensors`` (tensor ``embeddings``, float32 (num_items, dz), row =
item_idx) plus ``manifest.json`` (encoder path and fingerprint, dataset fingerprint,
counts, file checksum); :func:`load_text_embeddings` reads it back.

Example:
    >>> ae = SemanticAutoencoder(text_dim=384, num_tokens=4, token_dim=64)
    >>> tokens = ae.encode(torch.randn(8, 384))      # (8, 4, 64)
    >>> loss = ae.reconstruction_loss(torch.randn(8, 384))
    >>> build_text_embeddings("data/ml-100k", "artifacts/ml-100k/semantic")
    >>> load_text_embeddings("artifacts/ml-100k/semantic").shape   # (1682, 384)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from recsys.errors import ArtifactError, ConfigError
from recsys.tokenizers.artifact_io import check_out_dir, read_json, read_safetensors_checked, write_json_atomic, write_safetensors_atomic
from recsys.tokenizers.text_encoder import (
    EmbedStats,
    EmbeddingCache,
    TextEncoder,
    TextEncoderConfig,
    default_cache_dir,
    embed_texts,
)

SCHEMA_VERSION = 1
KIND = "text_embeddings"
EMBEDDINGS_FILE = "text_embeddings.safetensors"
MANIFEST_FILE = "manifest.json"

HIDDEN_SIZES = (512, 256, 128)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SemanticAutoencoder(nn.Module):
    """MLP autoencoder from a text embedding to N semantic tokens of size d and back.

    Args:
        text_dim: size of the frozen text embedding (dz).
        num_tokens: N, semantic tokens per item.
        token_dim: d, the backbone hidden size.
        hidden_sizes: encoder hidden layers; the decoder mirrors them.
    """

    def __init__(
        self,
        text_dim: int,
        num_tokens: int,
        token_dim: int,
        hidden_sizes: tuple[int, ...] = HIDDEN_SIZES,
    ) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.num_tokens = num_tokens
        self.token_dim = token_dim
        sizes = [text_dim, *hidden_sizes, num_tokens * token_dim]
        self.encoder = _mlp(sizes)
        self.decoder = _mlp(sizes[::-1])

    def encode(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, dz) text embeddings -> (B, N, d) semantic tokens."""
        flat = self.encoder(text_embeddings)
        return flat.view(*text_embeddings.shape[:-1], self.num_tokens, self.token_dim)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, d) semantic tokens -> (B, dz) reconstructed text embeddings."""
        return self.decoder(tokens.flatten(-2))

    def forward(self, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (tokens, reconstruction)."""
        tokens = self.encode(text_embeddings)
        return tokens, self.decode(tokens)

    def reconstruction_loss(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error of the text embeddings."""
        _, reconstruction = self(text_embeddings)
        return nn.functional.mse_loss(reconstruction, text_embeddings)


# --------------------------------------------------------------------------------------
# Text embeddings of a prepared dataset
# --------------------------------------------------------------------------------------


@dataclass
class SemanticConfig:
    """How ``recsys tokenize semantic`` embeds a catalogue.

    Attributes:
        encoder: the text encoder (model directory, batch size, pooling).
        cache_dir: embedding cache root; None means :func:`default_cache_dir`.
        use_cache: read and write the cache; False embeds every text.
        progress: show a progress bar.
    """

    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    cache_dir: str | None = None
    use_cache: bool = True
    progress: bool = True


def open_cache(encoder: TextEncoder, config: SemanticConfig) -> EmbeddingCache | None:
    """The cache of ``encoder`` that ``config`` asks for (None when caching is off)."""
    if not config.use_cache:
        return None
    root = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    return EmbeddingCache(root, encoder.fingerprint, encoder.dim)


def build_text_embeddings(
    data_dir: str | Path,
    out_dir: str | Path,
    config: SemanticConfig | None = None,
    encoder: TextEncoder | None = None,
) -> tuple[Path, EmbedStats]:
    """Embed every item text of a prepared dataset and write the artifact to ``out_dir``.

    Args:
        data_dir: prepared dataset (``items.parquet`` with ``item_idx`` 0..n-1 and ``text``).
        out_dir: output folder; gets ``text_embeddings.safetensors`` and ``manifest.json``.
        config: :class:`SemanticConfig`.
        encoder: an already loaded :class:`TextEncoder` (else built from ``config.encoder``).

    Returns:
        (out_dir, stats of the embedding call).

    Example:
        >>> out, stats = build_text_embeddings("data/ml-100k", "artifacts/ml-100k/semantic")
        >>> stats.encoded, stats.cache_hits
    """
    from recsys.pipelines.prepared import PreparedDataset

    config = config or SemanticConfig()
    data = PreparedDataset.load(data_dir)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    items = data.items
    items_file = Path(data_dir) / "items.parquet"
    if "text" not in items.columns:
        raise ArtifactError(f"{items_file} has no 'text' column; re-run `recsys data prepare`")
    expected = list(range(items.height))
    if items["item_idx"].to_list() != expected:
        raise ArtifactError(f"{items_file}: item_idx must be 0..{items.height - 1} without gaps; re-run `recsys data prepare`")
    encoder = encoder or TextEncoder(config.encoder)
    texts = items["text"].to_list()
    ids = items["item_id"].to_list() if "item_id" in items.columns else None
    vectors, stats = embed_texts(texts, encoder, open_cache(encoder, config), progress=config.progress, ids=ids, where=str(items_file))
    embeddings = torch.from_numpy(vectors)
    digest = write_safetensors_atomic(out_dir / EMBEDDINGS_FILE, {"embeddings": embeddings})
    manifest = {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "encoder": encoder.describe(),
        "dataset": {"path": str(Path(data_dir).resolve()), "fingerprint": data.fingerprint, "num_items": items.height},
        "shape": list(embeddings.shape),
        "counts": {
            "texts": stats.texts,
            "unique_texts": stats.unique_texts,
            "duplicate_texts": stats.texts - stats.unique_texts,
            "cache_hits": stats.cache_hits,
            "encoded": stats.encoded,
            "empty_texts": 0,
        },
        "seconds": round(stats.seconds, 3),
        "files": {EMBEDDINGS_FILE: {"sha256": digest}},
    }
    write_json_atomic(out_dir / MANIFEST_FILE, manifest)
    return out_dir, stats


def _check_out_dir(out_dir: Path) -> None:
    check_out_dir(out_dir, KIND, "the text embeddings")


def text_embeddings_manifest(directory: str | Path) -> dict:
    """The parsed ``manifest.json`` of a text-embeddings folder, checked to be one."""
    manifest = read_json(Path(directory) / MANIFEST_FILE, f"text embeddings {directory}")
    if manifest.get("kind") != KIND:
        raise ArtifactError(f"{directory} does not hold text embeddings (manifest kind {manifest.get('kind')!r}); run `recsys tokenize semantic`")
    return manifest


def load_text_embeddings(directory: str | Path, num_items: int | None = None) -> torch.Tensor:
    """Read ``text_embeddings.safetensors`` after checking checksum, dtype and shape.

    Args:
        directory: folder written by ``recsys tokenize semantic``.
        num_items: when given, the row count must equal it (the catalogue size).

    Returns:
        (num_items, dz) float32 tensor; row i is item_idx i.

    Example:
        >>> load_text_embeddings("artifacts/ml-100k/semantic", num_items=1682).shape   # (1682, 384)
    """
    directory = Path(directory)
    manifest = text_embeddings_manifest(directory)
    expected_sha = manifest.get("files", {}).get(EMBEDDINGS_FILE, {}).get("sha256")
    tensors = read_safetensors_checked(directory / EMBEDDINGS_FILE, expected_sha)
    if "embeddings" not in tensors:
        raise ArtifactError(f"{directory / EMBEDDINGS_FILE} has no tensor 'embeddings' (found {sorted(tensors)})")
    embeddings = tensors["embeddings"]
    if embeddings.dtype != torch.float32 or embeddings.ndim != 2:
        raise ArtifactError(f"{directory / EMBEDDINGS_FILE}: 'embeddings' must be float32 2-D, got {embeddings.dtype} {tuple(embeddings.shape)}")
    if list(embeddings.shape) != list(manifest.get("shape", embeddings.shape)):
        raise ArtifactError(f"{directory / EMBEDDINGS_FILE}: shape {tuple(embeddings.shape)} differs from the manifest's {manifest.get('shape')}")
    if num_items is not None and embeddings.shape[0] != num_items:
        raise ArtifactError(
            f"{directory / EMBEDDINGS_FILE} has {embeddings.shape[0]} rows but the catalogue has {num_items} items; "
            "rebuild it from the same prepared dataset"
        )
    if not torch.isfinite(embeddings).all():
        raise ArtifactError(f"{directory / EMBEDDINGS_FILE} contains NaN or infinite values; rebuild it")
    return embeddings


# --------------------------------------------------------------------------------------
# Pre-training the autoencoder alone (inspection)
# --------------------------------------------------------------------------------------


@dataclass
class AutoencoderPretrainConfig:
    """Reconstruction-only training of :class:`SemanticAutoencoder`.

    Attributes:
        epochs: passes over the training items.
        batch_size: items per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        val_fraction: share of items held out to report validation MSE (0 = none).
        seed: seeds the split, the shuffling and the initial weights of a new autoencoder.
    """

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    seed: int = 0


@dataclass
class PretrainResult:
    """Outcome of :func:`pretrain_autoencoder`.

    Attributes:
        autoencoder: the trained module (eval mode).
        train_mse: mean training MSE per epoch.
        val_mse: held-out MSE after each epoch (empty without a validation share).
        initial_mse: MSE on all items before training.
        final_mse: MSE on all items after training.
    """

    autoencoder: SemanticAutoencoder
    train_mse: list[float]
    val_mse: list[float]
    initial_mse: float
    final_mse: float

    def metrics(self) -> dict[str, float]:
        out = {"ae_initial_mse": self.initial_mse, "ae_final_mse": self.final_mse}
        if self.train_mse:
            out["ae_train_mse"] = self.train_mse[-1]
        if self.val_mse:
            out["ae_val_mse"] = self.val_mse[-1]
        return out


@torch.no_grad()
def reconstruction_mse(autoencoder: SemanticAutoencoder, text_embeddings: torch.Tensor, batch_size: int = 8192) -> float:
    """Mean squared reconstruction error over all rows, in batches."""
    if text_embeddings.shape[0] == 0:
        return math.nan
    total = 0.0
    for start in range(0, text_embeddings.shape[0], batch_size):
        batch = text_embeddings[start : start + batch_size]
        _, rec = autoencoder(batch)
        total += float(((rec - batch) ** 2).sum())
    return total / text_embeddings.numel()


def pretrain_autoencoder(
    text_embeddings: torch.Tensor,
    autoencoder: SemanticAutoencoder,
    config: AutoencoderPretrainConfig | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Train ``autoencoder`` on reconstruction of ``text_embeddings`` alone (in place).

    Args:
        text_embeddings: (num_items, dz) float32.
        autoencoder: the module to train (its ``text_dim`` must equal dz).
        config: :class:`AutoencoderPretrainConfig`.
        progress: show a tqdm bar over epochs.

    Example:
        >>> ae = SemanticAutoencoder(384, num_tokens=4, token_dim=64)
        >>> result = pretrain_autoencoder(load_text_embeddings(d), ae, AutoencoderPretrainConfig(epochs=20))
        >>> result.final_mse < result.initial_mse
    """
    from tqdm.auto import tqdm

    config = config or AutoencoderPretrainConfig()
    if text_embeddings.ndim != 2 or text_embeddings.shape[1] != autoencoder.text_dim:
        raise ConfigError(f"text embeddings of shape {tuple(text_embeddings.shape)} do not fit an autoencoder for dz={autoencoder.text_dim}")
    if not 0.0 <= config.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {config.val_fraction}")
    if config.epochs < 0 or config.batch_size < 1:
        raise ConfigError(f"epochs must be >= 0 and batch_size >= 1, got {config.epochs} and {config.batch_size}")
    data = text_embeddings.float()
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(data.shape[0], generator=generator)
    num_val = int(round(config.val_fraction * data.shape[0])) if data.shape[0] > 1 else 0
    val, train = data[order[:num_val]], data[order[num_val:]]
    autoencoder.eval()
    initial = reconstruction_mse(autoencoder, data)
    optimizer = torch.optim.AdamW(autoencoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_curve: list[float] = []
    val_curve: list[float] = []
    for _ in tqdm(range(config.epochs), desc="autoencoder pre-training", unit="epoch", disable=not progress):
        autoencoder.train()
        perm = torch.randperm(train.shape[0], generator=generator)
        total, seen = 0.0, 0
        for start in range(0, train.shape[0], config.batch_size):
            batch = train[perm[start : start + config.batch_size]]
            loss = autoencoder.reconstruction_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * batch.shape[0]
            seen += batch.shape[0]
        train_curve.append(total / max(seen, 1))
        autoencoder.eval()
        if num_val:
            val_curve.append(reconstruction_mse(autoencoder, val))
    autoencoder.eval()
    return PretrainResult(autoencoder, train_curve, val_curve, initial, reconstruction_mse(autoencoder, data))


def pretrain_config_dict(config: AutoencoderPretrainConfig) -> dict:
    """``config`` as a plain dict (MLflow params, manifests)."""
    return asdict(config)
