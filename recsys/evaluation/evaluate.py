"""Evaluate one recommender on one split: per-user metrics, group means and inference time.

Users are processed in batches; catalogue scorers are ranked exactly over the whole
catalogue (ties against the gold item), list generators by position in their list.
With ``exclude_history`` the user's history items are removed from the ranking (gold
items always stay rankable, so repeat consumption is not penalised).

Inference time covers what serving does for every user: the model call and the top-k
selection (beam search for list generators), batched, without metric computation.

A model is evaluated only on the dataset it was trained on: :func:`check_same_dataset`
compares the dataset fingerprint the model records with the prepared dataset's (same item
count but other ids, or another split of the same data, would otherwise print a full table
of meaningless numbers).

Example:
    >>> result = evaluate(recommender, data.eval_examples("test"), ItemGroups.from_dataset(data))
    >>> result.summary["all"]["ndcg@10"], result.summary["cold"]["recall@20"]
    >>> result.per_user.write_parquet("per_user.parquet")
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys.evaluation.groups import DEFAULT_HISTORY_EDGES, PROTOCOL_GROUPS, ItemGroups, history_bucket
from recsys.evaluation.metrics import (
    DEFAULT_KS,
    exclude_items,
    list_ranks,
    list_ranks_among,
    set_ranks_among,
    mean_metrics,
    metric_keys,
    pad_gold,
    per_user_metrics,
    set_ranks,
)
from recsys.errors import ArtifactError
from recsys.evaluation.recommenders import Recommender

#: The flag of ``recsys evaluate`` that evaluates a model on data it records no match with.
ALLOW_OTHER_DATA_FLAG = "--allow-other-data"


def recorded_dataset_fingerprint(model_dir: str | Path) -> str | None:
    """The dataset fingerprint a saved model records, or None when it records none.

    Where it is recorded: a set-identifier bundle's ``manifest.json`` (``dataset_fingerprint``),
    a TIGER folder's ``config.json`` (``extra.dataset``), a SASRec folder's ``metrics.json``
    (``dataset``; written by ``fit_sasrec``).

    Example:
        >>> recorded_dataset_fingerprint("runs/setrec-t5-demo/bundle")
        'a1b2c3d4e5f60718'
    """
    model_dir = Path(model_dir)
    for name, keys in (("manifest.json", ("dataset_fingerprint",)), ("config.json", ("extra", "dataset")),
                       ("metrics.json", ("dataset",))):
        path = model_dir / name
        if not path.is_file():
            continue
        value = json.loads(path.read_text())
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            return value
    return None


def check_same_dataset(model: str | Path, recorded: str | None, data: str | Path, fingerprint: str, *, allow: bool) -> dict:
    """Refuse to pair a model with a dataset it was not trained on, unless ``allow``.

    Args:
        model, data: the model folder and the prepared dataset folder (for the message).
        recorded: the fingerprint the model records (:func:`recorded_dataset_fingerprint`), or None.
        fingerprint: the prepared dataset's fingerprint (``manifest.json``).
        allow: the user's explicit override (``--allow-other-data``).

    Returns:
        ``{"model": recorded, "data": fingerprint, "same": bool, "override": bool}`` for the outputs.

    Raises:
        ArtifactError: the fingerprints differ, or the model records none, and ``allow`` is False;
            the message names both fingerprints.
    """
    same = recorded is not None and recorded == fingerprint
    if not same and not allow:
        if recorded is None:
            problem = f"{model} records no dataset fingerprint, so it cannot be checked against {data} (fingerprint {fingerprint})"
        else:
            problem = (f"{model} was trained on the dataset with fingerprint {recorded}, but {data} has fingerprint "
                       f"{fingerprint} (other data, other ids or another split)")
        raise ArtifactError(f"{problem}; evaluate the model on the dataset it was trained on, or pass "
                            f"{ALLOW_OTHER_DATA_FLAG} to evaluate it anyway (the output then says so)")
    return {"model": recorded, "data": fingerprint, "same": same, "override": not same}


@dataclass
class EvaluationResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        method: recommender name.
        per_user: long table, one row per (user, group): user_idx, group, history_len,
            num_gold (gold items of the group) and one column per metric (NaN when the
            user has no gold item in the group). Groups ``cold_only``/``warm_only`` rank their
            gold items among the cold/warm items only (``recsys.evaluation.groups.PROTOCOL_GROUPS``);
            every other group ranks over the whole catalogue.
        summary: group -> metric -> mean over users with a gold item in the group.
        counts: group -> {"users": evaluated users, "skipped_empty_gold": users skipped}.
        inference_seconds: wall time of model calls and top-k selection over all users.
        num_users: users evaluated.
    """

    method: str
    per_user: pl.DataFrame
    summary: dict[str, dict[str, float]]
    counts: dict[str, dict[str, int]]
    inference_seconds: float
    num_users: int
    extra: dict = field(default_factory=dict)

    @property
    def seconds_per_1000_users(self) -> float:
        return 1000.0 * self.inference_seconds / max(self.num_users, 1)

    def metric(self, name: str, group: str = "all") -> np.ndarray:
        """Per-user values of ``name`` in ``group``, ordered by user_idx."""
        rows = self.per_user.filter(pl.col("group") == group).sort("user_idx")
        return rows[name].to_numpy()


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def evaluate(
    recommender: Recommender,
    examples,
    groups: ItemGroups,
    ks: tuple[int, ...] = DEFAULT_KS,
    exclude_history: bool = True,
    batch_size: int = 256,
    history_edges: tuple[int, ...] = DEFAULT_HISTORY_EDGES,
) -> EvaluationResult:
    """Evaluate ``recommender`` on ``examples`` (``PreparedDataset.eval_examples(split)``).

    Args:
        recommender: a :class:`Recommender`.
        examples: user_idx, histories and gold sets (one gold item for leave-one-out).
        groups: item groups built from the train split.
        ks: metric cut-offs; ranked-list methods are asked for max(ks) items.
        exclude_history: remove history items from the ranking (never the gold items).
        batch_size: users per model call.
        history_edges: upper bounds of the history-length buckets.

    Returns:
        An :class:`EvaluationResult`.
    """
    num_items = groups.train_counts.shape[0]
    if recommender.num_items != num_items:
        raise ValueError(f"{recommender.name} scores {recommender.num_items} items, the dataset has {num_items}")
    item_masks = {name: torch.from_numpy(mask) for name, mask in groups.item_masks().items()}
    max_k = max(ks)
    all_ranks: list[torch.Tensor] = []
    among_ranks: dict[str, list[torch.Tensor]] = {name: [] for name in PROTOCOL_GROUPS}
    all_gold: list[torch.Tensor] = []
    seconds = 0.0
    with torch.no_grad():
        for part in _batches(len(examples), batch_size):
            histories = examples.histories[part]
            gold = pad_gold(examples.gold[part])
            if recommender.output == "scores":
                start = time.perf_counter()
                scores = recommender.score(histories).float()
                if exclude_history:
                    exclude_items(scores, histories, keep=gold)
                scores.topk(min(max_k, num_items), dim=1)  # what serving does; timed
                seconds += time.perf_counter() - start
                if scores.shape != (len(histories), num_items):
                    raise ValueError(f"{recommender.name} returned scores of shape {tuple(scores.shape)}")
                ranks = set_ranks(scores, gold)
                for name, group in PROTOCOL_GROUPS.items():
                    among_ranks[name].append(set_ranks_among(scores, gold, item_masks[group]))
            else:
                exclude = None
                if exclude_history:
                    gold_sets = [set(g) for g in examples.gold[part]]
                    exclude = [[i for i in h if i not in gs] for h, gs in zip(histories, gold_sets)]
                start = time.perf_counter()
                ranked = recommender.rank(histories, max_k, exclude)
                seconds += time.perf_counter() - start
                ranks = list_ranks(ranked, gold)
                for name, group in PROTOCOL_GROUPS.items():
                    among_ranks[name].append(list_ranks_among(ranked, gold, item_masks[group]))
            all_ranks.append(ranks)
            all_gold.append(gold)
    width = max((g.shape[1] for g in all_gold), default=1)

    def stack(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1]), value=math.inf) for r in parts]) if parts else torch.zeros(0, 1)

    ranks = stack(all_ranks)
    group_ranks = {name: stack(parts) for name, parts in among_ranks.items()}
    gold = torch.cat([torch.nn.functional.pad(g, (0, width - g.shape[1]), value=-1) for g in all_gold]) if all_gold else torch.zeros(0, 1, dtype=torch.int64)
    valid = gold >= 0
    history_len = np.array([len(h) for h in examples.histories], dtype=np.int64)
    buckets = np.array([history_bucket(int(n), history_edges) for n in history_len], dtype=object)
    group_masks: dict[str, torch.Tensor] = {"all": valid}
    for name, mask in item_masks.items():
        group_masks[name] = valid & mask[gold.clamp(min=0)]
    for name, group in PROTOCOL_GROUPS.items():
        group_masks[name] = group_masks[group]
    frames = []
    summary: dict[str, dict[str, float]] = {}
    counts: dict[str, dict[str, int]] = {}
    user_idx = np.asarray(examples.user_idx, dtype=np.int64)

    def add(name: str, rows: np.ndarray, mask: torch.Tensor) -> None:
        metrics = per_user_metrics(group_ranks.get(name, ranks)[rows], mask[rows], ks)
        means, skipped = mean_metrics(metrics)
        summary[name] = means
        counts[name] = {"users": int(rows.size) - skipped, "skipped_empty_gold": skipped}
        frame = {
            "user_idx": user_idx[rows],
            "group": [name] * int(rows.size),
            "history_len": history_len[rows],
            "num_gold": mask[rows].sum(dim=1).numpy().astype(np.int64),
        }
        frame.update({key: metrics[key].numpy() for key in metric_keys(ks)})
        frames.append(pl.DataFrame(frame))

    everyone = np.arange(len(examples))
    for name, mask in group_masks.items():
        add(name, everyone, mask)
    for bucket in sorted(set(buckets.tolist()), key=lambda b: int(b[5:].split("-")[0].rstrip("+"))):
        add(bucket, np.flatnonzero(buckets == bucket), valid)
    per_user = pl.concat(frames) if frames else pl.DataFrame()
    return EvaluationResult(recommender.name, per_user, summary, counts, seconds, len(examples))
