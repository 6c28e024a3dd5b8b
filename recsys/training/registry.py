"""The MLflow model registry for set-identifier bundles: register a run's bundle, resolve a model URI.

Commands:
    recsys register --run RUN_ID --name setrec --alias champion

Example:
    >>> version = register_bundle("3f2a...", name="setrec", alias="champion")
    >>> path = resolve_model_uri("models:/setrec@champion")     # local bundle folder
    >>> model = load_bundle(path)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from recsys.errors import ArtifactError

ARTIFACT_PATH = "bundle"
MANIFEST = "manifest.json"


def register_bundle(run_id: str, name: str = "setrec", alias: str | None = "champion", artifact_path: str = ARTIFACT_PATH) -> str:
    """Register the bundle logged by run ``run_id`` as a new version of model ``name``; returns the version.

    Args:
        run_id: an MLflow run of ``recsys train`` (its artifacts hold ``bundle/manifest.json``).
        name: registered model name.
        alias: alias pointed at the new version (None: no alias).
        artifact_path: where the run logged the bundle.

    Raises:
        ArtifactError: the run does not exist or logged no bundle.

    Example:
        >>> register_bundle(result.run_id, "setrec", "champion")
        '1'
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from recsys.tracking import configure

    configure()
    client = MlflowClient()
    try:
        client.get_run(run_id)
        listed = {Path(f.path).name for f in client.list_artifacts(run_id, artifact_path)}
    except MlflowException as error:
        raise ArtifactError(f"MLflow run {run_id!r} was not found in {mlflow.get_tracking_uri()} ({error}); check --run and MLFLOW_TRACKING_URI") from error
    if MANIFEST not in listed:
        raise ArtifactError(f"run {run_id} logged no bundle under {artifact_path!r} (found {sorted(listed)}); train it with `recsys train`")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="set-identifier recommender bundles (recsys train)")
    version = client.create_model_version(name, f"runs:/{run_id}/{artifact_path}", run_id=run_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def resolve_model_uri(uri: str | Path, dst_dir: str | Path | None = None) -> Path:
    """A local bundle folder for ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/ID/bundle`` or a path.

    Registry and run URIs are downloaded (into ``dst_dir``, else a new temporary folder).

    Raises:
        ArtifactError: the URI cannot be resolved, or what it names is not a bundle.

    Example:
        >>> load_bundle(resolve_model_uri("models:/setrec@champion"))
    """
    text = str(uri)
    if not text.startswith(("models:/", "runs:/")):
        path = Path(text)
        if not (path / MANIFEST).is_file():
            raise ArtifactError(f"{path} is not a bundle folder ({MANIFEST} missing)")
        return path
    import mlflow
    from mlflow.exceptions import MlflowException

    from recsys.tracking import configure

    configure()
    target = Path(dst_dir) if dst_dir is not None else Path(tempfile.mkdtemp(prefix="setrec-model-"))
    target.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=str(target)))
    except MlflowException as error:
        raise ArtifactError(f"cannot resolve {text} in {mlflow.get_tracking_uri()} ({error}); register it with `recsys register`") from error
    if (local / MANIFEST).is_file():
        return local
    if (local / ARTIFACT_PATH / MANIFEST).is_file():
        return local / ARTIFACT_PATH
    raise ArtifactError(f"{text} downloaded to {local} but holds no bundle ({MANIFEST} missing)")
