"""Exact resume of the training job: ``--resume`` continues from ``last.ckpt``, it does not retrain.

Training is deterministic, so a "resume" that ignored the checkpoint and started over would
also end with the weights of an uninterrupted run. These tests therefore also watch the resumed
fit itself: it must start at the checkpoint's step and epoch with the checkpoint's weights, run
only the batches left (the same batches the uninterrupted run saw), and a checkpoint edited on
purpose must change where it starts and where it ends.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch

from recsys.bundle import load_bundle
from recsys.errors import ArtifactError
from recsys.models.setrec import pad_histories
from recsys.training.job import CHECKPOINTS, LAST, train
from recsys.training.setrec_config import config_from_dict
from training_jobs import job_values

pytestmark = pytest.mark.slow

EPOCHS, BATCHES = 2, 3  # 6 optimizer steps in all; the crash comes in epoch 1, after epoch 0's checkpoint
OVERRIDES = {
    "trainer": {"max_epochs": EPOCHS, "accelerator": "cpu", "limit_train_batches": BATCHES, "patience": 5,
                "progress_bar": False, "log_every_n_steps": 1},
    "tracking": {"enabled": False},
}


class Crash(L.Callback):
    """Raises in the middle of epoch ``epoch`` (after ``step`` batches of it): a killed job."""

    def __init__(self, epoch: int, step: int) -> None:
        self.epoch, self.step = epoch, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx + 1 == self.step:
            raise RuntimeError("simulated crash")


def _digest(batch) -> str:
    """A fingerprint of a training batch's tensors (which samples, in which order)."""
    digest = hashlib.sha256()
    values = batch.items() if isinstance(batch, dict) else enumerate(batch)
    for key, value in sorted(values, key=lambda kv: str(kv[0])):
        if isinstance(value, torch.Tensor):
            digest.update(str(key).encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Recorder(L.Callback):
    """Where the fit starts (step, epoch, weights) and every batch it trains on."""

    def __init__(self) -> None:
        self.start: dict | None = None
        self.batches: list[tuple[int, int, int, str]] = []  # (epoch, batch_idx, global_step before it, digest)

    def on_train_start(self, trainer, pl_module):
        self.start = {
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "weights": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((trainer.current_epoch, batch_idx, trainer.global_step, _digest(batch)))


def _checkpoint(out_dir: Path) -> dict:
    return torch.load(out_dir / CHECKPOINTS / LAST, map_location="cpu", weights_only=True)


def _assert_same_weights(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6, msg=name)


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def runs(industrial_artifacts, tmp_path_factory):
    """An uninterrupted run, and a run killed in epoch 1 (its last.ckpt: end of epoch 0)."""
    root = tmp_path_factory.mktemp("resume")
    straight_rec = Recorder()
    straight = train(config_from_dict(job_values(industrial_artifacts, root / "straight", "qwen", **OVERRIDES)),
                     callbacks=[straight_rec])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config_from_dict(job_values(industrial_artifacts, root / "broken", "qwen", **OVERRIDES)),
              callbacks=[Crash(epoch=1, step=2)])
    shutil.copytree(root / "broken" / CHECKPOINTS, root / "epoch-0" / CHECKPOINTS)  # kept: resuming overwrites last.ckpt
    return {"root": root, "straight": straight, "straight_rec": straight_rec}


def test_resume_runs_only_the_remaining_steps_from_the_checkpoint(runs, industrial_artifacts):
    root, straight_rec = runs["root"], runs["straight_rec"]
    # The uninterrupted run: both epochs, from step 0.
    assert [(e, i, s) for e, i, s, _ in straight_rec.batches] == [(e, i, e * BATCHES + i) for e in range(EPOCHS) for i in range(BATCHES)]

    saved = _checkpoint(root / "broken")
    assert saved["global_step"] == BATCHES and saved["epoch"] == 0  # written after epoch 0's validation
    resumed_rec = Recorder()
    second = train(config_from_dict(job_values(industrial_artifacts, root / "broken", "qwen", **OVERRIDES)),
                   resume=True, callbacks=[resumed_rec])

    # It starts where the checkpoint left off: its step, the next epoch, its weights ...
    assert resumed_rec.start["global_step"] == BATCHES and resumed_rec.start["epoch"] == 1
    _assert_same_weights(resumed_rec.start["weights"], saved["state_dict"])
    # ... and trains only epoch 1's batches, the very batches the uninterrupted run saw in epoch 1.
    assert resumed_rec.batches == straight_rec.batches[BATCHES:]
    assert second.global_step == EPOCHS * BATCHES
    # It ends where the uninterrupted run ended.
    _assert_same_weights(_checkpoint(root / "broken")["state_dict"], _checkpoint(root / "straight")["state_dict"])
    assert second.best_beta == runs["straight"].best_beta
    assert second.valid_metrics == pytest.approx(runs["straight"].valid_metrics, abs=1e-6)
    resumed, uninterrupted = load_bundle(second.bundle_dir), load_bundle(runs["straight"].bundle_dir)
    assert resumed.config.backbone == "qwen" and resumed.bundle.beta == second.best_beta
    histories = pad_histories([[1, 2, 3], [4]], resumed.bundle.max_len)
    torch.testing.assert_close(resumed.score_all(histories, second.best_beta),
                               uninterrupted.score_all(histories, runs["straight"].best_beta), rtol=0, atol=1e-5)


def test_an_edited_checkpoint_changes_where_the_resumed_run_starts_and_ends(runs, industrial_artifacts, tmp_path):
    out = tmp_path / "edited"
    shutil.copytree(runs["root"] / "epoch-0" / CHECKPOINTS, out / CHECKPOINTS)
    state = _checkpoint(out)
    assert state["global_step"] == BATCHES
    generator = torch.Generator().manual_seed(0)
    edited = {k: v + 0.05 * torch.randn(v.shape, generator=generator, dtype=v.dtype) if v.is_floating_point() else v
              for k, v in state["state_dict"].items()}
    state["state_dict"] = edited
    torch.save(state, out / CHECKPOINTS / LAST)

    recorder = Recorder()
    train(config_from_dict(job_values(industrial_artifacts, out, "qwen", **OVERRIDES)), resume=True, callbacks=[recorder])
    assert recorder.start["global_step"] == BATCHES
    _assert_same_weights(recorder.start["weights"], edited)  # the edited weights, not a fresh model's
    assert len(recorder.batches) == BATCHES
    final = _checkpoint(out)["state_dict"]
    assert _max_difference(final, _checkpoint(runs["root"] / "straight")["state_dict"]) > 1e-3


def test_resume_without_a_checkpoint_is_an_artifact_error(industrial_artifacts, tmp_path):
    cfg = config_from_dict(job_values(industrial_artifacts, tmp_path / "nothing", "qwen", **OVERRIDES))
    with pytest.raises(ArtifactError, match="does not exist"):
        train(cfg, resume=True)
