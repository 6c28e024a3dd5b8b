"""Resume exactness and DDP agreement of the training job (tiny runs on a real slice of amazon-industrial)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from recsys.bundle import load_bundle
from recsys.models.setrec import pad_histories
from recsys.training.job import CHECKPOINTS, LAST, train
from recsys.training.setrec_config import config_from_dict
from training_jobs import job_values

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


class Crash(L.Callback):
    """Raises in the middle of epoch ``epoch`` (after ``step`` batches of it): a killed job."""

    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx + 1 == self.step:
            raise RuntimeError("simulated crash")


def _last_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(out_dir / CHECKPOINTS / LAST, map_location="cpu", weights_only=True)
    return state["state_dict"], state["global_step"]


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(industrial_artifacts, tmp_path):
    overrides = {"trainer": {"max_epochs": 2, "accelerator": "cpu", "limit_train_batches": 3, "patience": 5,
                             "progress_bar": False}, "tracking": {"enabled": False}}
    straight = config_from_dict(job_values(industrial_artifacts, tmp_path / "straight", "qwen", **overrides))
    broken = config_from_dict(job_values(industrial_artifacts, tmp_path / "broken", "qwen", **overrides))
    first = train(straight)

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(broken, callbacks=[Crash(epoch=1, step=2)])
    assert (tmp_path / "broken" / CHECKPOINTS / LAST).is_file()
    with pytest.raises(Exception, match="does not exist"):
        train(config_from_dict(job_values(industrial_artifacts, tmp_path / "nothing", "qwen")), resume=True)
    second = train(broken, resume=True)

    a, steps_a = _last_weights(tmp_path / "straight")
    b, steps_b = _last_weights(tmp_path / "broken")
    assert steps_a == steps_b == 6
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert second.best_beta == first.best_beta
    assert second.valid_metrics == pytest.approx(first.valid_metrics, abs=1e-6)
    resumed = load_bundle(second.bundle_dir)
    assert resumed.config.backbone == "qwen" and resumed.bundle.beta == second.best_beta
    histories = pad_histories([[1, 2, 3], [4]], resumed.bundle.max_len)
    torch.testing.assert_close(resumed.score_all(histories, second.best_beta),
                               load_bundle(first.bundle_dir).score_all(histories, first.best_beta), rtol=0, atol=1e-5)


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
