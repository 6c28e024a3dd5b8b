"""Shared test setup: offline hubs, no MLflow telemetry, a private tracking store per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests need a CUDA device: without one they are skipped, with the reason."""
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in gpu:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _private_mlflow_store(tmp_path_factory, monkeypatch):
    """Every test logs to its own sqlite store, never to the developer's mlruns.db."""
    store = tmp_path_factory.mktemp("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlruns.db'}")
    yield


@pytest.fixture
def amazon_industrial_dir() -> Path:
    """../shared/data/amazon-industrial, or skip with the reason when it is absent."""
    path = SHARED_DATA / "amazon-industrial"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (a fresh clone has no ../shared)")
    return path
