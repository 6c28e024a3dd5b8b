"""``recsys serve``: the ranking service over a bundle or a registered model.

Commands:
    recsys serve --model models:/setrec@champion --engine torch --host 127.0.0.1 --port 8000
    recsys serve --bundle bundles/setrec-ml100k --engine vllm --admin-token-file admin.token \
        --max-batch-size 32 --max-wait-ms 2 --max-queue 1024

Startup loads and verifies the bundle (checksums, schema version, item table) and starts
the engine before the port opens; any problem is printed as one line and exit code 2.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--admin-token-file", help="file holding the bearer token of POST /v1/items; without it that endpoint answers 403")
    parser.add_argument("--max-batch-size", type=int, default=32, help="most queries per engine call")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, help="longest wait for a batch to fill")
    parser.add_argument("--max-queue", type=int, default=1024, help="most waiting queries; beyond it 503 + Retry-After")
    parser.add_argument("--index", choices=("exact", "ivf", "hnsw"), default="exact", help="FAISS index kind (exact ranks like the model)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch and FAISS threads per engine call (default 1: on a shared 2-core CPU, 2 threads made one query "
        "~100x slower through OpenMP spin-waits; batching gives the throughput); 0 keeps the libraries' defaults",
    )
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    parser.set_defaults(func=run_serve)


def read_token(path: str | Path) -> str:
    """The admin token in ``path`` (surrounding whitespace stripped); at least 16 characters."""
    path = Path(path)
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise ConfigError(f"--admin-token-file {path}: cannot read it ({error.strerror})") from error
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
    """Load the model and build the app (no server): the part of ``recsys serve`` tests can call."""
    from recsys.serving.app import AppConfig, create_app
    from recsys.serving.batcher import BatcherConfig
    from recsys.serving.index import IndexConfig
    from recsys.serving.service import Recommender, resolve_model

    token = read_token(args.admin_token_file) if args.admin_token_file else None
    batcher = BatcherConfig(args.max_batch_size, args.max_wait_ms, args.max_queue)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    set_threads(args.threads)
    path, name, version = resolve_model(args.model or args.bundle)
    recommender = Recommender.from_bundle(
        path, args.engine, model_name=name, model_version=version, index_config=IndexConfig(kind=args.index)
    )
    return create_app(recommender, AppConfig(batcher=batcher, admin_token=token, close_recommender=True))


def run_serve(args: argparse.Namespace) -> int:
    """Handler of ``recsys serve``."""
    import uvicorn

    app = build_app(args)
    recommender = app.state.recommender
    print(
        f"serving {recommender.model_name} version {recommender.model_version} ({recommender.num_items} items, "
        f"{recommender.engine.name} engine) on http://{args.host}:{args.port}",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, limit_concurrency=4 * args.max_queue, timeout_keep_alive=30)
    return 0
