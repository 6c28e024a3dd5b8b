"""CF embeddings predicted from text for items without a train interaction (ARCHITECTURE.md section 3.1).

An item that no train interaction touched (catalogue-only, cold in valid or test, or added to the
running service) has no collaborative signal. Instead of the zero vector (whose CF token is the
projection bias, the same for every such item) it gets ``e_hat = z W + b``: a linear map from its
text embedding ``z`` to the CF space, fitted on warm items only, i.e. on the pairs
``(z_i, e_i)`` of items with a train interaction. This is the CF-text alignment of RLMRec
(Ren et al., WWW 2024, section 3: cross-view alignment of semantic and collaborative
representations) used in the text -> CF direction, as a closed-form ridge regression:

    W = (Zc^T Zc + lambda I)^-1 Zc^T Ec,   b = mean(E) - mean(Z) W

(Zc, Ec the centred warm rows), lambda chosen by K-fold cross-validation on the warm items
(mean squared error; folds by a seeded permutation). Why ridge and not the RLMRec-Con MLP
projection: InfoNCE aligns directions (cosine) only, so that projection predicts no scale, and it
exists only for ``--align con``; ridge fits any CF artifact (trained, aligned or imported) in
milliseconds, is deterministic, and its held-out fit is measured and recorded (``cv_r2``,
``cv_cosine``). Measured on the benchmark's plain SASRec CF embeddings (5-fold, warm items):
amazon-industrial ridge R^2 0.032 / cosine 0.521 (10-NN text neighbours' mean: -0.015 / 0.503; the
mean embedding alone: cosine 0.495), ml-100k 0.184 / 0.558 (10-NN 0.123 / 0.524): ridge is the better
predictor, and plain SASRec embeddings carry little that text predicts, which is what the RLMRec
alignment (``--align``) is for.

Leakage: the fit reads the CF embeddings and texts of the rows in ``warm`` and nothing else;
callers pass ``PreparedDataset.train_item_mask()`` (train split only). A test changes the valid
and test interactions and checks the map is bit-identical.

Example:
    >>> mapping = fit_text_to_cf(text, cf, warm=torch.from_numpy(data.train_item_mask()))
    >>> mapping.predict(text[~warm]).shape      # (num_cold, cf_dim)
    >>> mapping.info()                          # {"lambda": ..., "cv_r2": ..., "warm_items": ...}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from recsys.errors import ArtifactError

#: Ridge strengths tried, as multiples of the mean eigenvalue of Zc^T Zc.
LAMBDA_GRID = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 30.0)
#: Cross-validation folds over the warm items.
FOLDS = 5


@dataclass
class TextToCF:
    """A fitted text -> CF map: ``predict(z) = z @ weight + bias``.

    Attributes:
        weight: (dz, cf_dim) float32.
        bias: (cf_dim,) float32.
        stats: how it was fitted (``method``, ``lambda``, ``warm_items``, ``cv_r2``, ``cv_cosine``).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[1],):
            raise ArtifactError(f"text->CF map: weight must be (dz, cf_dim) and bias (cf_dim,), got "
                                f"{tuple(self.weight.shape)} and {tuple(self.bias.shape)}")

    def predict(self, text: torch.Tensor) -> torch.Tensor:
        """(B, dz) text embeddings -> (B, cf_dim) predicted CF embeddings."""
        if text.ndim != 2 or text.shape[1] != self.weight.shape[0]:
            raise ArtifactError(f"text->CF map reads ({self.weight.shape[0]},)-d text embeddings, got {tuple(text.shape)}")
        return text.to(self.weight) @ self.weight + self.bias

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors stored next to the CF embeddings (``text_to_cf_weight``, ``text_to_cf_bias``)."""
        return {"text_to_cf_weight": self.weight.contiguous(), "text_to_cf_bias": self.bias.contiguous()}


def _ridge(z: torch.Tensor, e: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ridge with an unpenalised intercept (float64): (weight (dz, k), bias (k,))."""
    z_mean, e_mean = z.mean(0), e.mean(0)
    zc, ec = z - z_mean, e - e_mean
    gram = zc.T @ zc
    gram.diagonal().add_(lam)
    weight = torch.linalg.solve(gram, zc.T @ ec)
    return weight, e_mean - z_mean @ weight


def fit_text_to_cf(text: torch.Tensor, cf: torch.Tensor, warm: torch.Tensor, seed: int = 0) -> TextToCF:
    """Fit the ridge map from text to CF embeddings on the warm rows only.

    Args:
        text: (num_items, dz) text embeddings.
        cf: (num_items, cf_dim) CF embeddings (rows outside ``warm`` are never read).
        warm: (num_items,) bool, items with a train interaction (``PreparedDataset.train_item_mask()``).
        seed: seeds the cross-validation folds.

    Returns:
        A :class:`TextToCF` refitted on all warm rows with the cross-validated lambda.

    Raises:
        ArtifactError: shapes disagree or fewer than 2 warm items.
    """
    warm = torch.as_tensor(warm).bool()
    if text.ndim != 2 or cf.ndim != 2 or text.shape[0] != cf.shape[0] or warm.shape != (cf.shape[0],):
        raise ArtifactError(f"text->CF map: text {tuple(text.shape)}, CF {tuple(cf.shape)} and warm {tuple(warm.shape)} "
                            "must describe the same items")
    rows = torch.nonzero(warm).flatten()
    if rows.numel() < 2:
        raise ArtifactError(f"text->CF map: {rows.numel()} warm item(s); at least 2 items need a train interaction")
    z = text[rows].to(torch.float64)
    e = cf[rows].to(torch.float64)
    zc = z - z.mean(0)
    scale = float(torch.trace(zc.T @ zc)) / z.shape[1] or 1.0
    folds = min(FOLDS, rows.numel())
    order = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(seed))
    parts = [order[i::folds] for i in range(folds)]
    scores = {}
    for factor in LAMBDA_GRID:
        lam = factor * scale
        sq, cos = 0.0, 0.0
        for held in parts:
            keep = torch.ones(rows.numel(), dtype=torch.bool)
            keep[held] = False
            if keep.sum() < 2:
                continue
            weight, bias = _ridge(z[keep], e[keep], lam)
            pred = z[held] @ weight + bias
            sq += float((pred - e[held]).pow(2).sum())
            cos += float(torch.nn.functional.cosine_similarity(pred, e[held], dim=1).sum())
        scores[factor] = (sq, cos)
    best = min(scores, key=lambda f: scores[f][0])
    total = float((e - e.mean(0)).pow(2).sum()) or math.inf
    weight, bias = _ridge(z, e, best * scale)
    stats = {
        "method": "ridge",
        "fitted_on": "items with a train interaction",
        "warm_items": int(rows.numel()),
        "lambda": best * scale,
        "lambda_factor": best,
        "cv_folds": folds,
        "cv_r2": 1.0 - scores[best][0] / total,
        "cv_cosine": scores[best][1] / rows.numel(),
    }
    return TextToCF(weight.float(), bias.float(), stats)
