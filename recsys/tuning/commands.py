"""``recsys tune rere``: reinforcement preference tuning (ReRe) of a trained generative recommender.

Commands:
    recsys tune rere --bundle runs/setrec/bundle --data runs/data/ml-100k --out runs/setrec-rere
    recsys tune rere --bundle runs/tiger --data runs/data/ml-100k --config configs/rere.yaml --rere.lr=2e-5

``--bundle`` is a set-identifier bundle (``recsys train``; a folder with ``manifest.json``) or a
saved TIGER model (``recsys.training.tiger.save_tiger``). The output folder gets the tuned bundle
(or TIGER model) and ``result.json``; the MLflow run is tagged with the supervised run as parent
when the bundle's training run is recorded next to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recsys.config import ConfigCommand
from recsys.errors import ConfigError


TUNE = ConfigCommand(
    "recsys tune rere", "recsys.tuning.config:TuneJobConfig",
    "ReRe-tune a trained set-identifier bundle or TIGER model on the train split (valid-only step selection); "
    "writes the tuned model and result.json to --out and logs an MLflow run linked to the supervised run.",
    {"--bundle": "bundle", "--data": "data", "--out": "out_dir"},
)


def model_kind(bundle: str | Path) -> str:
    """``setrec`` for a bundle folder (``manifest.json``), ``tiger`` for a saved TIGER model; ConfigError otherwise."""
    from recsys.training import tiger as tiger_training

    folder = Path(bundle)
    if (folder / "manifest.json").is_file():
        return "setrec"
    if (folder / tiger_training.CONFIG_FILE).is_file() and (folder / tiger_training.WEIGHTS_FILE).is_file():
        return "tiger"
    raise ConfigError(f"bundle: {folder} holds neither a set-identifier bundle (manifest.json) nor a saved TIGER model "
                      f"({tiger_training.CONFIG_FILE} + {tiger_training.WEIGHTS_FILE})")


def parse_tune_args(argv: list[str]):
    """``recsys tune rere`` arguments -> a validated :class:`recsys.tuning.config.TuneJobConfig`.

    Example:
        >>> parse_tune_args(["--bundle", "runs/setrec/bundle", "--data", "runs/data/ml-100k", "--rere.lr=2e-5"]).rere.lr
        2e-05
    """
    config = TUNE.parse(argv)[0]
    config.validate()
    return config


def run_tune(args: argparse.Namespace) -> int:
    """Handler of ``recsys tune rere``."""
    import torch

    config = parse_tune_args(args.argv)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    if model_kind(config.bundle) == "setrec":
        from recsys.tuning.setrec_rere import tune_setrec as tune
    else:
        from recsys.tuning.tiger_rere import tune_tiger as tune
    result = tune(config.bundle, config.data, config.rere, config.out_dir, tracking=config.tracking, progress=True)
    print(f"tuned model: {result.bundle_dir}")
    print(f"valid NDCG@10: {result.start_valid_metrics['ndcg@10']:.4f} (supervised) -> "
          f"{result.valid_metrics['ndcg@10']:.4f} (kept step {result.best_step} of {result.steps})")
    print(f"test NDCG@10 (for the record): {result.test_metrics['ndcg@10']:.4f}")
    print(f"seconds: {result.tuning_seconds:.1f} in optimiser steps, {result.seconds:.1f} in all (validation, test, "
          f"bundle); {result.prefixes} prefixes per epoch")
    if result.run_id:
        print(f"mlflow run: {result.run_id}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tune rere`` to the ``recsys`` parser."""
    tune = subparsers.add_parser("tune", help="post-training stages of a trained model (ReRe)")
    stages = tune.add_subparsers(dest="stage", metavar="STAGE", required=True)
    TUNE.add_to(stages, "rere", "reinforcement preference tuning (ReRe) of a set-identifier bundle or TIGER model",
                run_tune, parse_tune_args)
