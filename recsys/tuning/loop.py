"""The ReRe optimisation loop shared by the set-identifier and TIGER tuners.

The model is tuned in place against a frozen copy of itself (the reference), in eval mode (dropout
off, so the group is drawn from the distribution the gradient is taken of), with AdamW and gradient
clipping. Validation runs before the first step, every ``eval_every`` steps and at the end of every
epoch; the state with the best valid NDCG@10 is kept (step 0 = the model as given) and patience
stops the loop. What a step's loss is belongs to the caller (:func:`recsys.tuning.setrec_rere.rere_step_loss`,
:func:`recsys.tuning.tiger_rere.rere_step_loss`).

Example:
    >>> outcome = run_rere_loop(model, config, np.arange(n), step_loss, validate)
    >>> outcome.best_step, outcome.history[0]["valid/ndcg@10"]
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from recsys.tuning.rere import ReReConfig

#: Training statistics averaged between validations (keys of a step's loss dict).
RUNNING = ("reward", "surrogate", "kl", "hit")


@dataclass
class LoopOutcome:
    """What :func:`run_rere_loop` did.

    Attributes:
        start_valid: valid metrics of the model as given.
        best_valid: valid metrics of the kept state (measured when it was validated; no second pass).
        best_step: optimiser step of the kept state (0 = the model as given).
        steps: optimiser steps taken.
        tuning_seconds: wall time of the steps alone (batches, losses, backward, updates; no validation).
        epochs: passes made over the samples (fractional when stopped within an epoch).
        history: per validation: step, epoch, valid NDCG@10 and the training statistics since the last one.
    """

    start_valid: dict[str, float]
    best_valid: dict[str, float]
    best_step: int
    steps: int
    tuning_seconds: float
    epochs: float
    history: list[dict[str, float]]


def run_rere_loop(model: torch.nn.Module, config: ReReConfig, samples: np.ndarray,
                  step_loss: Callable[[torch.nn.Module, np.ndarray, torch.Generator], dict | None],
                  validate: Callable[[], dict[str, float]], progress: bool = False) -> LoopOutcome:
    """Tune ``model`` in place; it ends in the kept state (see the module docstring).

    Args:
        model: the policy.
        config: ReRe settings (lr, weight decay, clipping, batch size, epochs, validation, patience, seed).
        samples: the ids the caller's batches are made of, shuffled each epoch (``config.batch_size`` per step).
        step_loss: ``(reference, batch ids, generator) -> dict`` with ``loss`` and the keys of :data:`RUNNING`, or
            None (or ``loss`` None) when the batch has nothing to learn from (no step is taken).
        validate: valid metrics of ``model`` as it is now (must hold ``ndcg@10``).
        progress: print one line per validation.
    """
    reference = copy.deepcopy(model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    model.eval()  # dropout off: the group is drawn from the distribution the gradient is taken of
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)

    start_valid = validate()
    best = (start_valid, 0, copy.deepcopy(model.state_dict()))
    history: list[dict[str, float]] = [{"step": 0, "valid/ndcg@10": start_valid["ndcg@10"]}]
    if progress:
        print(f"rere step 0: valid NDCG@10 {start_valid['ndcg@10']:.4f} (supervised)")
    step, stale, tuning_seconds, stop, epochs_done = 0, 0, 0.0, False, 0.0
    running: dict[str, list[float]] = {key: [] for key in RUNNING}
    for epoch in range(config.max_epochs):
        order = samples[torch.randperm(len(samples), generator=generator).numpy()]
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        for number, batch in enumerate(batches, start=1):
            tick = time.perf_counter()
            out = step_loss(reference, batch, generator)
            if out is None or out["loss"] is None:
                continue
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            step += 1
            epochs_done = epoch + number / len(batches)
            tuning_seconds += time.perf_counter() - tick
            for key in running:
                running[key].append(float(out[key]))
            end_of_epoch = number == len(batches)
            if (config.eval_every and step % config.eval_every == 0) or end_of_epoch:  # an epoch's last steps are validated too
                metrics = validate()
                row = {"step": step, "epoch": epoch, "valid/ndcg@10": metrics["ndcg@10"],
                       **{f"train/{k}": float(np.mean(v)) for k, v in running.items() if v}}
                history.append(row)
                running = {key: [] for key in RUNNING}
                if progress:
                    print(f"rere step {step} (epoch {epoch}): valid NDCG@10 {metrics['ndcg@10']:.4f}, "
                          f"reward {row.get('train/reward', math.nan):.4f}, hit {row.get('train/hit', math.nan):.3f}, "
                          f"kl {row.get('train/kl', math.nan):.4g}")
                if metrics["ndcg@10"] > best[0]["ndcg@10"]:
                    best, stale = (metrics, step, copy.deepcopy(model.state_dict())), 0
                else:
                    stale += 1
                    if stale >= config.patience:
                        stop = True
                        break
        if stop:
            break

    model.load_state_dict(best[2])
    model.eval()
    return LoopOutcome(start_valid, best[0], best[1], step, tuning_seconds, epochs_done, history)
