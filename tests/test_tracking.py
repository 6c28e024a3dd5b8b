"""The one tracking path (recsys/tracking.py): one MLflow name per metric, no logger rename warnings."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

from recsys import tracking


def test_metric_name_is_mlflow_safe_and_stable():
    assert tracking.metric_name("valid/ndcg@10") == "valid/ndcg10"
    assert tracking.metric_name("cold/recall@20") == "cold/recall20"
    assert tracking.metric_name("test/ndcg10") == "test/ndcg10"  # idempotent
    assert tracking.metric_name("train/loss") == "train/loss"


class _Tiny:
    """A Lightning module that logs under result keys (``valid/ndcg@10``), as the training modules do."""

    @staticmethod
    def make():
        import lightning as L

        class Module(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.layer = torch.nn.Linear(2, 1)

            def training_step(self, batch, batch_idx):
                loss = self.layer(batch[0]).pow(2).mean()
                self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]))
                return loss

            def validation_step(self, batch, batch_idx):
                pass

            def on_validation_epoch_end(self):
                self.log("valid/ndcg@10", 0.25 + 0.1 * self.current_epoch)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Module()


def test_lightning_logger_logs_one_safe_name_without_rename_warnings():
    import lightning as L
    from mlflow.tracking import MlflowClient

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    logger = tracking.lightning_logger("tracking-test", run_name="tiny", tags={"dataset": "abc"})
    # the monitored key stays the result key; only MLflow sees the safe name
    stopper = L.pytorch.callbacks.EarlyStopping("valid/ndcg@10", mode="max", patience=5)
    trainer = L.Trainer(max_epochs=2, logger=logger, callbacks=[stopper], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_Tiny.make(), train_dataloaders=data, val_dataloaders=data)
    renamed = [str(w.message) for w in caught if "MLFlow only allows" in str(w.message)]
    assert renamed == []
    client = MlflowClient(tracking.tracking_uri())
    run = client.get_run(logger.run_id)
    assert "valid/ndcg10" in run.data.metrics and "valid/ndcg@10" not in run.data.metrics
    assert [m.value for m in client.get_metric_history(logger.run_id, "valid/ndcg10")] == pytest.approx([0.25, 0.35])
    assert run.data.tags["dataset"] == "abc" and run.data.tags["git_commit"]
    # ddp_spawn pickles the trainer with its logger: the class must be found by name
    assert pickle.loads(pickle.dumps(type(logger))) is tracking.MetricNameLogger


def test_start_run_logs_params_metrics_and_artifacts_under_safe_names(tmp_path):
    from mlflow.tracking import MlflowClient

    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    with tracking.start_run("tracking-test", "cmd", {"a": {"b": 1}}, tags={"dataset": "x"}) as run_id:
        tracking.log_metrics({"health/recall@10": 0.5, "skipped": None, "text": "no", "nan": float("nan"), "n": 3})
        tracking.log_artifact(manifest)
    tracking.log_metrics({"later@1": 2.0}, run_id=run_id)
    client = MlflowClient(tracking.tracking_uri())
    run = client.get_run(run_id)
    assert run.data.params == {"a.b": "1"}
    assert run.data.metrics == {"health/recall10": 0.5, "n": 3.0, "later1": 2.0}
    assert [f.path for f in client.list_artifacts(run_id)] == ["manifest.json"]


def test_only_the_tracking_module_logs_to_mlflow():
    """recsys/tracking.py is the one way to MLflow; the registry and the serving model resolver only read."""
    import re
    from pathlib import Path

    package = Path(tracking.__file__).parent
    readers = {"tracking.py", "training/registry.py", "serving/service.py"}
    importing = {str(path.relative_to(package)) for path in package.rglob("*.py")
                 if re.search(r"^\s*(import mlflow|from mlflow)", path.read_text(), re.M)}
    assert importing <= readers, f"these modules reach MLflow around recsys.tracking: {sorted(importing - readers)}"


def test_sasrec_fit_logs_safe_names_without_rename_warnings(tmp_path):
    """SASRec (also the CF tokenizer's trainer) through tracking.lightning_logger: no "MLFlow only allows" warning."""
    from mlflow.tracking import MlflowClient

    from recsys.models.sasrec import SASRecConfig
    from recsys.pipelines.prepare import PrepareConfig, prepare
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.training.sasrec import fit_sasrec

    source = tmp_path / "source"
    source.mkdir()
    rows = [f"u{u},i{(u + t) % 12},{t}" for u in range(16) for t in range(6)]
    (source / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    prepare(PrepareConfig(source=str(source), out=str(tmp_path / "data"), format="generic", kcore=0))
    data = PreparedDataset.load(tmp_path / "data")
    config = SASRecConfig(hidden_size=8, num_heads=1, inner_size=16, max_len=6, max_epochs=2, batch_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit_sasrec(data, config, log_to_mlflow=True, experiment="tracking-test")
    assert [str(w.message) for w in caught if "MLFlow only allows" in str(w.message)] == []
    metrics = MlflowClient(tracking.tracking_uri()).get_run(result.mlflow_run_id).data.metrics
    assert {"valid/ndcg10", "best_valid/ndcg10", "test/ndcg10"} <= set(metrics)
    assert metrics["test/ndcg10"] == pytest.approx(result.test_metrics["ndcg@10"])
