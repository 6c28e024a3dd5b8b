"""Bootstrap confidence intervals over users: one model's mean, and paired differences.

Users are the resampling unit. A paired comparison resamples the same users for both
models, so the interval is on the mean per-user difference and is much tighter than
two separate intervals when the models agree on which users are easy.

Example:
    >>> lo, hi = bootstrap_ci(np.array([0.0, 1.0, 1.0, 0.0]))
    >>> paired_bootstrap(np.array([1.0, 0.5]), np.array([0.5, 0.5]))["diff"]   # 0.25
"""

from __future__ import annotations

import numpy as np

DEFAULT_SAMPLES = 1000
DEFAULT_ALPHA = 0.05


def _resample_means(values: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """Means of ``num_samples`` resamples (with replacement) of the rows of ``values``."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    out = np.empty(num_samples, dtype=np.float64)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, num_samples, chunk):
        stop = min(num_samples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = values[idx].mean(axis=1)
    return out


def bootstrap_ci(
    values: np.ndarray, num_samples: int = DEFAULT_SAMPLES, alpha: float = DEFAULT_ALPHA, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaN entries dropped).

    Args:
        values: (n,) per-user metric values.
        num_samples: bootstrap resamples.
        alpha: 1 - coverage (0.05 gives a 95% interval).
        seed: random seed (results are reproducible).

    Returns:
        (lo, hi); (nan, nan) when no value is finite.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    means = _resample_means(values, num_samples, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, num_samples: int = DEFAULT_SAMPLES, alpha: float = DEFAULT_ALPHA, seed: int = 0
) -> dict[str, float | list[float]]:
    """Paired bootstrap of mean(a - b) over the same users.

    Args:
        a: (n,) per-user metric of model A.
        b: (n,) per-user metric of model B, same users in the same order.
        num_samples: bootstrap resamples.
        alpha: 1 - coverage.
        seed: random seed.

    Returns:
        ``{"diff": mean(a - b), "ci": [lo, hi], "p_a_not_better": share of resamples with
        mean diff <= 0, "users": n}``; users where either value is NaN are dropped.

    Raises:
        ValueError: a and b have different lengths (they must be aligned by user).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs aligned users: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    diff = a[keep] - b[keep]
    if diff.size == 0:
        return {"diff": float("nan"), "ci": [float("nan"), float("nan")], "p_a_not_better": float("nan"), "users": 0}
    means = _resample_means(diff, num_samples, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {
        "diff": float(diff.mean()),
        "ci": [float(lo), float(hi)],
        "p_a_not_better": float((means <= 0).mean()),
        "users": int(diff.size),
    }
