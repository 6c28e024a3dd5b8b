"""The one tracking path: MLflow store, metric names, flattened params, tags, the Lightning logger, nested runs.

The embedded default store is ``sqlite:///mlruns.db`` in the working directory;
``MLFLOW_TRACKING_URI`` points elsewhere. MLflow forbids ``@`` in metric names, so every metric
reaches MLflow through :func:`metric_name` (``valid/ndcg@10`` -> ``valid/ndcg10``); result
files keep the ``ndcg@10`` keys.

Example:
    >>> configure()
    >>> logger = lightning_logger("sasrec", run_name="ml-100k", tags={"dataset": "abc"})
    >>> metric_name("test/ndcg@10")
    'test/ndcg10'
"""

from __future__ import annotations

import math
import os
import subprocess
import time
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


def metric_name(key: str) -> str:
    """The MLflow-safe name of a metric key: ``valid/ndcg@10`` -> ``valid/ndcg10`` (MLflow forbids ``@``).

    Example:
        >>> metric_name("cold/recall@20")
        'cold/recall20'
    """
    return key.replace("@", "")


class RunTree:
    """A parent MLflow run with nested child runs, through the client (no global active run).

    Args:
        enabled: False makes every method a no-op (``parent`` stays None).
        experiment: MLflow experiment name.
        run_name: name of the parent run.
        params: parent params (flattened, values cut at 500 characters).

    Example:
        >>> runs = RunTree(True, "benchmark-quality", "quality-ml-100k", {"seeds": [0]})
        >>> child = runs.child("sasrec-seed0", {"seed": 0})
        >>> runs.log_metrics(child, {"test/ndcg@10": 0.1}); runs.finish(child); runs.finish(runs.parent)
    """

    def __init__(self, enabled: bool, experiment: str, run_name: str, params: Mapping[str, Any]) -> None:
        self.enabled = enabled
        self.parent: str | None = None
        if not enabled:
            return
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(configure())
        self.experiment = experiment_id(experiment)
        self.parent = self.client.create_run(self.experiment, run_name=run_name, tags={"git_commit": git_commit()}).info.run_id
        self.log_params(self.parent, params)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log flattened ``params`` in batches of 100."""
        from mlflow.entities import Param

        flat = [Param(k, str(v)[:500]) for k, v in flatten(params).items()]
        for start in range(0, len(flat), 100):
            self.client.log_batch(run_id, params=flat[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None]) -> None:
        """Log finite ``metrics`` under their :func:`metric_name`, in batches of 200."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        rows = [Metric(metric_name(k), float(v), stamp, 0) for k, v in metrics.items()
                if v is not None and not (isinstance(v, float) and math.isnan(v))]
        for start in range(0, len(rows), 200):
            self.client.log_batch(run_id, metrics=rows[start : start + 200])

    def log_artifact(self, run_id: str, path: str | Path) -> None:
        """Attach a file to a run."""
        self.client.log_artifact(run_id, str(path))

    def child(self, name: str, params: Mapping[str, Any]) -> str | None:
        """Start a nested run under the parent; None when disabled."""
        if not self.enabled:
            return None
        run_id = self.client.create_run(self.experiment, run_name=name, tags={"mlflow.parentRunId": self.parent}).info.run_id
        self.log_params(run_id, params)
        return run_id

    def finish(self, run_id: str | None, status: str = "FINISHED") -> None:
        """End a run (``FINISHED`` or ``FAILED``)."""
        if self.enabled and run_id is not None:
            self.client.set_terminated(run_id, status)
