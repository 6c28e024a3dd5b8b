"""benchmarks/long_history.py (issue 17) at tiny sizes: the whole run (synthetic source, ``recsys data prepare``,
bundles, app timing) works and writes the JSON layout the issue asks for, so the benchmark cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "long_history.py"
LENGTHS = ["50", "1000", "5000", "10000"]


def _module():
    spec = importlib.util.spec_from_file_location("long_history", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_the_issue_layout(tmp_path, serving_root):
    import torch

    bench = _module()
    threads = torch.get_num_threads()
    out = tmp_path / "long-history.json"
    # 3 users, one with >= 10,000 events; tiny model, 2 steps; no waiting for a quiet machine (load >= 0 always),
    # so the run is marked as not a valid timing
    argv = ["--workdir", str(tmp_path / "work"), "--out", str(out), "--interactions", "30000", "--users", "3",
            "--items", "2000", "--preset", "tiny", "--train-steps", "2", "--repetitions", "3", "--warmup", "1",
            "--histories-per-length", "2", "--text-encoder", str(serving_root / "bert"), "--max-load", "0",
            "--wait-minutes", "0"]
    assert bench.main(argv) == 0
    assert torch.get_num_threads() == threads  # the run's 1 thread does not leak into the caller
    result = json.loads(out.read_text())
    for key in ("p50_ms", "p95_ms", "recommender_p50_ms", "recommender_p95_ms", "selection_p50_ms"):
        assert list(result[key]) == ["recent", "dare"], key
        for selection in ("recent", "dare"):
            cell = result[key][selection]
            assert list(cell) == LENGTHS, (key, selection)
            assert all(isinstance(v, float) and v > 0 for v in cell.values()), (key, cell)
    for selection in ("recent", "dare"):
        for length in LENGTHS:
            assert result["p95_ms"][selection][length] >= result["p50_ms"][selection][length]
        ratio = result["p50_ms"][selection]["10000"] / result["p50_ms"][selection]["50"]
        assert abs(result["ratio_p50_10000_over_50"][selection] - ratio) < 1e-2
        assert result["target"]["met"][selection] == (result["ratio_p50_10000_over_50"][selection] <= 2.0)
    assert result["target"]["max_ratio"] == 2.0
    assert result["selectors"] == {"recent": {"selection": "recent", "search_k": 0, "max_len": 20},
                                   "dare": {"selection": "dare", "search_k": 10, "max_len": 20}}
    assert result["bundle"]["max_len"] == 20 and result["bundle"]["search_k"] == 10
    assert result["threads"] == {"torch": 1, "faiss": 1}
    assert result["requests"]["users_with_at_least"]["10000"] >= 1 and result["requests"]["exclude_history"] is True
    assert result["dare_selection_differs_from_recent"].startswith(("1 of", "2 of"))
    load = result["load"]
    assert load["threshold_1min"] == 0 and load["valid_timing"] is False and len(load["checks"][0]) == 3
    assert result["command"].startswith("benchmarks/long_history.py --workdir")
