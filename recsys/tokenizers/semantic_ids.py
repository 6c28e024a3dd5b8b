"""Token-sequence semantic ids for the TIGER baseline: residual k-means (RQ-KMeans) over text embeddings.

Level 1 clusters the text embeddings into ``codes`` centroids; every next level clusters
what is left (the residual) after subtracting the chosen centroid. An item's id is its
``levels`` centroid numbers plus one extra digit that tells apart items whose prefixes
collide (0, 1, 2, ... in item_idx order), so ids are unique. Each level's k-means is fit
on a seeded sample of at most ``train_sample`` residuals and then assigns every item,
so results are deterministic for a seed.

Two implementations sit behind one signature: ``backend="numpy"`` is the readable
reference (Lloyd iterations in numpy), ``backend="faiss"`` the fast path (FAISS
``Kmeans`` from the same initial centroids, ``IndexFlatL2`` assignment); a test holds
them to the same codes.

Command:
    recsys tokenize ids --data data/ml-100k --semantic artifacts/ml-100k/semantic --out artifacts/ml-100k/ids

Example:
    >>> ids = build_semantic_ids(load_text_embeddings("artifacts/ml-100k/semantic"), levels=3, codes=256, seed=0)
    >>> ids.codes.shape, ids.stats["collision_rate"]   # ((1682, 4), ...)
    >>> ids.save("artifacts/ml-100k/ids"); SemanticIds.load("artifacts/ml-100k/ids")
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from recsys.errors import ArtifactError, ConfigError
from recsys.tokenizers.artifact_io import read_json, read_safetensors_checked, write_json_atomic, write_safetensors_atomic

SCHEMA_VERSION = 1
KIND = "semantic_ids"
IDS_FILE = "semantic_ids.safetensors"
MANIFEST_FILE = "manifest.json"
#: The k-means backends: faiss (fast path) or numpy (reference).
Backend = Literal["faiss", "numpy"]
BACKENDS = get_args(Backend)


@dataclass
class SemanticIdConfig:
    """Residual k-means settings.

    Attributes:
        levels: number of k-means levels (digits before the extra one).
        codes: centroids per level; capped at the number of items (reported in the stats).
        seed: seeds the training samples and initial centroids of every level.
        niter: Lloyd iterations per level.
        train_sample: at most this many residuals fit each level's k-means (all items are
            assigned); None uses every item.
        backend: "faiss" (fast path) or "numpy" (reference).
    """

    levels: int = 3
    codes: int = 256
    seed: int = 0
    niter: int = 20
    train_sample: int | None = 65536
    backend: Backend = "faiss"

    def validate(self) -> None:
        if self.levels < 1:
            raise ConfigError(f"levels: must be >= 1, got {self.levels}")
        if self.codes < 1:
            raise ConfigError(f"codes: must be >= 1, got {self.codes}")
        if self.niter < 1:
            raise ConfigError(f"niter: must be >= 1, got {self.niter}")
        if self.train_sample is not None and self.train_sample < 1:
            raise ConfigError(f"train_sample: must be >= 1 or None, got {self.train_sample}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: must be one of {BACKENDS}, got {self.backend!r}")


# --------------------------------------------------------------------------------------
# Reference implementation (numpy)
# --------------------------------------------------------------------------------------


def nearest_numpy(x: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Index of the nearest centroid (squared L2) of every row of ``x``; int64 (n,)."""
    c_norm = (centroids.astype(np.float32) ** 2).sum(1)
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk]
        dist = c_norm[None, :] - 2.0 * (block @ centroids.T)
        out[start : start + chunk] = dist.argmin(1)
    return out


def kmeans_numpy(x: np.ndarray, init: np.ndarray, niter: int) -> np.ndarray:
    """Lloyd's k-means from ``init`` centroids; (k, dim) float32.

    An emptied cluster takes the point farthest from its current centroid, so the
    result stays deterministic.
    """
    centroids = init.astype(np.float32).copy()
    k = centroids.shape[0]
    for _ in range(niter):
        assign = nearest_numpy(x, centroids)
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        if not filled.all():
            dist = ((x - centroids[assign]) ** 2).sum(1)
            for cluster in np.flatnonzero(~filled):
                far = int(dist.argmax())
                centroids[cluster] = x[far]
                dist[far] = -1.0
    return centroids


# --------------------------------------------------------------------------------------
# Fast path (FAISS)
# --------------------------------------------------------------------------------------


def nearest_faiss(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Same as :func:`nearest_numpy` through a FAISS ``IndexFlatL2``."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return found[:, 0].astype(np.int64)


def kmeans_faiss(x: np.ndarray, init: np.ndarray, niter: int) -> np.ndarray:
    """Same as :func:`kmeans_numpy` through FAISS (no subsampling, same initial centroids)."""
    import faiss

    k, dim = init.shape
    kmeans = faiss.Kmeans(
        dim,
        k,
        niter=niter,
        seed=1,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=x.shape[0] // k + 1,
    )
    kmeans.train(np.ascontiguousarray(x, dtype=np.float32), init_centroids=np.ascontiguousarray(init, dtype=np.float32))
    return np.asarray(kmeans.centroids, dtype=np.float32)


_KMEANS = {"numpy": kmeans_numpy, "faiss": kmeans_faiss}
_NEAREST = {"numpy": nearest_numpy, "faiss": nearest_faiss}


# --------------------------------------------------------------------------------------
# Semantic ids
# --------------------------------------------------------------------------------------


@dataclass
class SemanticIds:
    """Semantic ids of a catalogue.

    Attributes:
        codes: (num_items, levels + 1) int64; the last column is the extra digit.
        codebooks: (levels, codes, dim) float32 centroids of each level.
        config: the :class:`SemanticIdConfig` used.
        stats: collision rate before the extra digit, utilisation per level, residual MSE
            per level, the effective number of codes, seconds.
    """

    codes: torch.Tensor
    codebooks: torch.Tensor
    config: SemanticIdConfig
    stats: dict = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[0])

    def assign_prefix(self, embeddings: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The first ``levels`` digits for new embeddings (nearest centroid per level); (n, levels)."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.codebooks.shape[2]:
            raise ConfigError(f"embeddings must be (n, {self.codebooks.shape[2]}), got {x.shape}")
        residual = x.copy()
        out = np.empty((x.shape[0], self.codebooks.shape[0]), dtype=np.int64)
        for level, book in enumerate(self.codebooks.numpy()):
            out[:, level] = nearest_numpy(residual, book)
            residual -= book[out[:, level]]
        return torch.from_numpy(out)

    def save(self, directory: str | Path) -> Path:
        """Write ``semantic_ids.safetensors`` and ``manifest.json`` (atomic, with checksum)."""
        directory = Path(directory)
        digest = write_safetensors_atomic(directory / IDS_FILE, {"codes": self.codes, "codebooks": self.codebooks})
        manifest = {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "config": asdict(self.config),
            "stats": self.stats,
            "shape": list(self.codes.shape),
            "files": {IDS_FILE: {"sha256": digest}},
        }
        write_json_atomic(directory / MANIFEST_FILE, manifest)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "SemanticIds":
        """Read a folder written by :meth:`save`, verifying the checksum and shapes."""
        directory = Path(directory)
        manifest = read_json(directory / MANIFEST_FILE, f"semantic ids {directory}")
        if manifest.get("kind") != KIND:
            raise ArtifactError(f"{directory} does not hold semantic ids (manifest kind {manifest.get('kind')!r}); run `recsys tokenize ids`")
        tensors = read_safetensors_checked(directory / IDS_FILE, manifest.get("files", {}).get(IDS_FILE, {}).get("sha256"))
        codes, books = tensors.get("codes"), tensors.get("codebooks")
        config = SemanticIdConfig(**manifest["config"])
        if codes is None or books is None or codes.dtype != torch.int64 or codes.ndim != 2 or codes.shape[1] != config.levels + 1:
            raise ArtifactError(f"{directory / IDS_FILE}: expected int64 'codes' (n, {config.levels + 1}) and 'codebooks'; rebuild it")
        return cls(codes, books, config, manifest.get("stats", {}))


def _extra_digit(prefix: np.ndarray) -> tuple[np.ndarray, int]:
    """Per item, its rank (item_idx order) among items with the same prefix; and the number of unique prefixes."""
    _, group = np.unique(prefix, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.lexsort((np.arange(len(group)), group))
    sorted_groups = group[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(group)]))
    extra = np.empty(len(group), dtype=np.int64)
    extra[order] = np.arange(len(group)) - first
    return extra, len(starts)


def build_semantic_ids(
    embeddings: torch.Tensor | np.ndarray,
    levels: int = 3,
    codes: int = 256,
    seed: int = 0,
    *,
    niter: int = 20,
    train_sample: int | None = 65536,
    backend: str = "faiss",
) -> SemanticIds:
    """Residual k-means semantic ids with a uniqueness digit.

    Args:
        embeddings: (num_items, dim) text embeddings, row = item_idx.
        levels: k-means levels.
        codes: centroids per level (capped at num_items; ``stats["codes_capped"]`` says so).
        seed: makes the ids reproducible.
        niter: Lloyd iterations per level.
        train_sample: residuals sampled to fit each level (None = all).
        backend: "faiss" or "numpy" (reference); same codes for the same inputs.

    Returns:
        :class:`SemanticIds` with codes (num_items, levels + 1).

    Example:
        >>> ids = build_semantic_ids(torch.randn(1000, 32), levels=2, codes=16, seed=0)
        >>> ids.codes.unique(dim=0).shape[0] == 1000
    """
    config = SemanticIdConfig(levels, codes, seed, niter, train_sample, backend)
    config.validate()
    x = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ConfigError(f"embeddings must be a non-empty (num_items, dim) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ConfigError("embeddings contain NaN or infinite values; rebuild the text embeddings")
    start = time.perf_counter()
    n, dim = x.shape
    k = min(codes, n)
    residual = x.copy()
    prefix = np.empty((n, levels), dtype=np.int64)
    books = np.empty((levels, k, dim), dtype=np.float32)
    utilisation, residual_mse = [], []
    for level in range(levels):
        rng = np.random.default_rng([seed, level])
        sample = residual if train_sample is None or train_sample >= n else residual[np.sort(rng.choice(n, train_sample, replace=False))]
        init = sample[np.sort(rng.choice(sample.shape[0], k, replace=False))]
        books[level] = _KMEANS[backend](sample, init, niter)
        prefix[:, level] = _NEAREST[backend](residual, books[level])
        residual -= books[level][prefix[:, level]]
        utilisation.append(float(np.unique(prefix[:, level]).size / k))
        residual_mse.append(float((residual.astype(np.float64) ** 2).sum(1).mean()))
    extra, unique_prefixes = _extra_digit(prefix)
    stats = {
        "num_items": n,
        "dim": dim,
        "levels": levels,
        "codes_requested": codes,
        "codes": k,
        "codes_capped": k < codes,
        "unique_prefixes": unique_prefixes,
        "collision_rate": float((n - unique_prefixes) / n),
        "max_items_per_prefix": int(extra.max()) + 1,
        "utilisation_per_level": utilisation,
        "residual_mse_per_level": residual_mse,
        "input_mse": float((x.astype(np.float64) ** 2).sum(1).mean()),
        "backend": backend,
        "seconds": round(time.perf_counter() - start, 3),
    }
    codes_out = np.concatenate([prefix, extra[:, None]], axis=1)
    return SemanticIds(torch.from_numpy(codes_out), torch.from_numpy(books), config, stats)
