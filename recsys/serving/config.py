"""The settings of ``recsys serve``: one typed dataclass read through :mod:`recsys.config`.

Its own module so that ``recsys --help`` does not import the index and batcher modules it is made of.

Example:
    >>> from recsys.config import load_config
    >>> load_config(ServeConfig, [], {"bundle": "bundles/setrec-ml100k", "batcher.max_batch_size": 8}).batcher.max_batch_size
    8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from recsys.errors import ConfigError
from recsys.serving.batcher import BatcherConfig
from recsys.serving.index import IndexConfig
from recsys.serving.schemas import DEFAULT_MAX_HISTORY

DEFAULT_CATALOGUE = "sqlite:///setrec-catalogue.db"


@dataclass
class ServeConfig:
    """Settings of ``recsys serve`` (parsed through :mod:`recsys.config`)."""

    model: str | None = None
    """Registered model, e.g. models:/setrec@champion (MLFLOW_TRACKING_URI); give this or bundle."""
    bundle: str | None = None
    """Bundle directory; give this or model."""
    engine: Literal["torch", "vllm"] = "torch"
    """torch (T5, Qwen) or vllm (Qwen)."""
    host: str = "127.0.0.1"
    """Address to bind (default 127.0.0.1: this machine only)."""
    port: int = 8000
    """Port to bind (1..65535)."""
    admin_token_file: str | None = None
    """File (mode 600: no group or other access) holding the bearer token of POST and DELETE /v1/items; without it
    those endpoints answer 403."""
    catalogue: str = DEFAULT_CATALOGUE
    """Catalogue store URL: items added and removed at runtime are committed there before the answer and replayed at
    start (default: sqlite:///setrec-catalogue.db in the working directory; postgresql://USER@HOST/DB for replicas on
    several hosts)."""
    catalogue_poll_s: float = 1.0
    """Seconds between reads of the catalogue store for other replicas' changes (the bound on how far replicas lag)."""
    text_encoder: str | None = None
    """Folder of the bundle's text encoder on this machine (checked by fingerprint); default: the path recorded in the
    bundle, else the bundled all-MiniLM-L6-v2."""
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    """Micro-batching (--max-batch-size, --max-wait-ms, --max-queue)."""
    max_in_flight: int = 0
    """Most requests handled at once (health and metrics excepted); beyond it 503 + Retry-After (0: 4 x
    batcher.max_queue)."""
    drain_s: float = 5.0
    """On shutdown, longest wait for open connections to close."""
    index: IndexConfig = field(default_factory=IndexConfig)
    """The FAISS index (--index exact|ivf|hnsw is index.kind; exact ranks like the model)."""
    max_history: int = DEFAULT_MAX_HISTORY
    """Most item ids in one request's history (longer requests are answered 422 naming ``history``). The model
    reads ``max_len`` of them, chosen by the bundle's history selection (the most recent, or with
    ``history.selection: dare`` the recent ones plus the older ones most relevant to them), so longer histories
    cost parsing, id lookups and the selection (under 1 ms at 10,000 ids), not model time: benchmarks/RESULTS.md,
    "Long histories", measured a 10,000-id history at 1.5-1.6x the p50 of a 50-id one. The 1 MiB body limit
    still applies (10,000 ids of up to ~100 characters fit)."""
    threads: int = 1
    """Torch and FAISS threads per engine call (default 1: on a shared 2-core CPU, 2 threads made one query ~100x
    slower through OpenMP spin-waits; batching gives the throughput); 0 keeps the libraries' defaults."""
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "warning"
    """Uvicorn log level."""

    def validate(self) -> None:
        """Cross-field and range checks; each error starts with the key."""
        if (self.model is None) == (self.bundle is None):
            raise ConfigError("bundle: give exactly one of --bundle DIR or --model models:/NAME@ALIAS")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port: must be 1..65535, got {self.port}")
        if self.max_history < 1:
            raise ConfigError(f"max_history: must be >= 1, got {self.max_history}")
        for key in ("catalogue_poll_s", "max_in_flight", "drain_s", "threads"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
