"""ReRe tuning of TIGER: on-policy groups from the trie-constrained beam search, sequence log-probabilities.

The policy of a trained TIGER model is its distribution over item code sequences: an item's
log-probability is ``sum_l log p(code_l | history, codes_<l, item exists)``, each level
renormalised over the children the catalogue's trie allows (:meth:`recsys.models.tiger.Tiger.
sequence_log_probs`, equal to the beam search's scores). For each training prefix (a user's
train history, at most ``max_history`` items, and the held-out next train item) the group is
the trie-constrained beam search with beam ``group_size`` (ReRe's sampling stage): G distinct, valid
items, most probable first. With ``exclude_history`` (the default, as the benchmark harness
evaluates) the items of the prefix's history other than its target are dropped from the beam
at the last code (no renormalisation, so no other item's score changes); the group then holds
only items the evaluated ranking could hold, and the target can always be in it.

Each step rewards the group with :func:`recsys.tuning.rere.rere_rewards` against the target
and minimises :func:`recsys.tuning.rere.rere_loss`: the GRPO surrogate on group-normalised
advantages plus ``kl_weight`` times GRPO's per-sample KL estimate to the supervised model (a
frozen copy), on the group's sequence log-probabilities. Dropout is off (eval mode) so the
group is drawn from the distribution the gradient is taken of.

Training prefixes come from the train split only (``windows: last``: each user's last train
target; ``all``: every train target, ``recsys.training.sasrec.PrefixBatches``). Validation
NDCG@10 (beam search on the valid split, history excluded as in the groups) is measured before
the first step and every ``eval_every`` steps (0 = per epoch); the best state is kept, so a
tuning that does not help on validation returns the supervised model unchanged (``best_step``
0). Test metrics are computed once, for the record, on the kept state.

Example:
    >>> result = tune_tiger("runs/tiger", "runs/data/ml-100k", ReReConfig(max_epochs=1), "runs/tiger-rere")
    >>> result.valid_metrics["ndcg@10"], result.best_step, result.bundle_dir      # runs/tiger-rere/model
    >>> tuned = tune_tiger_model(model, data, ReReConfig())                       # in memory, no files
    >>> tuned.model, tuned.result(bundle_dir=None).best_step
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.errors import ArtifactError
from recsys.models.tiger import Tiger
from recsys.pipelines.prepared import PreparedDataset
from recsys.training.sasrec import PrefixBatches
from recsys.training.tiger import evaluate_tiger, load_tiger, save_tiger
from recsys.tuning.loop import run_rere_loop
from recsys.tuning.rere import ReReConfig, group_advantages, kl_estimate, rere_loss, rere_rewards
from recsys.tuning.setrec_rere import RESULT, TuneResult, _parent_run

MODEL = "model"


# --------------------------------------------------------------------------- prefixes


class TuningPrefixes:
    """The train prefixes ReRe tunes on, as (histories, targets, exclusions) batches.

    Args:
        sequences: each user's train items, oldest first (``PreparedDataset.train_sequences()``).
        max_history: most recent items of a history the model reads (``TigerConfig.max_history``).
        windows: "last" (each user's last train target) or "all" (every train target).
        exclude_history: exclusions = the prefix's whole history (not only the last ``max_history``
            items) minus its target, as the harness excludes a user's history but the gold items.

    Example:
        >>> prefixes = TuningPrefixes(data.train_sequences(), 20, "last")
        >>> histories, targets, exclude = prefixes([0, 1, 2])
    """

    def __init__(self, sequences: list[list[int]], max_history: int, windows: str, exclude_history: bool = True) -> None:
        self.samples = PrefixBatches(sequences, max_history)
        self.exclude_history = exclude_history
        if windows == "last":
            boundaries = np.cumsum([len(s) for s in sequences])  # flat index after each user's last item
            self.indices = np.nonzero(np.isin(self.samples.target_pos + 1, boundaries))[0]
        else:
            self.indices = np.arange(len(self.samples))

    def __len__(self) -> int:
        return len(self.indices)

    def __call__(self, rows: list[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list[list[int]] | None]:
        """Rows of :attr:`indices` -> histories (B, L) left-padded with -1, targets (B,), exclusions or None."""
        chosen = self.indices[np.asarray(rows, dtype=np.int64)]
        histories, targets = self.samples(chosen.tolist())
        exclude = None
        if self.exclude_history:
            items = self.samples.items
            exclude = [sorted(set(items[s:t].tolist()) - {int(items[t])})
                       for s, t in zip(self.samples.seq_start[chosen], self.samples.target_pos[chosen])]
        return histories, targets, exclude


# --------------------------------------------------------------------------- one step


def generate_group(model: Tiger, histories: torch.Tensor, group_size: int,
                   exclude: list[list[int]] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The group of each prefix: trie-constrained beam search with beam ``group_size`` (no gradient).

    Returns:
        ``(items (B, G), scores (B, G))``, most probable first; -1 / -inf where fewer than G items are reachable.
    """
    with torch.no_grad():
        return model.beam_search(histories, group_size, exclude)


def rere_step_loss(model: Tiger, reference: Tiger, histories: torch.Tensor, targets: torch.Tensor,
                   exclude: list[list[int]] | None, config: ReReConfig) -> dict[str, torch.Tensor]:
    """The ReRe loss of one batch of prefixes (see the module docstring).

    Args:
        model: the policy (eval mode, with gradient).
        reference: the frozen supervised model.
        histories: (B, L) histories left-padded with -1.
        targets: (B,) held-out next items.
        exclude: items per prefix kept out of the group, or None.
        config: ReRe settings.

    Returns:
        The keys of :func:`recsys.tuning.rere.rere_loss` plus ``reward`` (mean group reward), ``hit`` (share of
        groups holding the target) and ``groups`` (prefixes used: a prefix with fewer than G reachable items is
        skipped). ``loss`` is None when no prefix is usable.
    """
    group, _ = generate_group(model, histories, config.group_size, exclude)
    full = (group >= 0).all(dim=1)
    targets = targets.to(group.device)
    if not bool(full.all()):
        histories, group, targets = histories[full.cpu()], group[full], targets[full]
    if group.shape[0] == 0:
        zero = torch.zeros(())
        return {"loss": None, "surrogate": zero, "kl": zero, "reward": zero, "hit": zero, "groups": zero}
    log_probs = model.sequence_log_probs(histories, group)  # (T, G)
    with torch.no_grad():
        ref_log_probs = reference.sequence_log_probs(histories, group)
    rewards = rere_rewards(group, targets, config.rank_weight)
    advantages = group_advantages(rewards)
    out = rere_loss(log_probs, log_probs.detach(), advantages, kl_estimate(log_probs, ref_log_probs), config)
    out["reward"] = rewards.mean().detach()
    out["hit"] = (group == targets[:, None]).any(dim=1).float().mean()
    out["groups"] = torch.tensor(float(group.shape[0]))
    return out


@torch.no_grad()
def mean_group_reward(model: Tiger, prefixes: TuningPrefixes, config: ReReConfig, batch_size: int = 256) -> float:
    """Mean ReRe reward of the model's groups over ``prefixes`` (every usable group, G entries each)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(prefixes), batch_size):
        histories, targets, exclude = prefixes(np.arange(start, min(start + batch_size, len(prefixes))))
        group, _ = generate_group(model, histories, config.group_size, exclude)
        full = (group >= 0).all(dim=1)
        rewards = rere_rewards(group[full], targets.to(group.device)[full], config.rank_weight)
        total, count = total + float(rewards.sum()), count + rewards.numel()
    return total / max(count, 1)


# --------------------------------------------------------------------------- the loop


@dataclass
class TigerTuning:
    """What :func:`tune_tiger_model` returns: the tuned model (the kept state) and the record of the tuning.

    Attributes:
        model: the kept state (eval mode, CPU or the model's device): the start when ``best_step`` is 0.
        valid_metrics, test_metrics, start_valid_metrics, best_step, steps, seconds, tuning_seconds, prefixes,
        history, epochs: as in :class:`recsys.tuning.setrec_rere.TuneResult` (``test_metrics`` is empty when
        ``record_test`` was off).
    """

    model: Tiger
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

    def result(self, bundle_dir: str | Path | None, run_id: str | None = None) -> TuneResult:
        """The :class:`TuneResult` of this tuning, its model saved at ``bundle_dir``."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        return TuneResult(bundle_dir=Path(bundle_dir) if bundle_dir is not None else None, run_id=run_id, **values)


def tune_tiger_model(model: Tiger, data: PreparedDataset, config: ReReConfig, exclude_history: bool = True,
                     record_test: bool = True, progress: bool = False) -> TigerTuning:
    """ReRe-tune an in-memory TIGER model on ``data``'s train split; validation selects the kept step.

    ``model`` itself is tuned in place and ends in the kept state (a copy of the start serves as the
    frozen reference).

    Args:
        model: a trained :class:`Tiger` (``fit_tiger(...).model`` or ``load_tiger(...)``).
        data: the prepared dataset it was trained on.
        config: ReRe settings (``group_size`` is the beam of the group; ``sampling`` and ``temperature`` apply
            to set identifiers only).
        exclude_history: keep each prefix's history items (but its target) out of the group, and validate with
            the users' history items (but the gold ones) excluded, as the benchmark harness evaluates.
        record_test: compute the kept state's test metrics (for the record; nothing is selected on them).
        progress: print one line per validation.

    Example:
        >>> tuned = tune_tiger_model(fit_tiger(data, codes, TigerConfig()).model, data, ReReConfig(max_epochs=1))
        >>> tuned.best_step, tuned.valid_metrics["ndcg@10"]
    """
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    if model.num_items != data.num_items:
        raise ArtifactError(f"the TIGER model covers {model.num_items} items, the dataset {data.num_items}; tune on the "
                            "dataset the model was trained on")
    prefixes = TuningPrefixes(data.train_sequences(), model.config.max_history, config.windows, exclude_history)
    eval_batch = int(model.config.eval_batch_size)
    valid = data.eval_examples("valid")

    def validate() -> dict[str, float]:
        return evaluate_tiger(model, valid, eval_batch, exclude_history=exclude_history)

    def step_loss(reference, batch, generator):
        histories, targets, exclude = prefixes(batch)
        return rere_step_loss(model, reference, histories, targets, exclude, config)

    outcome = run_rere_loop(model, config, np.arange(len(prefixes)), step_loss, validate, progress)
    valid_metrics = outcome.best_valid
    test_metrics = (evaluate_tiger(model, data.eval_examples("test"), eval_batch, exclude_history=exclude_history)
                    if record_test else {})
    return TigerTuning(model, valid_metrics, test_metrics, outcome.start_valid, outcome.best_step, outcome.steps,
                       time.perf_counter() - start, outcome.tuning_seconds, len(prefixes), outcome.history, outcome.epochs)


def tune_tiger(model_dir: str | Path, data_dir: str | Path, config: ReReConfig, out_dir: str | Path,
               tracking: Any = None, progress: bool = False, exclude_history: bool = True) -> TuneResult:
    """ReRe-tune the TIGER model saved at ``model_dir`` on ``data_dir``'s train split; writes ``<out_dir>/model``.

    Args:
        model_dir: a folder written by :func:`recsys.training.tiger.save_tiger`.
        data_dir: the prepared dataset the model was trained on (checked against the fingerprint the folder
            records, when it records one).
        config: ReRe settings.
        out_dir: output folder: ``model/`` (the tuned model, ``load_tiger`` reads it) and ``result.json``.
        tracking: a ``TrackingConfig`` (None or ``enabled: false``: no MLflow run). The run is tagged with the
            supervised run as ``mlflow.parentRunId`` / ``parent_run_id`` when that run is recorded.
        progress: print one line per validation.
        exclude_history: see :func:`tune_tiger_model`.

    Raises:
        ArtifactError: the model folder is incomplete, or the dataset is not the one it was trained on.

    Example:
        >>> tune_tiger("runs/tiger", "runs/data/ml-100k", ReReConfig(), "runs/tiger-rere").best_step
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = load_tiger(model_dir)
    saved_extra = _saved_extra(model_dir)
    data = PreparedDataset.load(data_dir)
    recorded = saved_extra.get("dataset")
    if recorded not in (None, data.fingerprint):
        raise ArtifactError(f"{model_dir}: trained on dataset {recorded}, but {data_dir} is {data.fingerprint}; tune on "
                            "the dataset the model was trained on")
    tuned = tune_tiger_model(model, data, config, exclude_history=exclude_history, progress=progress)
    metrics = ({f"valid/{k}": v for k, v in tuned.valid_metrics.items()}
               | {f"test/{k}": v for k, v in tuned.test_metrics.items()})
    tuned_config = {"tiger": model.config.to_dict(), "rere": asdict(config), "exclude_history": exclude_history,
                    "tuned_from": str(model_dir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = save_tiger(tuned.model, out_dir / MODEL, extra={
        "dataset": data.fingerprint, "tuned_from": str(model_dir), "rere": asdict(config), "exclude_history": exclude_history,
        "best_step": tuned.best_step, "valid": tuned.valid_metrics, "test": tuned.test_metrics,
    })
    parent = saved_extra.get("mlflow_run_id") or _parent_run(model_dir)
    run_id = _log_run(tracking, tuned_config, metrics, tuned.history, saved, parent)
    result = tuned.result(saved, run_id)
    (out_dir / RESULT).write_text(json.dumps(result.to_json(), indent=2))
    return result


def _saved_extra(model_dir: Path) -> dict[str, Any]:
    """The ``extra`` mapping :func:`save_tiger` wrote into ``config.json`` (empty when unreadable)."""
    try:
        return dict(json.loads((model_dir / "config.json").read_text()).get("extra") or {})
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}


def _log_run(tracking: Any, config: dict, metrics: dict, history: list[dict], model_dir: Path,
             parent: str | None) -> str | None:
    if tracking is None or not getattr(tracking, "enabled", False):
        return None
    from recsys.tracking import flatten, log_artifact, log_metrics, start_run

    tags = {"stage": "rere", "model": "tiger"} | ({"mlflow.parentRunId": parent, "parent_run_id": parent} if parent else {})
    with start_run(tracking.experiment, tracking.run_name or "tiger-rere", flatten(config), tags) as run_id:
        for row in history:
            log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
        log_metrics(metrics)
        log_artifact(model_dir, artifact_path=MODEL)
    return run_id
