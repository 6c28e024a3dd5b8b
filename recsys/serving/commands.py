"""``recsys serve``: the ranking service over a bundle or a registered model.

Commands:
    recsys serve --model models:/setrec@champion --engine torch --host 127.0.0.1 --port 8000
    recsys serve --bundle bundles/setrec-ml100k --engine vllm --admin-token-file admin.token \
        --max-batch-size 32 --max-wait-ms 2 --max-queue 1024 --max-history 10000 \
        --catalogue postgresql://setrec@db.internal/setrec --catalogue-poll-s 1
    recsys serve --config serve.yaml --set index.kind=hnsw --print_config

The settings are :class:`recsys.serving.config.ServeConfig` keys, read through the one config
path (:mod:`recsys.config`): the flags above, dotted keys (``--batcher.max_wait_ms=1``),
``--set KEY=VALUE`` and ``--config FILE``; every error names the file or flag and the key.

Startup loads and verifies the bundle (checksums, schema version, item table), replays the
catalogue store (items added and removed at runtime) and starts the engine before the port
opens; any problem is printed as one line and exit code 2.

Shutdown (SIGTERM, Ctrl+C): the port stops accepting connections at once (clients get
"connection refused", never a half-answered request), /readyz answers 503, requests already
received are answered with ``Connection: close``, and the process waits up to ``--drain-s``
seconds for open connections to close before it stops the batch worker.
"""

from __future__ import annotations

import argparse
import asyncio
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.config import ConfigCommand
from recsys.errors import ConfigError

if TYPE_CHECKING:
    from recsys.serving.config import ServeConfig


SERVE = ConfigCommand(
    "recsys serve", "recsys.serving.config:ServeConfig",
    "Serve a trained bundle (--bundle DIR) or a registered model (--model models:/NAME@ALIAS) as a ranking service.",
    {"--admin-token-file": "admin_token_file", "--catalogue-poll-s": "catalogue_poll_s", "--text-encoder": "text_encoder",
     "--max-batch-size": "batcher.max_batch_size", "--max-wait-ms": "batcher.max_wait_ms", "--max-queue": "batcher.max_queue",
     "--max-in-flight": "max_in_flight", "--drain-s": "drain_s", "--index": "index.kind", "--log-level": "log_level",
     "--max-history": "max_history"},
)


def register(subparsers) -> None:
    """Add ``serve`` to the ``recsys`` command line (parsed through :mod:`recsys.config`)."""
    SERVE.add_to(subparsers, "serve", "serve a trained bundle as a ranking service (FastAPI)", run_serve, parse_serve_args)


def parse_serve_args(argv: list[str]) -> ServeConfig:
    """``recsys serve`` arguments -> validated ServeConfig, through the one config path.

    Example:
        >>> parse_serve_args(["--bundle", "bundles/b", "--max-batch-size", "8", "--index", "hnsw"]).index.kind
        'hnsw'
    """
    return SERVE.parse(argv)[0]


def read_token(path: str | Path) -> str:
    """The admin token in ``path`` (surrounding whitespace stripped); at least 16 characters.

    Raises:
        ConfigError: unreadable, readable by group or others (``chmod 600`` it), or too short.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as error:
        raise ConfigError(f"--admin-token-file {path}: cannot read it ({error.strerror})") from error
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"--admin-token-file {path}: mode {stat.filemode(mode)} lets other users read the token; run chmod 600 {path}")
    if len(token) < 16:
        raise ConfigError(f"--admin-token-file {path}: the token must have at least 16 characters, it has {len(token)}")
    return token


def set_threads(threads: int) -> None:
    """Intra-op threads of torch and FAISS (0 leaves their defaults)."""
    if threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {threads}")
    if threads:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)


def build_app(config: ServeConfig):
    """Load the model, replay the catalogue and build the app (no server): the part of ``recsys serve`` tests can call."""
    from recsys.serving.app import AppConfig, create_app
    from recsys.serving.catalogue import Catalogue, CatalogueStore
    from recsys.serving.service import Recommender, resolve_model

    config.validate()
    token = read_token(config.admin_token_file) if config.admin_token_file else None
    set_threads(config.threads)
    path, name, version = resolve_model(config.model or config.bundle)
    recommender = Recommender.from_bundle(
        path, config.engine, model_name=name, model_version=version, index_config=config.index,
        text_encoder_dir=config.text_encoder,
    )
    try:
        store = CatalogueStore(config.catalogue, recommender.dataset_fingerprint)
        catalogue = Catalogue(recommender, store, poll_s=config.catalogue_poll_s)
    except BaseException:
        recommender.close()
        raise
    app_config = AppConfig(batcher=config.batcher, admin_token=token, close_recommender=True,
                           max_in_flight=config.max_in_flight or 4 * config.batcher.max_queue, max_history=config.max_history)
    return create_app(recommender, app_config, catalogue)


def make_server(app, config: ServeConfig):
    """The uvicorn server of ``recsys serve`` with the draining shutdown described in the module docstring."""
    import uvicorn

    drain = app.state.config.drain

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            for server in self.servers:  # no new connections: refused, so nothing is sent and lost
                server.close()
            for sock in sockets or []:
                sock.close()
            drain.start()  # answers carry Connection: close, /readyz is 503
            deadline = time.monotonic() + config.drain_s
            while self.server_state.connections and time.monotonic() < deadline and not self.force_exit:
                await asyncio.sleep(0.02)
            await super().shutdown(sockets)

    return DrainingServer(uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                                         timeout_keep_alive=30))


def run_serve(args: argparse.Namespace) -> int:
    """Handler of ``recsys serve``."""
    config = parse_serve_args(args.argv)
    app = build_app(config)
    recommender = app.state.recommender
    catalogue = app.state.catalogue
    print(
        f"serving {recommender.model_name} version {recommender.model_version} ({recommender.num_items} items, "
        f"{recommender.engine.name} engine, catalogue {catalogue.store.url} at change {catalogue.applied_seq}) "
        f"on http://{config.host}:{config.port}",
        flush=True,
    )
    make_server(app, config).run()
    return 0
