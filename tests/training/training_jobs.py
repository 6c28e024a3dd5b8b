"""Helpers of the training-job tests (imported by name: tests/ is not a package)."""

from __future__ import annotations

from pathlib import Path


def job_values(artifacts: dict[str, Path], out_dir: Path, backbone: str = "qwen", **top) -> dict:
    """A small but complete job config (nested dict) over ``artifacts``."""
    values = {
        "data": str(artifacts["data"]),
        "cf": str(artifacts["cf"]),
        "semantic": str(artifacts["semantic"]),
        "model": {"backbone": backbone, "preset": "tiny", "num_semantic_tokens": 2, "num_prompt_tokens": 1,
                  "num_response_tokens": 1, "dropout": 0.1},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "alpha": 0.1},
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "limit_train_batches": 4, "patience": 2,
                    "progress_bar": False, "log_every_n_steps": 1},
        "tracking": {"enabled": True, "experiment": "setrec-test"},
        "beta_grid": [0.0, 0.5, 1.0],
        "max_len": 6,
        "batch_size": 32,
        "eval_batch_size": 128,
        "seed": 0,
        "out_dir": str(out_dir),
    }
    values.update(top)
    return values
