"""ReRe tuning of a set-identifier bundle: on-policy groups from the one-pass catalogue distribution.

The policy of a trained set-identifier model is its ranking turned into a distribution: for the
prefix ending at position p, ``pi(i) = softmax(s(i) / temperature)`` over the allowed items, where
``s(i) = sum_k w_k <h_k, t_ik>`` is the score the model ranks with (``w`` from the bundle's beta,
``h`` the query states of backbone plus history prior, ``t`` the item tokens). Allowed items are
the softmax candidates of supervised training (items with a train interaction, ``negatives:
train``) minus the items the user has already seen before the prefix's target (serving never
recommends them; the target itself stays allowed, as in evaluation).

Each step takes windows of the train split (``recsys.training.setrec_data``; the targets of the
packed all-prefix windows, so one backbone pass scores every prefix of a window; ``windows: last``
keeps the windows that score each user's last ``max_len`` train targets, :class:`TuningWindows`), draws a group of
G items per prefix from the policy (top-G, or sampled without replacement), rewards them with
:func:`recsys.tuning.rere.rere_rewards` against the prefix's held-out next item, and minimises
the ReRe loss: the GRPO surrogate on group-normalised advantages plus ``kl_weight`` times the
exact KL to the supervised model (a frozen copy). Dropout is off (the model runs in eval mode) so
the group is drawn from the same distribution the gradient is taken of.

Validation NDCG@10 (the bundle's beta, history excluded as in training) is measured before the
first step and every ``eval_every`` steps; the best state is kept, so a tuning that does not help
on validation returns the supervised model unchanged (``best_step`` 0). Test metrics are computed
once, for the record, on the kept state. Nothing from the valid or test split enters training.

Example:
    >>> result = tune_setrec("runs/setrec/bundle", "runs/data/ml-100k", ReReConfig(max_epochs=1), "runs/rere")
    >>> result.valid_metrics["ndcg@10"], result.best_step, result.bundle_dir
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.errors import ArtifactError, ConfigError
from recsys.tuning.loop import run_rere_loop
from recsys.tuning.rere import ReReConfig, categorical_kl, rere_loss, rere_rewards, group_advantages, sampled_group, top_group

BUNDLE = "bundle"
RESULT = "result.json"


@dataclass
class TuneResult:
    """What a ReRe tuning returns (and writes to ``<out_dir>/result.json``).

    Attributes:
        bundle_dir: the tuned bundle (or TIGER folder).
        run_id: the MLflow run, or None when tracking is off.
        valid_metrics: valid metrics of the kept state.
        test_metrics: test metrics of the kept state (for the record; nothing is selected on them).
        start_valid_metrics: valid metrics of the supervised starting point.
        best_step: optimiser step of the kept state (0 = the starting point).
        steps: optimiser steps taken.
        seconds: wall time of the tuning (validation included).
        tuning_seconds: wall time of the optimiser steps alone.
        prefixes: training prefixes (groups) per epoch.
        epochs: passes over the tuning prefixes made (fractional when stopped within an epoch).
        history: per validation: step, valid NDCG@10, mean reward, surrogate, KL.
    """

    bundle_dir: Path
    run_id: str | None
    valid_metrics: dict[str, float]
    test_metrics: dict[str, float]
    start_valid_metrics: dict[str, float]
    best_step: int
    steps: int
    seconds: float
    tuning_seconds: float
    prefixes: int
    history: list[dict[str, float]] = field(default_factory=list)
    epochs: float = 0.0

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["bundle_dir"] = str(self.bundle_dir)
        return values


def last_window_indices(windows, sequences: list[list[int]]) -> np.ndarray:
    """Indices of each user's last window of a ``WindowBatches`` (the one holding their most recent train target)."""
    ends = np.asarray(windows.ends)
    boundaries = np.cumsum([len(s) for s in sequences])  # flat index after each user's last item
    return np.nonzero(np.isin(ends + 1, boundaries))[0]


class TuningWindows:
    """The train windows tuning reads, with the whole seen history of every scored prefix.

    Args:
        windows: the training job's packed windows (``WindowBatches`` or, under DARE selection,
            ``SelectedWindowBatches``): flat ``items`` and per-window ``ends`` / ``firsts``.
        sequences: each user's train items, oldest first (the order ``windows`` was built from).
        max_len: items the model reads.
        which: ``last``: the windows that score any of each user's last ``max_len`` train targets (a user's
            final window alone may score only the few targets its predecessor left); ``all``: every window.

    Example:
        >>> tw = TuningWindows(datamodule.train, data.train_sequences(), 20, "last")
        >>> histories, targets, seen = tw.batch(tw.indices[:64])   # (B, W), (B, W), ((S,), (S,))
    """

    def __init__(self, windows, sequences: list[list[int]], max_len: int, which: str) -> None:
        self.windows = windows
        self.items = np.asarray(windows.items)
        lengths = np.asarray([len(s) for s in sequences], dtype=np.int64)
        boundaries = np.cumsum(lengths)
        self.ends = np.asarray(windows.ends)
        user = np.searchsorted(boundaries, self.ends, side="right")  # a window's inputs end before its user's boundary
        self.offsets = boundaries[user] - lengths[user]  # flat index of the user's first item
        last_target = boundaries[user] - 1
        keep = self.ends >= last_target - max_len + 1 if which == "last" else np.ones(len(self.ends), dtype=bool)
        self.indices = np.nonzero(keep)[0]
        self.prefixes = int((self.ends[self.indices] - np.asarray(windows.firsts)[self.indices] + 1).sum())

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows ``indices`` -> ``(histories (B, W), targets (B, W), seen)``.

        ``seen = (prefix, item)``, two (S,) long tensors: every item the user interacted with before prefix t's target
        (the whole train history up to that point, not only the window), prefixes numbered in the row-major order of
        ``targets >= 0``.
        """
        indices = [int(i) for i in indices]
        histories, targets = self.windows(indices)
        width = histories.shape[1]
        rows = torch.nonzero(targets >= 0).numpy()  # (T, 2): row, position
        # segments are right-aligned: position p of row b holds flat item ends[b] - width + p
        target_flat = self.ends[np.asarray(indices)[rows[:, 0]]] - width + rows[:, 1] + 1
        starts = self.offsets[np.asarray(indices)[rows[:, 0]]]
        counts = target_flat - starts
        cols = np.concatenate([self.items[a:b] for a, b in zip(starts, target_flat)]) if len(rows) else np.zeros(0, np.int64)
        row_ids = np.repeat(np.arange(len(rows)), counts)
        return histories, targets, (torch.from_numpy(row_ids), torch.from_numpy(cols))


def prefix_seen(histories: torch.Tensor, keep: torch.Tensor, num_items: int) -> torch.Tensor:
    """(T, num_items) bool: items at window positions <= p for every kept prefix (b, p).

    Args:
        histories: (B, L) window inputs, -1 = padding.
        keep: (B, L) bool, the prefixes with a target.
        num_items: catalogue size.
    """
    batch, length = histories.shape
    rows = torch.nonzero(keep)  # (T, 2) row-major, the order of states[keep]
    seen = torch.zeros(rows.shape[0], num_items + 1, dtype=torch.bool, device=histories.device)
    items = torch.where(histories >= 0, histories, num_items)  # (B, L), padding -> the spare column
    positions = torch.arange(length, device=histories.device)
    visible = positions[None, :] <= rows[:, 1:2]  # (T, L)
    cols = torch.where(visible, items[rows[:, 0]], num_items)
    seen.scatter_(1, cols, True)
    return seen[:, :num_items]


def policy_log_probs(model, histories: torch.Tensor, targets: torch.Tensor, beta: float, temperature: float,
                     allowed: torch.Tensor | None, seen: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy over the catalogue of every prefix with a target.

    Args:
        model: a :class:`recsys.models.setrec.SetRecModel` with simultaneous generation (autoregressive queries
            are teacher-forced with the target, which would leak it into the policy).
        histories: (B, L) window inputs (-1 = padding).
        targets: (B, L) next items (-1 = no target at that position).
        beta: ranking weight of the score dimensions.
        temperature: softmax temperature.
        allowed: (num_items,) bool softmax candidates, or None for all.
        seen: ``(prefix, item)`` pairs of the items each prefix's user has seen (:meth:`TuningWindows.batch`);
            None: the items at window positions <= p (:func:`prefix_seen`).

    Returns:
        ``(log_probs (T, N), gold (T,))`` for the T prefixes with a target, row-major. Seen items (except the
        prefix's own gold item, which evaluation keeps rankable too) and items outside ``allowed`` have
        log-probability -inf.
    """
    table = model.item_table()
    states = model.query_states(histories, target_items=targets, table=table)  # (B, L, K, d)
    keep = targets >= 0
    states, gold = states[keep], targets[keep]
    weights = model.dimension_weights(beta).to(states)
    scores = torch.einsum("tkd,ikd->ti", (states * weights[None, :, None]).float(), table.float()) / temperature
    if seen is None:
        hide = prefix_seen(histories, keep, scores.shape[1])
    else:
        hide = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        hide[seen[0].to(hide.device), seen[1].to(hide.device)] = True
    hide[torch.arange(len(gold), device=hide.device), gold] = False
    if allowed is not None:
        hide |= ~allowed.to(hide.device)[None, :]
    return torch.log_softmax(scores.masked_fill(hide, -math.inf), dim=-1), gold


def rere_step_loss(model, reference, histories: torch.Tensor, targets: torch.Tensor, beta: float,
                   allowed: torch.Tensor | None, config: ReReConfig, generator: torch.Generator | None = None,
                   seen: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The ReRe loss of one batch of windows (see the module docstring); keys of :func:`rere_loss` plus ``reward``
    (mean group reward) and ``hit`` (share of groups that hold the held-out item)."""
    log_probs, gold = policy_log_probs(model, histories, targets, beta, config.temperature, allowed, seen)
    with torch.no_grad():
        ref_log_probs, _ = policy_log_probs(reference, histories, targets, beta, config.temperature, allowed, seen)
    detached = log_probs.detach()
    group = top_group(detached, config.group_size) if config.sampling == "top" else \
        sampled_group(detached, config.group_size, generator)
    rewards = rere_rewards(group, gold, config.rank_weight)
    advantages = group_advantages(rewards)
    chosen = log_probs.gather(1, group)
    out = rere_loss(chosen, chosen.detach(), advantages, categorical_kl(log_probs, ref_log_probs), config)
    out["reward"] = rewards.mean().detach()
    out["hit"] = (group == gold[:, None]).any(dim=1).float().mean()
    return out


def _valid_metrics(model, loader, beta: float, exclude_history: bool) -> dict[str, float]:
    from recsys.training.setrec_module import evaluate_beta_grid

    return evaluate_beta_grid(model, loader, [beta], exclude_history).means()[0]


def _parent_run(bundle_dir: Path) -> str | None:
    """The MLflow run of the training job that wrote ``bundle_dir`` (its ``mlflow_run.json``), if recorded."""
    from recsys.training.job import RUN_FILE

    for folder in (bundle_dir, bundle_dir.parent):
        file = folder / RUN_FILE
        if file.is_file():
            try:
                return json.loads(file.read_text()).get("run_id")
            except (json.JSONDecodeError, OSError):
                return None
    return None


def tune_setrec(bundle_dir: str | Path, data_dir: str | Path, config: ReReConfig, out_dir: str | Path,
                tracking: Any = None, progress: bool = False) -> TuneResult:
    """ReRe-tune the set-identifier bundle ``bundle_dir`` on ``data_dir``'s train split; writes ``<out_dir>/bundle``.

    Args:
        bundle_dir: a bundle written by ``recsys train`` (``recsys.bundle``).
        data_dir: the prepared dataset the bundle was trained on (fingerprints must match).
        config: ReRe settings.
        out_dir: output folder: ``bundle/`` (the tuned bundle) and ``result.json``.
        tracking: a ``TrackingConfig`` (None or ``enabled: false``: no MLflow run). The run is tagged with the
            supervised run as ``mlflow.parentRunId`` / ``parent_run_id`` when that run is recorded.
        progress: print one line per validation.

    Raises:
        ArtifactError: the dataset is not the one the bundle was trained on.
    """
    from recsys.bundle import load_bundle, save_bundle
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.training.setrec_data import SetRecDataModule

    start = time.perf_counter()
    torch.manual_seed(config.seed)
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    model = load_bundle(bundle_dir)
    info = model.bundle
    data = PreparedDataset.load(data_dir)
    if info.manifest.get("dataset_fingerprint") not in (None, data.fingerprint):
        raise ArtifactError(f"{bundle_dir}: trained on dataset {info.manifest.get('dataset_fingerprint')}, but {data_dir} "
                            f"is {data.fingerprint}; tune on the dataset the bundle was trained on")
    if model.config.generation != "simultaneous":
        raise ConfigError(f"{bundle_dir}: ReRe tunes the one-pass (simultaneous) policy; this bundle generates "
                          f"{model.config.generation!r}, whose queries are teacher-forced with the target item")
    trained = info.config
    selector = info.history_selector() if hasattr(info, "history_selector") else None  # the bundle's long-history rule
    datamodule = SetRecDataModule(data, info.max_len, config.batch_size, int(trained.get("eval_batch_size", 256)),
                                  config.seed, 0, "all_prefix", int(trained.get("window_stride", 0) or 0), selector=selector)
    exclude_history = bool(trained.get("exclude_history", True))
    allowed = torch.from_numpy(data.train_item_mask()) if trained.get("negatives", "train") == "train" else None
    windows = TuningWindows(datamodule.train, data.train_sequences(), info.max_len, config.windows)
    indices, prefixes = windows.indices, windows.prefixes
    beta = float(info.beta)

    valid_loader = datamodule.val_dataloader()

    def step_loss(reference, batch, generator):
        histories, targets, seen = windows.batch(batch)
        if not bool((targets >= 0).any()):
            return None
        return rere_step_loss(model, reference, histories, targets, beta, allowed, config, generator, seen)

    outcome = run_rere_loop(model, config, indices, step_loss,
                            lambda: _valid_metrics(model, valid_loader, beta, exclude_history), progress)
    valid_metrics = outcome.best_valid
    test_metrics = _valid_metrics(model, datamodule.test_dataloader(), beta, exclude_history)
    metrics = {f"valid/{k}": v for k, v in valid_metrics.items()} | {f"test/{k}": v for k, v in test_metrics.items()}
    tuned_config = {**trained, "rere": asdict(config), "tuned_from": str(bundle_dir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = save_bundle(model, out_dir / BUNDLE, beta=beta, max_len=info.max_len, items=info.items_path,
                        dataset_fingerprint=data.fingerprint, config=tuned_config, metrics=metrics,
                        text_encoder=info.text_encoder, **_bundle_extras(model))
    run_id = _log_run(tracking, tuned_config, metrics, outcome.history, saved, _parent_run(bundle_dir))
    result = TuneResult(saved, run_id, valid_metrics, test_metrics, outcome.start_valid, outcome.best_step,
                        outcome.steps, time.perf_counter() - start, outcome.tuning_seconds, prefixes, outcome.history,
                        outcome.epochs)
    (out_dir / RESULT).write_text(json.dumps(result.to_json(), indent=2))
    return result


def _bundle_extras(model) -> dict[str, Any]:
    """Keyword arguments of ``save_bundle`` that carry the loaded bundle's long-history selection, when it has one."""
    selector = getattr(model.bundle, "history_selector", None)
    return {"history": selector()} if selector is not None else {}


def _log_run(tracking: Any, config: dict, metrics: dict, history: list[dict], bundle_dir: Path,
             parent: str | None) -> str | None:
    if tracking is None or not getattr(tracking, "enabled", False):
        return None
    from recsys.tracking import flatten, log_artifact, log_metrics, start_run

    tags = {"stage": "rere"} | ({"mlflow.parentRunId": parent, "parent_run_id": parent} if parent else {})
    with start_run(tracking.experiment, tracking.run_name or "rere", flatten(config), tags) as run_id:
        for row in history:
            log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
        log_metrics(metrics)
        log_artifact(bundle_dir, artifact_path=BUNDLE)
    return run_id
