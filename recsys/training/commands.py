"""``recsys train`` and ``recsys register``: the training job's subcommands.

Commands:
    recsys train --config configs/setrec-t5-ml100k.yaml --trainer.max_epochs=3 --set seed=1
    recsys train --config configs/setrec-t5-ml100k.yaml --config my-overrides.yaml --print_config
    recsys train --config configs/setrec-t5-ml100k.yaml --resume
    recsys register --run RUN_ID --name setrec --alias champion
"""

from __future__ import annotations

import argparse


TRAIN_DESCRIPTION = (
    "Train SetRec from a config: checkpoints, early stopping on valid NDCG@10, beta chosen on valid, a bundle in "
    "<out_dir>/bundle, everything logged to MLflow. Keys come from --config files (repeatable, later files win) and "
    "dotted flags (--trainer.max_epochs=3, or --set trainer.max_epochs=3); --print_config prints the result."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``register`` to the ``recsys`` parser.

    ``train`` parses its own arguments through :mod:`recsys.config` (jsonargparse), so
    ``set_defaults(config_args=parse_train_args)`` hands it everything after ``recsys train``.
    """
    train = subparsers.add_parser(
        "train",
        help="train the set-identifier recommender from a YAML config (tracked in MLflow)",
        description=TRAIN_DESCRIPTION,
        add_help=False,
    )
    train.set_defaults(func=run_train, config_args=parse_train_args)

    reg = subparsers.add_parser("register", help="register a training run's bundle in the MLflow model registry")
    reg.add_argument("--run", required=True, help="MLflow run id printed by `recsys train`")
    reg.add_argument("--name", default="setrec", help="registered model name (default setrec)")
    reg.add_argument("--alias", default="champion", help="alias for the new version (default champion)")
    reg.set_defaults(func=run_register)


def train_options(parser) -> None:
    """The options of ``recsys train`` that are not config keys."""
    parser.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/last.ckpt")


def parse_train_args(argv: list[str]):
    """``recsys train`` arguments -> (validated TrainJobConfig, resume flag).

    Example:
        >>> cfg, resume = parse_train_args(["--config", "configs/setrec-t5-demo.yaml", "--trainer.max_epochs=1"])
    """
    from recsys.config import parse_command
    from recsys.training.setrec_config import TrainJobConfig

    cfg, namespace = parse_command(TrainJobConfig, argv, "recsys train", TRAIN_DESCRIPTION, extra=train_options)
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
