"""DDP agreement of the training job (tiny runs on a real slice of amazon-industrial); exact resume: test_exact_resume.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training_jobs import job_values

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_ddp_with_two_cpu_processes_keeps_ranks_identical(industrial_artifacts, tmp_path):
    values = job_values(industrial_artifacts, tmp_path / "ddp", "t5")
    values["trainer"].update({"max_epochs": 1, "limit_train_batches": 3, "strategy": "ddp", "devices": 2})
    values["tracking"]["enabled"] = False
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "recsys", "train", "--config", str(config)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = sorted((tmp_path / "ddp" / "ranks").glob("rank-*.sha256"))
    assert [p.name for p in ranks] == ["rank-0.sha256", "rank-1.sha256"]
    assert ranks[0].read_text() == ranks[1].read_text()
    assert "bundle:" in done.stdout and (tmp_path / "ddp" / "bundle" / "manifest.json").is_file()
