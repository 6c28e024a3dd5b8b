"""FAISS inner-product index over the flattened item-token table, with request filters.

An item vector is its (N+1, d) token row flattened to ``(N+1)*d``; a query vector is
``concat((1 - beta) h_0, beta h_1, ..., beta h_N)``; the score is their inner product
(ARCHITECTURE.md section 3.3). ``kind="exact"`` (the default, ``IndexFlatIP``) ranks
exactly like the model's ``score_all``; ``"ivf"`` and ``"hnsw"`` are for catalogues past
a million items. Their recall@10 against exact search is tested only on 3,000 clustered
synthetic vectors (tests/serving/test_index.py: >= 0.97 at the default settings, growing with
``nprobe`` / ``ef_search``); it is not benchmarked on real catalogues.

Filters (history exclusion, an exclude list, a candidate list) never return fewer than
k items when k are available: the index is asked for ``k + len(excluded)`` items
(times ``overfetch`` for approximate kinds) and any query still short of
``min(k, available)`` falls back to exact scoring over the stored vectors. A candidate
list is always scored exactly (it is small and bounded by the API).

With a GPU build of FAISS and a GPU present (``use_gpu="auto"``), the FAISS index is
moved to GPU 0; the same code runs on the CPU build.

Example:
    >>> index = ItemIndex.from_table(torch.randn(1000, 5, 64))
    >>> result = index.search(queries, k=10, exclude=[{3, 7}, set()])
    >>> result.ids[0], result.scores[0]
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from recsys.errors import ArtifactError, ConfigError


@dataclass
class IndexConfig:
    """How the item index is built and searched."""

    kind: Literal["exact", "ivf", "hnsw"] = "exact"
    """``exact`` (IndexFlatIP, the default and the only kind whose ranking equals the
    model's); ``ivf`` (IndexIVFFlat) or ``hnsw`` (IndexHNSWFlat) for catalogues past a
    million items."""
    nlist: int = 0
    """IVF: number of inverted lists; 0 picks ``4 * sqrt(num_items)``."""
    nprobe: int = 32
    """IVF: lists probed per query."""
    hnsw_m: int = 32
    """HNSW: neighbours per node."""
    ef_search: int = 128
    """HNSW: search beam width (raised to the number of items asked for when larger)."""
    ef_construction: int = 80
    """HNSW: build beam width."""
    overfetch: float = 2.0
    """Approximate kinds: ask the index for this many times ``k + excluded`` items."""
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    """``auto`` moves the FAISS index to GPU 0 when the FAISS build and a GPU allow it;
    ``yes`` fails when they do not; ``no`` stays on the CPU."""

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "ivf", "hnsw"):
            raise ConfigError(f"index.kind must be exact, ivf or hnsw, got {self.kind!r}")
        if self.use_gpu not in ("auto", "yes", "no"):
            raise ConfigError(f"index.use_gpu must be auto, yes or no, got {self.use_gpu!r}")
        if self.overfetch < 1.0:
            raise ConfigError(f"index.overfetch must be >= 1, got {self.overfetch}")


@dataclass
class SearchResult:
    """Top-k items per query, best first, ties broken by the smaller item index.

    Attributes:
        ids: one int64 array per query (length ``min(k, available items)``).
        scores: the matching float32 inner products.
        fallbacks: how many queries were answered by the exact fallback.
    """

    ids: list[np.ndarray]
    scores: list[np.ndarray]
    fallbacks: int = 0


def gpu_available() -> bool:
    """True when the installed FAISS has GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def exact_topk(
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    exclude: Sequence[set[int] | frozenset[int]] | None = None,
    candidates: Sequence[Sequence[int] | None] | None = None,
) -> SearchResult:
    """Reference search: full inner-product scores, filters applied, sort by (-score, id).

    Args:
        vectors: (num_items, D) item vectors.
        queries: (B, D) query vectors.
        k: items wanted per query.
        exclude: item indices to drop, per query.
        candidates: when given for a query, only these item indices are eligible.

    Example:
        >>> exact_topk(np.eye(3, dtype=np.float32), np.ones((1, 3), np.float32), k=2).ids
    """
    out_ids, out_scores = [], []
    for row, query in enumerate(np.asarray(queries, dtype=np.float32)):
        pool = None if candidates is None or candidates[row] is None else np.unique(np.asarray(candidates[row], dtype=np.int64))
        if pool is None:
            ids = np.arange(vectors.shape[0], dtype=np.int64)
            scores = vectors @ query
        else:
            pool = pool[(pool >= 0) & (pool < vectors.shape[0])]
            ids = pool
            scores = vectors[pool] @ query if pool.size else np.zeros(0, np.float32)
        if exclude is not None and exclude[row]:
            keep = ~np.isin(ids, np.fromiter(exclude[row], dtype=np.int64, count=len(exclude[row])))
            ids, scores = ids[keep], scores[keep]
        take = min(k, ids.size)
        if take < ids.size:
            # Everything scoring at least the k-th best, then an exact (-score, id) sort.
            kth = -np.partition(-scores, take - 1)[take - 1]
            sel = scores >= kth
            ids, scores = ids[sel], scores[sel]
        order = np.lexsort((ids, -scores))[:take]
        out_ids.append(ids[order])
        out_scores.append(scores[order].astype(np.float32))
    return SearchResult(out_ids, out_scores)


class ItemIndex:
    """Inner-product index over item vectors with filters and runtime insertion.

    Args:
        vectors: (num_items, D) float32 item vectors (flattened token rows).
        config: how to build and search.

    Thread-safe: searches and insertions take one lock (FAISS search is itself
    multi-threaded, so the service batches queries instead of running searches in parallel).
    """

    def __init__(self, vectors: np.ndarray, config: IndexConfig | None = None) -> None:
        import faiss

        self.config = config or IndexConfig()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] == 0:
            raise ArtifactError(f"item vectors must be a non-empty 2-D array, got shape {vectors.shape}")
        self.dim = int(vectors.shape[1])
        self._lock = threading.RLock()
        self._vectors = vectors
        self._count = vectors.shape[0]
        self.on_gpu = False
        cpu_index = self._build(vectors)
        self._index = self._maybe_to_gpu(cpu_index)
        self._faiss = faiss

    # ----------------------------------------------------------------- building
    @classmethod
    def from_table(cls, table, config: IndexConfig | None = None) -> "ItemIndex":
        """Index a (num_items, N+1, d) token table (torch tensor or numpy array)."""
        array = table.detach().cpu().float().numpy() if hasattr(table, "detach") else np.asarray(table, np.float32)
        return cls(array.reshape(array.shape[0], -1), config)

    def _build(self, vectors: np.ndarray):
        import faiss

        cfg = self.config
        if cfg.kind == "exact":
            index = faiss.IndexFlatIP(self.dim)
        elif cfg.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
            index.hnsw.efSearch = cfg.ef_search
        else:
            nlist = cfg.nlist or max(1, int(4 * np.sqrt(vectors.shape[0])))
            nlist = min(nlist, vectors.shape[0])
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            sample = vectors if vectors.shape[0] <= 64 * nlist else vectors[rng.choice(vectors.shape[0], 64 * nlist, replace=False)]
            index.train(sample)
            index.nprobe = min(cfg.nprobe, nlist)
            self._quantizer = quantizer  # keep alive: the IVF index does not own it
        index.add(vectors)
        return index

    def _maybe_to_gpu(self, cpu_index):
        import faiss

        wanted = self.config.use_gpu
        if wanted == "no":
            return cpu_index
        if not gpu_available():
            if wanted == "yes":
                raise ConfigError("index.use_gpu=yes but FAISS has no GPU support here or sees no GPU; use auto or no")
            return cpu_index
        if self.config.kind == "hnsw":
            return cpu_index  # FAISS has no GPU HNSW; stays on the CPU
        self._gpu_resources = faiss.StandardGpuResources()
        self.on_gpu = True
        return faiss.index_cpu_to_gpu(self._gpu_resources, 0, cpu_index)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self._count

    @property
    def vectors(self) -> np.ndarray:
        """(num_items, D) view of the stored item vectors."""
        return self._vectors[: self._count]

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append item vectors; returns their new item indices. Searchable immediately.

        Example:
            >>> new_ids = index.add(np.random.randn(2, index.dim).astype("float32"))
        """
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise ConfigError(f"item vector has size {vectors.shape[1]}, the index holds size {self.dim}")
        with self._lock:
            start = self._count
            needed = start + vectors.shape[0]
            if needed > self._vectors.shape[0]:
                grown = np.empty((max(needed, 2 * self._vectors.shape[0]), self.dim), np.float32)
                grown[:start] = self._vectors[:start]
                self._vectors = grown
            self._vectors[start:needed] = vectors
            self._index.add(vectors)
            self._count = needed
            return np.arange(start, needed, dtype=np.int64)

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[set[int] | frozenset[int]] | None = None,
        candidates: Sequence[Sequence[int] | None] | None = None,
    ) -> SearchResult:
        """Top-k items per query with filters; same signature and result as :func:`exact_topk`.

        Args:
            queries: (B, D) query vectors.
            k: items wanted per query (>= 1).
            exclude: item indices to drop, per query (history, exclude list).
            candidates: when given for a query, only these items are eligible.

        Example:
            >>> index.search(q, k=10, exclude=[{1, 2}], candidates=[None]).ids[0]
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ConfigError(f"query vector has size {queries.shape[1]}, the index holds size {self.dim}")
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        batch = queries.shape[0]
        exclude = list(exclude) if exclude is not None else [frozenset()] * batch
        candidates = list(candidates) if candidates is not None else [None] * batch
        ids: list[np.ndarray | None] = [None] * batch
        scores: list[np.ndarray | None] = [None] * batch
        fallbacks = 0
        with self._lock:
            total = self._count
            vectors = self.vectors
            # Candidate lists: exact scoring of the (small) pool.
            pooled = [row for row in range(batch) if candidates[row] is not None]
            if pooled:
                exact = exact_topk(vectors, queries[pooled], k, [exclude[r] for r in pooled], [candidates[r] for r in pooled])
                for i, row in enumerate(pooled):
                    ids[row], scores[row] = exact.ids[i], exact.scores[i]
            free = [row for row in range(batch) if candidates[row] is None]
            if free:
                widest = max(len(exclude[row]) for row in free)
                fetch = k + widest
                if self.config.kind != "exact":
                    fetch = int(np.ceil(fetch * self.config.overfetch))
                fetch = min(fetch, total)
                self._tune(fetch)
                found_scores, found_ids = self._index.search(queries[free], fetch)
                short = []
                for i, row in enumerate(free):
                    row_ids, row_scores = found_ids[i], found_scores[i]
                    keep = row_ids >= 0
                    if exclude[row]:
                        keep &= ~np.isin(row_ids, np.fromiter(exclude[row], np.int64, len(exclude[row])))
                    row_ids, row_scores = row_ids[keep], row_scores[keep]
                    available = total - sum(1 for item in exclude[row] if 0 <= item < total)
                    if row_ids.size < min(k, available):
                        short.append(row)
                        continue
                    order = np.lexsort((row_ids, -row_scores))[:k]
                    ids[row], scores[row] = row_ids[order].astype(np.int64), row_scores[order].astype(np.float32)
                if short:
                    fallbacks = len(short)
                    exact = exact_topk(vectors, queries[short], k, [exclude[r] for r in short])
                    for i, row in enumerate(short):
                        ids[row], scores[row] = exact.ids[i], exact.scores[i]
        return SearchResult(ids, scores, fallbacks)  # type: ignore[arg-type]

    def _tune(self, fetch: int) -> None:
        """Widen the HNSW beam to at least the number of items asked for."""
        if self.config.kind == "hnsw":
            self._index.hnsw.efSearch = max(self.config.ef_search, fetch)

    # ------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the FAISS index (moved to the CPU first) to ``path``."""
        import faiss

        with self._lock:
            index = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index
            faiss.write_index(index, str(path))

    @classmethod
    def load(cls, path: str | Path, vectors: np.ndarray, config: IndexConfig | None = None) -> "ItemIndex":
        """Read an index written by :meth:`save` (or a bundle's ``index.faiss``).

        The stored vectors must be given too (exact fallback and candidate scoring use
        them); the file must hold exactly that many items of that size.

        Raises:
            ArtifactError: the file is unreadable or does not match ``vectors``.
        """
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        try:
            stored = faiss.read_index(str(path))
        except RuntimeError as error:
            raise ArtifactError(f"{path}: not a readable FAISS index ({error}); rebuild the bundle") from error
        if stored.ntotal != vectors.shape[0] or stored.d != vectors.shape[1]:
            raise ArtifactError(
                f"{path}: holds {stored.ntotal} items of size {stored.d}, the item table has "
                f"{vectors.shape[0]} of size {vectors.shape[1]}; rebuild the bundle"
            )
        if stored.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ArtifactError(f"{path}: not an inner-product index; rebuild the bundle")
        self = cls.__new__(cls)
        self.config = config or IndexConfig(kind=_kind_of(stored))
        self.dim = int(vectors.shape[1])
        self._lock = threading.RLock()
        self._vectors = vectors
        self._count = vectors.shape[0]
        self.on_gpu = False
        self._faiss = faiss
        self._index = self._maybe_to_gpu(stored)
        return self


def _kind_of(index) -> str:
    import faiss

    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    return "exact"


__all__ = ["IndexConfig", "ItemIndex", "SearchResult", "exact_topk", "gpu_available"]
