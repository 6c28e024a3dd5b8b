"""The one tracking path: MLflow store, metric names, flattened params, tags, the Lightning logger, runs.

Every module that tracks goes through here, never through ``mlflow`` itself:

- Lightning training (SetRec job, SASRec, TIGER): :func:`lightning_logger`;
- a command's single run (the tokenizers): :func:`start_run`, then :func:`log_metrics` and
  :func:`log_artifact` (they act on the run it opened);
- a parent run with nested children (the benchmark): :class:`RunTree`.

The embedded default store is ``sqlite:///mlruns.db`` in the working directory;
``MLFLOW_TRACKING_URI`` points elsewhere. MLflow forbids ``@`` in metric names, so every metric
reaches MLflow through :func:`metric_name` (``valid/ndcg@10`` -> ``valid/ndcg10``), the one
MLflow name of each metric: code and result files (``result.json``, benchmark JSON,
``TrainResult.valid_metrics``) keep the ``ndcg@10`` keys, and the Lightning logger renames them
itself (so Lightning's "MLFlow only allows" warning never fires).

Example:
    >>> configure()
    >>> logger = lightning_logger("sasrec", run_name="ml-100k", tags={"dataset": "abc"})
    >>> metric_name("test/ndcg@10")
    'test/ndcg10'
"""

from __future__ import annotations

import math
import numbers
import os
import re
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

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


def lightning_logger(
    experiment: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
):
    """A Lightning ``MLFlowLogger`` on the configured store, tagged with the git commit.

    Metric keys are logged under their :func:`metric_name` (``valid/ndcg@10`` -> ``valid/ndcg10``),
    so modules keep ``self.log("valid/ndcg@10", ...)`` (what callbacks monitor) and MLflow gets the
    one safe name without Lightning's rename warning.

    Args:
        experiment: MLflow experiment name (created when missing).
        run_name: name of a new run.
        tags: extra tags (``git_commit`` is always set).
        run_id: continue this run instead of starting one (a resumed job).
    """
    experiment_id(experiment)
    all_tags = {"git_commit": git_commit(), **(tags or {})}
    return _metric_name_logger()(
        experiment_name=experiment,
        run_name=run_name,
        tracking_uri=tracking_uri(),
        tags=all_tags,
        run_id=run_id,
    )


_METRIC_NAME_LOGGER = None


def _metric_name_logger():
    """The ``MetricNameLogger`` class, made on first use: Lightning is imported only by the modules that
    train, so ``recsys --help`` stays fast."""
    global _METRIC_NAME_LOGGER
    if _METRIC_NAME_LOGGER is None:
        from lightning.pytorch.loggers import MLFlowLogger

        class MetricNameLogger(MLFlowLogger):
            """``MLFlowLogger`` that logs every metric under its :func:`metric_name`."""

            def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
                super().log_metrics({metric_name(key): value for key, value in metrics.items()}, step)

        MetricNameLogger.__module__, MetricNameLogger.__qualname__ = __name__, "MetricNameLogger"
        _METRIC_NAME_LOGGER = MetricNameLogger
    return _METRIC_NAME_LOGGER


def __getattr__(name: str):
    """``recsys.tracking.MetricNameLogger`` (pickling a logger for ``ddp_spawn`` finds the class by this name)."""
    if name == "MetricNameLogger":
        return _metric_name_logger()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def metric_name(key: str) -> str:
    """The MLflow name of a metric key: ``valid/ndcg@10`` -> ``valid/ndcg10``.

    MLflow forbids ``@``; every character outside letters, digits and ``_/. -`` is dropped, as
    Lightning's ``MLFlowLogger`` would (so both give the same name, and no warning fires).

    Example:
        >>> metric_name("cold/recall@20")
        'cold/recall20'
    """
    return re.sub(r"[^a-zA-Z0-9_/. -]+", "", key)


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of ``metrics`` (no None, text, mappings or NaN) as floats under their :func:`metric_name`."""
    values = {metric_name(k): float(v) for k, v in metrics.items() if isinstance(v, numbers.Real)}
    return {k: v for k, v in values.items() if not math.isnan(v)}


@contextmanager
def start_run(experiment: str, run_name: str, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """Open one MLflow run (the active run until the block ends) with flattened ``params``; yields its id.

    Example:
        >>> with start_run("tokenizers", "semantic", {"data": "data/ml-100k"}):
        ...     log_metrics({"items": 1682}); log_artifact("out/manifest.json")
    """
    import mlflow

    configure()
    with mlflow.start_run(experiment_id=experiment_id(experiment), run_name=run_name,
                          tags={"git_commit": git_commit(), **(tags or {})}) as run:
        flat = {k: str(v)[:500] for k, v in flatten(params or {}).items()}
        if flat:
            mlflow.log_params(flat)
        yield run.info.run_id


def log_metrics(metrics: Mapping[str, Any], run_id: str | None = None, step: int | None = None) -> None:
    """Log the numeric, non-NaN ``metrics`` under their :func:`metric_name`, to ``run_id`` or the active run."""
    import mlflow

    values = _finite(metrics)
    if not values:
        return
    if run_id is None:
        mlflow.log_metrics(values, step=step)
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(configure())
    for name, value in values.items():
        client.log_metric(run_id, name, value, step=step or 0)


def log_artifact(path: str | Path, run_id: str | None = None, artifact_path: str | None = None) -> None:
    """Attach a file or a folder (all its files) to ``run_id`` or the active run."""
    import mlflow

    path = Path(path)
    if run_id is None:
        (mlflow.log_artifacts if path.is_dir() else mlflow.log_artifact)(str(path), artifact_path=artifact_path)
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(configure())
    (client.log_artifacts if path.is_dir() else client.log_artifact)(run_id, str(path), artifact_path=artifact_path)


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
        rows = [Metric(k, v, stamp, 0) for k, v in _finite(metrics).items()]
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
