"""``recsys serve``: the ranking service over a bundle or a registered model.

Commands:
    recsys serve --model models:/setrec@champion --engine torch --host 127.0.0.1 --port 8000
    recsys serve --bundle bundles/setrec-ml100k --engine vllm --admin-token-file admin.token \
        --max-batch-size 32 --max-wait-ms 2 --max-queue 1024 \
        --catalogue postgresql://setrec@db.internal/setrec --catalogue-poll-s 1

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

from recsys.errors import ConfigError


def register(subparsers) -> None:
    """Add ``serve`` to the ``recsys`` command line."""
    parser = subparsers.add_parser("serve", help="serve a trained bundle as a ranking service (FastAPI)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="registered model, e.g. models:/setrec@champion (MLFLOW_TRACKING_URI)")
    source.add_argument("--bundle", help="bundle directory")
    parser.add_argument("--engine", choices=("torch", "vllm"), default="torch", help="torch (T5, Qwen) or vllm (Qwen)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--admin-token-file", help="file (mode 600: no group or other access) holding the bearer token of "
                        "POST and DELETE /v1/items; without it those endpoints answer 403")
    parser.add_argument("--catalogue", default=DEFAULT_CATALOGUE,
                        help="catalogue store URL: items added and removed at runtime are committed there before the answer and "
                        "replayed at start (default %(default)s in the working directory; postgresql://USER@HOST/DB for replicas on several hosts)")
    parser.add_argument("--catalogue-poll-s", type=float, default=1.0,
                        help="seconds between reads of the catalogue store for other replicas' changes (the bound on how far replicas lag)")
    parser.add_argument("--text-encoder", help="folder of the bundle's text encoder on this machine (checked by fingerprint); "
                        "default: the path recorded in the bundle, else the bundled all-MiniLM-L6-v2")
    parser.add_argument("--max-batch-size", type=int, default=32, help="most queries per engine call")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="longest wait for a batch to fill")
    parser.add_argument("--max-queue", type=int, default=1024, help="most waiting queries; beyond it 503 + Retry-After")
    parser.add_argument("--max-in-flight", type=int, default=0,
                        help="most requests handled at once (health and metrics excepted); beyond it 503 + Retry-After (default 0: 4 x --max-queue)")
    parser.add_argument("--drain-s", type=float, default=5.0, help="on shutdown, longest wait for open connections to close")
    parser.add_argument("--index", choices=("exact", "ivf", "hnsw"), default="exact", help="FAISS index kind (exact ranks like the model)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch and FAISS threads per engine call (default 1: on a shared 2-core CPU, 2 threads made one query "
        "~100x slower through OpenMP spin-waits; batching gives the throughput); 0 keeps the libraries' defaults",
    )
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    parser.set_defaults(func=run_serve)


DEFAULT_CATALOGUE = "sqlite:///setrec-catalogue.db"


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


def build_app(args: argparse.Namespace):
    """Load the model, replay the catalogue and build the app (no server): the part of ``recsys serve`` tests can call."""
    from recsys.serving.app import AppConfig, create_app
    from recsys.serving.batcher import BatcherConfig
    from recsys.serving.catalogue import Catalogue, CatalogueStore
    from recsys.serving.index import IndexConfig
    from recsys.serving.service import Recommender, resolve_model

    token = read_token(args.admin_token_file) if args.admin_token_file else None
    batcher = BatcherConfig(args.max_batch_size, args.max_wait_ms, args.max_queue)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    if args.catalogue_poll_s < 0:
        raise ConfigError(f"--catalogue-poll-s must be >= 0, got {args.catalogue_poll_s}")
    if args.max_in_flight < 0 or args.drain_s < 0:
        raise ConfigError("--max-in-flight and --drain-s must be >= 0")
    set_threads(args.threads)
    path, name, version = resolve_model(args.model or args.bundle)
    recommender = Recommender.from_bundle(
        path, args.engine, model_name=name, model_version=version, index_config=IndexConfig(kind=args.index),
        text_encoder_dir=args.text_encoder,
    )
    try:
        store = CatalogueStore(args.catalogue, recommender.dataset_fingerprint)
        catalogue = Catalogue(recommender, store, poll_s=args.catalogue_poll_s)
    except BaseException:
        recommender.close()
        raise
    config = AppConfig(batcher=batcher, admin_token=token, close_recommender=True, max_in_flight=args.max_in_flight or 4 * args.max_queue)
    return create_app(recommender, config, catalogue)


def make_server(app, args: argparse.Namespace):
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
            deadline = time.monotonic() + args.drain_s
            while self.server_state.connections and time.monotonic() < deadline and not self.force_exit:
                await asyncio.sleep(0.02)
            await super().shutdown(sockets)

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=30)
    return DrainingServer(config)


def run_serve(args: argparse.Namespace) -> int:
    """Handler of ``recsys serve``."""
    app = build_app(args)
    recommender = app.state.recommender
    catalogue = app.state.catalogue
    print(
        f"serving {recommender.model_name} version {recommender.model_version} ({recommender.num_items} items, "
        f"{recommender.engine.name} engine, catalogue {catalogue.store.url} at change {catalogue.applied_seq}) "
        f"on http://{args.host}:{args.port}",
        flush=True,
    )
    make_server(app, args).run()
    return 0
