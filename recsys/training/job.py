"""The set-identifier training job: config in, tracked bundle out.

Command:
    recsys train --config configs/setrec-t5-ml100k.yaml [--set trainer.max_epochs=3 ...] [--resume]

Steps: seed; read the prepared dataset and the CF/text artifacts (a CF-only model, ``model.token_set: cf``,
reads no text on data without it); build the long-history selection (``history``, :func:`history_selector`:
training windows, valid and test read what it keeps, and the bundle stores it); build ``SetRecModel``; fit
with Lightning (checkpoints and early stopping on ``valid/ndcg@10``, ``<out_dir>/checkpoints``);
restore the best checkpoint; choose beta on the VALID split from ``beta_grid``; test with that
beta; write ``<out_dir>/bundle`` (``recsys.bundle.save_bundle``) and ``<out_dir>/result.json``;
log params, per-epoch metrics, tags and the bundle (artifact path ``bundle``) to MLflow.

Scale-out: ``trainer.strategy`` (ddp, fsdp), ``trainer.devices`` and ``trainer.num_nodes`` go to
the Lightning Trainer, so the same command runs under torchrun or SLURM. Every rank records a
checksum of its final weights in ``<out_dir>/ranks/``; under ddp rank 0 checks they agree.

Example:
    >>> from recsys.training.job import load_train_config, train
    >>> cfg = load_train_config("configs/setrec-t5-demo.yaml", overrides={"trainer.max_epochs": 2, "out_dir": "runs/x"})
    >>> result = train(cfg)
    >>> result.bundle_dir, result.valid_metrics["ndcg@10"], result.best_beta, result.run_id
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from recsys.errors import ArtifactError, ConfigError, SetrecError
from recsys.training.setrec_config import TrainJobConfig, load_train_config  # re-exported API

__all__ = ["TrainJobConfig", "TrainResult", "TrainingInterrupted", "load_train_config", "train", "build_model"]

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
BUNDLE = "bundle"
RESULT = "result.json"
RUN_FILE = "mlflow_run.json"


class TrainingInterrupted(SetrecError):
    """The fit stopped before its end (an exception or Ctrl+C); ``--resume`` continues it."""


@dataclass
class TrainResult:
    """What :func:`train` returns (and writes to ``<out_dir>/result.json``).

    Attributes:
        bundle_dir: the bundle directory (``recsys.bundle.load_bundle`` reads it).
        run_id: the MLflow run, or None when tracking is off.
        valid_metrics: metrics of the restored best model on the valid split at ``best_beta``.
        test_metrics: metrics on the test split at ``best_beta``.
        best_beta: the beta of ``beta_grid`` with the best valid NDCG@10.
        seconds: wall-clock seconds of the whole job.
        best_epoch: epoch of the restored checkpoint (0-based), -1 when unknown.
        global_step: optimiser steps taken.
        epochs_run: epochs trained (fewer than ``trainer.max_epochs`` when early stopping ended the fit).
        rank: process rank (only rank 0 evaluates, writes the bundle and logs).
    """

    bundle_dir: Path
    run_id: str | None
    valid_metrics: dict
    test_metrics: dict
    best_beta: float
    seconds: float
    best_epoch: int = -1
    global_step: int = 0
    rank: int = 0
    epochs_run: int = 0

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["bundle_dir"] = str(self.bundle_dir)
        return values


# --------------------------------------------------------------------------- building


def backbone_hidden_size(model_config) -> int:
    """d, the hidden size of the configured backbone (the token dim of the item encoder)."""
    from recsys.models.setrec import PRESETS

    if model_config.pretrained_dir is not None:
        from transformers import AutoConfig

        loaded = AutoConfig.from_pretrained(model_config.pretrained_dir, local_files_only=True)
        return int(getattr(loaded, "hidden_size", None) or loaded.d_model)
    preset = PRESETS[model_config.backbone][model_config.preset]
    return int(preset.get("hidden_size", preset.get("d_model")))


def prepare_autoencoder(model, data, cfg: TrainJobConfig, progress: bool = False) -> dict[str, float]:
    """Pre-train the semantic autoencoder on train items' texts and/or freeze it, as ``cfg`` says.

    Only texts of items with a train interaction are reconstructed, so no item that first
    appears in valid or test shapes the weights. Returns the MSEs before and after (empty when
    nothing is pre-trained).

    Example:
        >>> prepare_autoencoder(model, data, load_train_config("c.yaml", {"autoencoder_pretrain_epochs": 50}))
    """
    from recsys.tokenizers.semantic import AutoencoderPretrainConfig, pretrain_autoencoder

    encoder = model.item_encoder
    out: dict[str, float] = {}
    if cfg.autoencoder_pretrain_epochs > 0:
        if model.config.token_set == "cf":
            raise ConfigError("autoencoder_pretrain_epochs needs semantic tokens; model.token_set is 'cf'")
        texts = encoder.text_embeddings[torch.from_numpy(data.train_item_mask())]
        was_training = encoder.autoencoder.training
        result = pretrain_autoencoder(texts, encoder.autoencoder, AutoencoderPretrainConfig(
            epochs=cfg.autoencoder_pretrain_epochs, val_fraction=0.0, seed=cfg.seed), progress=progress)
        encoder.autoencoder.zero_grad(set_to_none=True)  # no gradient of pre-training leaks into the first step
        encoder.autoencoder.train(was_training)  # pre-training ends in eval mode; the trainer expects the caller's mode
        out = {"autoencoder/initial_mse": result.initial_mse, "autoencoder/final_mse": result.final_mse}
        print(f"autoencoder pre-trained for {cfg.autoencoder_pretrain_epochs} epochs on {texts.shape[0]} train items' texts: "
              f"MSE {result.initial_mse:.6f} -> {result.final_mse:.6f}")
    if cfg.freeze_autoencoder:
        encoder.autoencoder.requires_grad_(False)
    return out


def _missing_artifact(name: str, path: str) -> ArtifactError:
    return ArtifactError(
        f"{name}: {path} does not exist; create it first (README: `recsys data prepare`, "
        "`recsys tokenize cf`, `recsys tokenize semantic`) or point the config at it"
    )


def text_embeddings_dir(cfg: TrainJobConfig) -> Path | None:
    """The text-embeddings folder the item encoder reads, or None for a CF-only model without text.

    ``model.token_set: cf`` uses the CF token alone; on data where some item has no text (an
    interaction-only dataset), or without a ``semantic`` folder, it reads no text and items without
    a train interaction get the zero CF embedding (``cold_cf`` zero). Every other token set needs
    text for every item.

    Raises:
        ConfigError: a token set that needs text, on data where some item has none.
        ArtifactError: the ``semantic`` folder is missing where it is needed.
    """
    import polars as pl

    from recsys.pipelines.prepared import items_without_text

    items_file = Path(cfg.data) / "items.parquet"
    if not items_file.is_file():
        raise ArtifactError(f"data: {items_file} does not exist; prepare the dataset with `recsys data prepare`")
    without = items_without_text(pl.scan_parquet(items_file))
    if cfg.model.token_set == "cf" and (without or not Path(cfg.semantic).is_dir()):
        return None
    if without:
        raise ConfigError(
            f"model.token_set {cfg.model.token_set!r} builds item tokens from item text, but {without:,} item(s) in "
            f"{items_file} have an empty or missing `text` column (interaction-only data); "
            "set model.token_set: cf for the CF-only set-identifier model, which needs no text"
        )
    if not Path(cfg.semantic).is_dir():
        raise _missing_artifact("semantic", cfg.semantic)
    return Path(cfg.semantic)


def build_model(cfg: TrainJobConfig):
    """(SetRecModel, items frame) for a config: the item encoder over the CF/text artifacts plus the backbone.

    A CF-only model (``model.token_set: cf``) on data without item text reads no text artifact
    (:func:`text_embeddings_dir`).

    Example:
        >>> model, items = build_model(load_train_config("configs/setrec-qwen-demo.yaml"))
    """
    from recsys.models.setrec import SetRecModel
    from recsys.tokenizers.identifiers import build_item_encoder

    for name in ("data", "cf"):
        if not Path(getattr(cfg, name)).is_dir():
            raise _missing_artifact(name, getattr(cfg, name))
    text_dir = text_embeddings_dir(cfg)
    hidden = backbone_hidden_size(cfg.model)
    encoder, items = build_item_encoder(cfg.data, cfg.cf, text_dir, cfg.model.num_semantic_tokens, hidden, seed=cfg.seed,
                                        semantic=cfg.model.semantic_tokens, cold_cf=cfg.cold_cf if text_dir else "zero")
    return SetRecModel(cfg.model, encoder), items


def history_selector(cfg: TrainJobConfig):
    """The long-history selection of the job (:class:`~recsys.models.history_selection.HistorySelector`).

    Its attention table is the CF artifact's (``cfg.cf``): the decoupled SASRec's attention table when
    the artifact has one, else the CF embeddings themselves
    (:func:`~recsys.models.history_selection.attention_table`). The bundle stores both the rule and
    the table, also under ``recent``, so a model can later be evaluated with ``dare``.

    Example:
        >>> history_selector(load_train_config("configs/setrec-t5-demo.yaml", {"history.selection": "dare",
        ...                                                                     "history.search_k": 5}))
    """
    from recsys.models.history_selection import HistorySelector, attention_table
    from recsys.tokenizers.cf import load_cf_artifact

    if not Path(cfg.cf).is_dir():
        raise _missing_artifact("cf", cfg.cf)
    table, source = attention_table(load_cf_artifact(cfg.cf))
    return HistorySelector(table, cfg.max_len, cfg.history, source)


def _trainer_kwargs(cfg: TrainJobConfig) -> dict[str, Any]:
    t = cfg.trainer
    accelerator = t.accelerator
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    strategy: Any = t.strategy
    if t.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        strategy = FSDPStrategy(state_dict_type="full")
    elif t.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=False)
    return dict(
        accelerator=accelerator,
        devices=t.devices,
        strategy=strategy,
        num_nodes=t.num_nodes,
        precision=precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        enable_progress_bar=t.progress_bar,
        gradient_clip_val=cfg.optim.grad_clip or None,
        gradient_clip_algorithm="norm",
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )


def _logger(cfg: TrainJobConfig, out_dir: Path, fingerprint: str, resume: bool):
    """MLflow logger (:func:`recsys.tracking.lightning_logger`); a resumed job continues the run recorded
    in ``<out_dir>/mlflow_run.json``."""
    if not cfg.tracking.enabled:
        return None
    from recsys.tracking import lightning_logger

    run_id = None
    run_file = out_dir / RUN_FILE
    if resume and run_file.is_file():
        run_id = json.loads(run_file.read_text()).get("run_id")
    return lightning_logger(
        cfg.tracking.experiment,
        run_name=cfg.tracking.run_name or out_dir.name,
        tags={"dataset": fingerprint, "data_dir": str(Path(cfg.data).resolve()), "backbone": cfg.model.backbone},
        run_id=run_id,
    )


# --------------------------------------------------------------------------- rank agreement


def state_checksum(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, bytes) of ``module``'s state dict."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _check_ranks(out_dir: Path, rank: int, world_size: int, checksum: str, timeout: float = 120.0) -> None:
    """Write this rank's checksum; rank 0 waits for all ranks and raises when they differ."""
    folder = out_dir / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{rank}.tmp").write_text(checksum)
    (folder / f"rank-{rank}.tmp").replace(folder / f"rank-{rank}.sha256")
    if rank != 0 or world_size == 1:
        return
    deadline = time.monotonic() + timeout
    files = [folder / f"rank-{r}.sha256" for r in range(world_size)]
    while not all(f.is_file() for f in files):
        if time.monotonic() > deadline:
            missing = [f.name for f in files if not f.is_file()]
            raise ArtifactError(f"ranks {missing} did not report their weights within {timeout:.0f} s")
        time.sleep(0.2)
    sums = {f.name: f.read_text().strip() for f in files}
    if len(set(sums.values())) != 1:
        raise ArtifactError(f"ranks hold different weights after training: {sums}; check the strategy settings")


# --------------------------------------------------------------------------- the job


def check_resume_checkpoint(path: Path) -> None:
    """Refuse a ``last.ckpt`` that ``--resume`` cannot use, with one line (empty, truncated, not a
    Lightning checkpoint, or holding pickled objects beyond tensors: loaded with ``weights_only=True``).

    Raises:
        ArtifactError: naming the file and what to do.
    """
    if path.stat().st_size == 0:
        raise ArtifactError(f"--resume: {path} is empty; delete it and start the job without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        reason = " ".join(str(error).split())[:160]
        raise ArtifactError(
            f"--resume: {path} is not a readable checkpoint ({type(error).__name__}: {reason}); "
            "delete it and start without --resume, or restore the file"
        ) from error
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ArtifactError(f"--resume: {path} is not a Lightning checkpoint (no state_dict); delete it and start without --resume")


def train(cfg: TrainJobConfig, resume: bool = False, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Run the training job of ``cfg``; returns a :class:`TrainResult`.

    Args:
        cfg: a validated job config (:func:`load_train_config`).
        resume: continue from ``<out_dir>/checkpoints/last.ckpt`` (same MLflow run). Without it,
            checkpoints left in ``<out_dir>`` by an earlier run are removed first.
        callbacks: extra Lightning callbacks.

    Raises:
        ArtifactError: missing artifacts, or ``resume`` without a checkpoint.
        TrainingInterrupted: the fit stopped early (resume it with ``resume=True``).

    Example:
        >>> result = train(load_train_config("configs/setrec-qwen-demo.yaml", {"out_dir": "runs/q"}))
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from recsys.bundle import save_bundle
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.tokenizers.semantic import text_embeddings_manifest
    from recsys.tracking import flatten, log_metrics
    from recsys.training.setrec_data import SetRecDataModule
    from recsys.training.setrec_module import MONITOR, SetRecModule, evaluate_beta_grid

    cfg.validate()
    start = time.perf_counter()
    out_dir = Path(cfg.out_dir)
    ckpt_dir = out_dir / CHECKPOINTS
    last = ckpt_dir / LAST
    if resume and not last.is_file():
        raise ArtifactError(f"--resume: {last} does not exist; start the job without --resume")
    if resume:
        check_resume_checkpoint(last)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = PreparedDataset.load(cfg.data)
    selector = history_selector(cfg)
    datamodule = SetRecDataModule(data, cfg.max_len, cfg.batch_size, cfg.eval_batch_size, cfg.seed, cfg.trainer.num_workers,
                                  cfg.train_mode, cfg.window_stride, selector)
    text_dir = text_embeddings_dir(cfg)
    if text_dir is None:
        if cfg.cold_cf != "zero":
            print("no item text: items without a train interaction get the zero CF embedding (cold_cf: zero; "
                  "predicting their CF embedding needs text)")
        cfg = dataclasses.replace(cfg, cold_cf="zero")  # what the job does, as the bundle and MLflow record it
    model, items = build_model(cfg)
    candidates = torch.from_numpy(data.train_item_mask()) if cfg.negatives == "train" else None
    if not resume:
        prepare_autoencoder(model, data, cfg)
    module = SetRecModule(model, cfg.optim, cfg.beta_grid, cfg.exclude_history, cfg.seed, candidates)

    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best-{epoch}", monitor=MONITOR, mode="max",
                                 save_top_k=1, auto_insert_metric_name=False)
    # Lightning saves ``save_last`` only together with a new best; resuming needs every epoch's end.
    latest = ModelCheckpoint(dirpath=ckpt_dir, filename=LAST.removesuffix(".ckpt"), monitor=None, save_top_k=1,
                             enable_version_counter=False)
    stopper = EarlyStopping(MONITOR, mode="max", patience=cfg.trainer.patience)
    logger = _logger(cfg, out_dir, data.fingerprint, resume)
    trainer = L.Trainer(logger=logger or False, callbacks=[checkpoint, latest, stopper, *callbacks], **_trainer_kwargs(cfg))
    rank = trainer.global_rank
    if rank == 0:
        if not resume and ckpt_dir.exists():
            print(f"starting afresh: removing checkpoints of an earlier run in {ckpt_dir}")
            shutil.rmtree(ckpt_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if logger is not None:
            (out_dir / RUN_FILE).write_text(json.dumps({"run_id": logger.run_id}))
            if not resume:
                logger.log_hyperparams(flatten({**cfg.to_dict(), **datamodule.counts(), "num_items": data.num_items}))

    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    if trainer.interrupted:
        raise TrainingInterrupted(f"training stopped at step {trainer.global_step}; continue with --resume (from {last})")

    world = trainer.world_size
    if cfg.trainer.strategy != "fsdp":
        _check_ranks(out_dir, rank, world, state_checksum(module.model))
    if rank != 0:
        return TrainResult(out_dir / BUNDLE, None, {}, {}, float("nan"), time.perf_counter() - start,
                           global_step=trainer.global_step, rank=rank)

    best_epoch = -1
    if checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
        best_epoch = int(state.get("epoch", -1))
    model = module.model.cpu().eval()
    valid_grid = evaluate_beta_grid(model, datamodule.val_dataloader(), cfg.beta_grid, cfg.exclude_history)
    best_beta, valid_metrics = valid_grid.best()
    test_metrics = evaluate_beta_grid(model, datamodule.test_dataloader(), [best_beta], cfg.exclude_history).means()[0]
    metrics = {f"valid/{k}": v for k, v in valid_metrics.items()} | {f"test/{k}": v for k, v in test_metrics.items()}
    bundle_dir = save_bundle(
        model,
        out_dir / BUNDLE,
        beta=best_beta,
        max_len=cfg.max_len,
        items=items,
        dataset_fingerprint=data.fingerprint,
        config=cfg.to_dict(),
        metrics=metrics,
        text_encoder=text_embeddings_manifest(text_dir).get("encoder", {}) if text_dir else {},
        history=selector,
    )
    run_id = None
    if logger is not None:
        run_id = logger.run_id
        client = logger.experiment
        final = {f"best_{k}" if k.startswith("valid/") else k: v for k, v in metrics.items()} | {"best_beta": best_beta}
        log_metrics(final, run_id, step=trainer.global_step)  # under their MLflow names (valid/ndcg@10 -> valid/ndcg10)
        for row, means in enumerate(valid_grid.means()):
            log_metrics({"valid_grid/ndcg@10": means["ndcg@10"]}, run_id, step=row)
        client.set_tag(run_id, "best_beta", str(best_beta))
        client.log_artifacts(run_id, str(bundle_dir), artifact_path=BUNDLE)
    result = TrainResult(bundle_dir, run_id, valid_metrics, test_metrics, best_beta, time.perf_counter() - start,
                         best_epoch=best_epoch, global_step=trainer.global_step, epochs_run=trainer.current_epoch)
    (out_dir / RESULT).write_text(json.dumps(result.to_json(), indent=2))
    return result
