"""``recsys train`` and ``recsys register``: the training job's subcommands.

Commands:
    recsys train --config configs/setrec-t5-ml100k.yaml --trainer.max_epochs=3 --set seed=1
    recsys train --config configs/setrec-t5-ml100k.yaml --config my-overrides.yaml --print_config
    recsys train --config configs/setrec-t5-ml100k.yaml --resume
    recsys register --run RUN_ID --name setrec --alias champion
"""

from __future__ import annotations

import argparse

from recsys.config import ConfigCommand


def train_options(parser) -> None:
    """The options of ``recsys train`` that are not config keys."""
    parser.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/last.ckpt")


#: ``recsys train``: every TrainJobConfig key as a dotted flag; ``--resume`` is a command option.
TRAIN = ConfigCommand(
    "recsys train", "recsys.training.setrec_config:TrainJobConfig",
    "Train SetRec from a config: checkpoints, early stopping on valid NDCG@10, beta chosen on valid, a bundle in "
    "<out_dir>/bundle, everything logged to MLflow (--resume continues from <out_dir>/checkpoints/last.ckpt).",
    extra=train_options,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``register`` to the ``recsys`` parser.

    ``train`` parses its own arguments through :mod:`recsys.config` (``TRAIN``, ``config_args=parse_train_args``).
    """
    TRAIN.add_to(subparsers, "train", "train the set-identifier recommender from a YAML config (tracked in MLflow)",
                 run_train, parse_train_args)

    reg = subparsers.add_parser("register", help="register a training run's bundle in the MLflow model registry")
    reg.add_argument("--run", required=True, help="MLflow run id printed by `recsys train`")
    reg.add_argument("--name", default="setrec", help="registered model name (default setrec)")
    reg.add_argument("--alias", default="champion", help="alias for the new version (default champion)")
    reg.set_defaults(func=run_register)


def parse_train_args(argv: list[str]):
    """``recsys train`` arguments -> (validated TrainJobConfig, resume flag).

    Example:
        >>> cfg, resume = parse_train_args(["--config", "configs/setrec-t5-demo.yaml", "--trainer.max_epochs=1"])
    """
    cfg, namespace = TRAIN.parse(argv)
    return cfg, bool(namespace.resume)


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``recsys train``."""
    from recsys.training.job import train

    cfg, resume = parse_train_args(args.argv)
    result = train(cfg, resume=resume)
    if result.rank != 0:
        return 0
    print(f"bundle: {result.bundle_dir}")
    print(f"beta (chosen on valid): {result.best_beta}")
    print(f"valid NDCG@10: {result.valid_metrics.get('ndcg@10', float('nan')):.4f}")
    print(f"test NDCG@10: {result.test_metrics.get('ndcg@10', float('nan')):.4f}")
    print(f"mlflow run: {result.run_id}")
    print(f"seconds: {result.seconds:.1f}")
    return 0


def run_register(args: argparse.Namespace) -> int:
    """Handler of ``recsys register``."""
    from recsys.training.registry import register_bundle

    version = register_bundle(args.run, args.name, args.alias)
    alias = f" (alias {args.alias}: models:/{args.name}@{args.alias})" if args.alias else ""
    print(f"registered {args.name} version {version}{alias}")
    return 0
