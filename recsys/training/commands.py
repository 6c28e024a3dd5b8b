"""``recsys train`` and ``recsys register``: the training job's subcommands.

Commands:
    recsys train --config configs/setrec-t5-ml100k.yaml --set trainer.max_epochs=3 --set seed=1
    recsys train --config configs/setrec-t5-ml100k.yaml --resume
    recsys register --run RUN_ID --name setrec --alias champion
"""

from __future__ import annotations

import argparse


class _HelpWithKeys(argparse.Action):
    """``-h``: the usual help plus every config key (built lazily: it imports the model code)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from recsys.training.setrec_config import overrides_help

        parser.epilog = overrides_help()
        parser.print_help()
        parser.exit()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``register`` to the ``recsys`` parser."""
    train = subparsers.add_parser(
        "train",
        help="train the set-identifier recommender from a YAML config (tracked in MLflow)",
        description="Train SetRec from a config: checkpoints, early stopping on valid NDCG@10, beta chosen on "
        "valid, a bundle in <out_dir>/bundle, everything logged to MLflow.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    train.add_argument("-h", "--help", action=_HelpWithKeys, help="show this help and every config key")
    train.add_argument("--config", required=True, help="YAML config, e.g. configs/setrec-t5-ml100k.yaml")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (dotted, VALUE read as YAML); repeatable, e.g. --set trainer.max_epochs=3")
    train.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/last.ckpt")
    train.set_defaults(func=run_train)

    reg = subparsers.add_parser("register", help="register a training run's bundle in the MLflow model registry")
    reg.add_argument("--run", required=True, help="MLflow run id printed by `recsys train`")
    reg.add_argument("--name", default="setrec", help="registered model name (default setrec)")
    reg.add_argument("--alias", default="champion", help="alias for the new version (default champion)")
    reg.set_defaults(func=run_register)


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``recsys train``."""
    from recsys.training.job import load_train_config, train
    from recsys.training.setrec_config import parse_override

    overrides = dict(parse_override(text) for text in args.overrides)
    cfg = load_train_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
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
