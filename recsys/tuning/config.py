"""Typed configuration of ``recsys tune rere`` (read through the one config path, :mod:`recsys.config`).

Example:
    >>> from recsys.config import load_config
    >>> cfg = load_config(TuneJobConfig, [], {"bundle": "runs/setrec/bundle", "data": "runs/data/ml-100k", "rere.lr": 2e-5})
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys.errors import ConfigError
from recsys.training.setrec_config import TrackingConfig
from recsys.tuning.rere import ReReConfig


@dataclass
class TuneJobConfig:
    """Settings of ``recsys tune rere`` (parsed through :mod:`recsys.config`)."""

    bundle: str = ""
    """The trained model: a set-identifier bundle folder or a saved TIGER folder."""
    data: str = ""
    """The prepared dataset the model was trained on."""
    out_dir: str = "runs/rere"
    """Output folder: the tuned model and result.json."""
    rere: ReReConfig = field(default_factory=ReReConfig)
    """ReRe settings (Tan et al., arXiv 2510.12211)."""
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="tuning-rere"))
    """MLflow tracking of the tuning run."""
    torch_threads: int | None = None
    """Intra-op threads of torch (None keeps torch's default)."""

    def validate(self) -> None:
        for key in ("bundle", "data"):
            if not getattr(self, key):
                raise ConfigError(f"{key}: required (--{key} PATH)")
