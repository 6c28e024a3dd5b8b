"""MLflow helpers: tracking URI, flattened params, tags, the Lightning logger.

The embedded default store is ``sqlite:///mlruns.db`` in the working directory;
``MLFLOW_TRACKING_URI`` points elsewhere.

Example:
    >>> configure()
    >>> logger = lightning_logger("sasrec", run_name="ml-100k", tags={"dataset": "abc"})
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
DEFAULT_ARTIFACT_ROOT = "mlartifacts"


def tracking_uri() -> str:
    """The tracking URI in use: ``MLFLOW_TRACKING_URI`` or the embedded sqlite default."""
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def configure() -> str:
    """Point mlflow at :func:`tracking_uri` and return it."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_id(name: str) -> str:
    """Id of experiment ``name``, created with a local artifact root when missing."""
    import mlflow

    configure()
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifact_root = Path(DEFAULT_ARTIFACT_ROOT).resolve().as_uri() if tracking_uri().startswith("sqlite") else None
    return mlflow.create_experiment(name, artifact_location=artifact_root)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys: ``{"a": {"b": 1}} -> {"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def git_commit() -> str:
    """Current git commit of the working directory, or "unknown" outside a repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def lightning_logger(experiment: str, run_name: str | None = None, tags: Mapping[str, str] | None = None):
    """An ``MLFlowLogger`` on the configured store, tagged with the git commit."""
    from lightning.pytorch.loggers import MLFlowLogger

    experiment_id(experiment)
    all_tags = {"git_commit": git_commit(), **(tags or {})}
    return MLFlowLogger(
        experiment_name=experiment,
        run_name=run_name,
        tracking_uri=tracking_uri(),
        tags=all_tags,
    )
