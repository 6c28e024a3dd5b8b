"""``recsys demo`` end to end at tiny size: every step connects, the service answers a real request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_every_step_at_tiny_size(tmp_path, monkeypatch, capsys):
    from recsys.demo import DemoConfig, run_demo

    monkeypatch.chdir(REPO)  # the demo reads configs/ relative to the repository root
    outcome = run_demo(DemoConfig(size="tiny", root=str(tmp_path / "runs"), k=5))

    report = outcome.report_path.read_text()
    assert "| setrec | all |" in report and "| sasrec | all |" in report
    assert "models:/setrec@" in report
    assert len(outcome.recommended_titles) == 5 and all(outcome.recommended_titles)
    assert set(outcome.recommended_titles).isdisjoint(outcome.sample_history)  # exclude_history default
    assert outcome.registered_version == "1"
    for name in ("setrec", "sasrec"):
        assert 0.0 <= outcome.metrics[name]["ndcg@10"] <= 1.0
    assert sorted(p.name for p in outcome.report_path.parent.glob("*.png")) == ["ndcg_at_10.png", "recall_at_10.png"]
    metrics = json.loads((outcome.report_path.parent / "metrics.json").read_text())
    assert {"setrec", "sasrec"} <= set(metrics)
    printed = capsys.readouterr().out
    assert "mlflow ui --backend-store-uri sqlite:///mlruns.db" in printed
    assert "[7/7]" in printed


def test_demo_rejects_bad_settings(tmp_path):
    from recsys.demo import DemoConfig
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match="--size"):
        DemoConfig(size="huge").validate()
    with pytest.raises(ConfigError, match="training config"):
        DemoConfig(train_config=str(tmp_path / "missing.yaml")).validate()
