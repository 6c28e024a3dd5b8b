"""``recsys train --resume`` with a damaged ``last.ckpt``: one line naming the file, exit 2, nothing unpickled."""

from __future__ import annotations

import pickle

import pytest
import torch
import yaml

from recsys.cli import main
from recsys.errors import ArtifactError
from recsys.training.job import check_resume_checkpoint


class _Payload:
    """Unpickling this would create ``marker`` (what a malicious checkpoint would do instead)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def job_config(tmp_path) -> str:
    out = tmp_path / "run"
    values = {
        "data": str(tmp_path / "data"), "cf": str(tmp_path / "cf"), "semantic": str(tmp_path / "semantic"),
        "model": {"backbone": "qwen", "preset": "tiny", "num_semantic_tokens": 2, "num_prompt_tokens": 1, "num_response_tokens": 1},
        "tracking": {"enabled": False}, "out_dir": str(out),
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(values))
    (out / "checkpoints").mkdir(parents=True)
    return str(path)


def good_checkpoint(path) -> None:
    torch.save({"epoch": 1, "global_step": 4, "state_dict": {"model.w": torch.randn(64, 64)}}, path)


@pytest.mark.parametrize("damage", ["empty", "truncated", "pickle", "not_lightning", "garbage"])
def test_resume_from_a_damaged_checkpoint_is_one_line_and_exit_2(tmp_path, capsys, damage):
    config = job_config(tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    marker = tmp_path / "unpickled"
    if damage == "empty":
        last.write_bytes(b"")
    elif damage == "truncated":
        good_checkpoint(last)
        data = last.read_bytes()
        last.write_bytes(data[: len(data) // 2])
    elif damage == "pickle":
        torch.save({"state_dict": {}, "callbacks": _Payload(marker)}, last)
    elif damage == "not_lightning":
        torch.save({"weights": torch.zeros(2)}, last)
    else:
        last.write_bytes(pickle.dumps(_Payload(marker)))
    assert main(["train", "--config", config, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert err.startswith("error: --resume: ") and str(last) in err and "without --resume" in err
    assert not marker.exists()  # nothing was unpickled beyond tensors


def test_a_sound_checkpoint_passes_the_check(tmp_path):
    last = tmp_path / "last.ckpt"
    good_checkpoint(last)
    check_resume_checkpoint(last)
    last.write_bytes(b"\x00" * 10)
    with pytest.raises(ArtifactError, match="not a readable checkpoint"):
        check_resume_checkpoint(last)
