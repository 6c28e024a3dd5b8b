"""Lightning module of the set-identifier recommender, and its full-catalogue evaluation.

Training minimises ``SetRecModel.loss`` (mean over the K query dimensions of cross-entropy over
the catalogue, plus alpha times the autoencoder MSE; with ``negatives: train`` the softmax holds
only items with a train interaction) with AdamW, linear warmup then cosine
decay, and gradient clipping (set on the Trainer). Validation scores the whole catalogue for a
batch of users at once (``dimension_scores``: one backbone pass gives every dimension), then
ranks it for every beta of the grid; ``valid/ndcg@10`` is the value at the epoch's best beta
(``valid/beta``). Beta is only ever chosen on the valid split.

Example:
    >>> module = SetRecModule(model, OptimConfig(), beta_grid=[0.0, 0.5, 1.0])
    >>> L.Trainer(max_epochs=1).fit(module, datamodule=SetRecDataModule(data, 20, 256))
    >>> per_beta = evaluate_beta_grid(model, dm.val_dataloader(), [0.0, 0.5, 1.0])
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import lightning as L
import torch

from recsys.evaluation.metrics import DEFAULT_KS, metric_keys, per_user_metrics, set_ranks
from recsys.models.setrec import SetRecModel
from recsys.training.setrec_config import OptimConfig

MONITOR = "valid/ndcg@10"
KS = DEFAULT_KS
METRICS = tuple(metric_keys(KS))


# --------------------------------------------------------------------------- evaluation


def mask_seen(scores: torch.Tensor, seen: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Set scores of each row's ``seen`` items to -inf, except its gold items (batched, no loop).

    Args:
        scores: (B, num_items).
        seen: (B, H) history items, -1 = padding.
        gold: (B, G) gold items, -1 = padding.

    Example:
        >>> mask_seen(torch.zeros(1, 3), torch.tensor([[0, 2]]), torch.tensor([[2]]))   # [[-inf, 0, 0]]
    """
    batch, num_items = scores.shape
    hide = torch.zeros(batch, num_items + 1, dtype=torch.bool, device=scores.device)
    hide.scatter_(1, torch.where(seen >= 0, seen, num_items), True)
    hide.scatter_(1, torch.where(gold >= 0, gold, num_items), False)
    return scores.masked_fill(hide[:, :num_items], -math.inf)


def beta_candidates(model: SetRecModel, beta_grid: Sequence[float]) -> list[float]:
    """The grid, or its first value alone when the token set makes beta irrelevant (``cf``/``semantic``)."""
    return list(beta_grid) if model.config.token_set == "all" else [float(beta_grid[0])]


class GridMetrics:
    """Sums of per-user metrics for every beta of a grid; reducible across processes.

    Args:
        betas: the candidate betas.
        device: where the sums live.
    """

    def __init__(self, betas: Sequence[float], device: torch.device | str = "cpu") -> None:
        self.betas = list(betas)
        self.sums = torch.zeros(len(self.betas), len(METRICS), dtype=torch.float64, device=device)
        self.users = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, model: SetRecModel, batch: dict[str, torch.Tensor], exclude_history: bool) -> None:
        """Score the whole catalogue for the batch's users (one pass) and add their metrics for every beta."""
        gold = batch["gold"]
        dims = model.dimension_scores(batch["histories"]).float()  # (B, K, I)
        valid = gold >= 0
        for row, beta in enumerate(self.betas):
            weights = model.dimension_weights(beta).to(dims)
            scores = torch.einsum("bki,k->bi", dims, weights)
            if exclude_history:
                scores = mask_seen(scores, batch["seen"], gold)
            per_user = per_user_metrics(set_ranks(scores, gold), valid, KS)
            has_gold = valid.any(dim=1)
            self.sums[row] += torch.stack([per_user[name][has_gold].sum() for name in METRICS]).to(self.sums)
            if row == 0:
                self.users += has_gold.sum()

    def means(self) -> list[dict[str, float]]:
        """Metric means per beta (NaN without users)."""
        users = float(self.users)
        return [
            {name: (float(v) / users if users else math.nan) for name, v in zip(METRICS, row)} for row in self.sums
        ]

    def best(self, key: str = "ndcg@10") -> tuple[float, dict[str, float]]:
        """(beta, metrics) of the beta with the highest ``key`` (the first of equals)."""
        means = self.means()
        index = max(range(len(means)), key=lambda i: (means[i][key], -i))
        return self.betas[index], means[index]


@torch.no_grad()
def evaluate_beta_grid(
    model: SetRecModel, batches: Iterable[dict[str, torch.Tensor]], beta_grid: Sequence[float], exclude_history: bool = True
) -> GridMetrics:
    """Full-catalogue metrics of ``model`` for every beta, over evaluation batches (see ``EvalSets``).

    Example:
        >>> beta, metrics = evaluate_beta_grid(model, dm.val_dataloader(), cfg.beta_grid).best()
    """
    model.eval()
    device = next(model.parameters()).device
    grid = GridMetrics(beta_candidates(model, beta_grid), device)
    for batch in batches:
        grid.update(model, {k: v.to(device) for k, v in batch.items()}, exclude_history)
    return grid


# --------------------------------------------------------------------------- schedule


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warmup to 1 over ``warmup_steps``, then cosine down to ``min_ratio``.

    Example:
        >>> [round(warmup_cosine(s, 2, 10, 0.1), 3) for s in (0, 1, 2, 10)]
        [0.5, 1.0, 1.0, 0.1]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- module


class SetRecModule(L.LightningModule):
    """Trains a :class:`SetRecModel`; validates on the full catalogue for every beta of the grid.

    Args:
        model: the model to train.
        optim: optimiser, schedule and alpha.
        beta_grid: candidate betas.
        exclude_history: hide seen items when ranking (gold items stay rankable).
        seed: with the step and rank, reseeds dropout before every step (exact resume).
        candidates: (num_items,) bool, the items of the training softmax (None: every item);
            the job passes the items with a train interaction (config ``negatives: train``).
    """

    def __init__(
        self,
        model: SetRecModel,
        optim: OptimConfig,
        beta_grid: Sequence[float],
        exclude_history: bool = True,
        seed: int = 0,
        candidates: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        # not persistent: checkpoints keep the model's weights only, and the mask follows the data
        self.register_buffer("candidates", candidates, persistent=False)
        self.optim = optim
        self.beta_grid = list(beta_grid)
        self.exclude_history = exclude_history
        self.seed = seed
        self._grid: GridMetrics | None = None

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Dropout depends on (seed, step, rank) only, so a resumed run draws what an uninterrupted one does.
        torch.manual_seed(self.seed * 1_000_003 + self.global_step * 7919 + self.global_rank)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        histories, targets = batch
        out = self.model.loss(histories, targets, self.optim.alpha, self.candidates)
        size = int(out["targets"])
        self.log("train/loss", out["loss"], on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log("train/ce", out["ce"], on_step=False, on_epoch=True, batch_size=size)
        self.log("train/ae", out["ae"], on_step=False, on_epoch=True, batch_size=size)
        return out["loss"]

    def on_validation_epoch_start(self) -> None:
        self._grid = GridMetrics(beta_candidates(self.model, self.beta_grid), self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._grid.update(self.model, batch, self.exclude_history)

    def on_validation_epoch_end(self) -> None:
        grid = self._grid
        grid.sums = self.trainer.strategy.reduce(grid.sums, reduce_op="sum")
        grid.users = self.trainer.strategy.reduce(grid.users, reduce_op="sum")
        beta, metrics = grid.best()
        for name, value in metrics.items():
            self.log(f"valid/{name}", value, prog_bar=name == "ndcg@10", sync_dist=False, rank_zero_only=False)
        self.log("valid/beta", beta, sync_dist=False)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            keep_plain = param.ndim < 2 or name in ("prompt", "response", "queries") or "norm" in name
            (no_decay if keep_plain else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.optim.lr,
            betas=tuple(self.optim.betas),
        )
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, self.optim.warmup_steps, total, self.optim.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
