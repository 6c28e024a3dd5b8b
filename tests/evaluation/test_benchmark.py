"""The quality benchmark: configs, aggregation over seeds and users, paired intervals, report files,
``recsys evaluate`` on a saved model, and (slow) a tiny end-to-end ``recsys benchmark quality`` run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from evaluation_data import cyclic_sequences, tiny_bert, write_prepared, write_source

from recsys.cli import main
from recsys.errors import ConfigError
from recsys.tracking import metric_name
from recsys.evaluation.benchmark import (
    SeedRun,
    build_report,
    load_benchmark_config,
    parse_benchmark_config,
    report_metrics,
)
from recsys.evaluation.evaluate import evaluate
from recsys.evaluation.groups import ItemGroups
from recsys.evaluation.methods import TrainedMethod
from recsys.evaluation.recommenders import ScoringRecommender
from recsys.evaluation.report import write_markdown, write_plots
from recsys.pipelines.prepared import EvalExamples

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["bench-ml100k.yaml", "bench-industrial.yaml"])
def test_shipped_configs_load_and_share_the_t5_size(name):
    from recsys.models.setrec import PRESETS

    config = load_benchmark_config(REPO / "configs" / name)
    kinds = [m.kind for m in config.methods]
    assert kinds.count("setrec") == 8
    tuned = {m.name: (m.kind, m.tune, m.start) for m in config.methods if m.tune}  # issue 16: ReRe on both generative models
    assert tuned == {"setrec-rere": ("setrec", "rere", "setrec"), "setrec-rere-rule": ("setrec", "rere", "setrec"),
                     "tiger-rere": ("tiger", "rere", "tiger")}
    assert config.rere["rank_weight"] == 1.0  # the paper's reward is the method; the rule reward alone is the ablation
    assert config.rere["group_size"] >= 2 and config.rere["windows"] == "last"
    assert {"popularity", "sasrec", "tiger", "text"} <= set(kinds)
    assert len(config.seeds) == 3 and config.reference == "setrec" and config.beam_method == "tiger"
    assert config.tiger["beam_size"] == 20
    model = config.setrec.base["model"]
    preset = PRESETS["t5"][model["preset"]]
    assert model["backbone"] == "t5" and config.setrec.config is None
    for key in ("d_model", "num_heads", "d_ff", "num_layers", "num_decoder_layers"):
        assert config.tiger[key] == preset[key], key
    ablations = {m.name: m.overrides for m in config.methods if m.kind == "setrec"}
    assert {"model.attention": "full"} in ablations.values() and {"model.generation": "autoregressive"} in ablations.values()
    assert {"model.token_set": "cf"} in ablations.values() and {"model.token_set": "semantic"} in ablations.values()
    if name == "bench-industrial.yaml":  # issue 13: with and without predicted CF tokens for cold items
        assert ablations["setrec-cold-cf-zero"] == {"cold_cf": "zero"}
    aligned = {m.name: m.overrides for m in config.methods if m.kind == "sasrec"}
    assert aligned["sasrec-rlmrec-con"] == {"align": "con"} and aligned["sasrec-rlmrec-gen"] == {"align": "gen"}
    assert aligned["sasrec-dare"] == {"embeddings": "decoupled"}  # issue 17
    assert {m.name: m.compare_to for m in config.methods}["sasrec-dare"] == "sasrec"
    if name == "bench-ml100k.yaml":
        assert aligned["sasrec-dare-200"] == {"max_len": 200, "embeddings": "decoupled"} and aligned["sasrec-200"] == {"max_len": 200}
        assert ablations["setrec-dare"] == {"history.selection": "dare", "history.search_k": 5}
    names = [m.name for m in config.methods]
    assert names.index("sasrec-rlmrec-gen") == names.index("sasrec-rlmrec-con") + 1
    assert names.index("setrec-rere") > names.index("setrec") and names.index("tiger-rere") > names.index("tiger")


def test_aligned_sasrec_needs_the_text_embeddings(tmp_path):
    """An RLMRec SASRec method reads the text embeddings; without them it stops before training, naming the method."""
    from recsys.evaluation.methods import MethodContext, MethodSpec, train_method

    context = MethodContext(data=object(), work_dir=tmp_path)
    with pytest.raises(ConfigError, match="sasrec-rlmrec-con.*align"):
        train_method(MethodSpec("sasrec-rlmrec-con", "sasrec", {"align": "con"}), 0, context)


def _minimal(**extra) -> dict:
    return {"dataset": "x", "data": {"source": "ml-100k"}, "methods": [{"name": "pop", "kind": "popularity"}], **extra}


@pytest.mark.parametrize(
    "values, message",
    [
        (_minimal(evaluation={"batch_sise": 3}), "batch_sise"),
        (_minimal(methods=[{"name": "a", "kind": "popularity"}, {"name": "a", "kind": "sasrec"}]), "repeated"),
        (_minimal(methods=[{"name": "paired", "kind": "popularity"}]), "reserved"),
        (_minimal(methods=[{"name": "b", "kind": "bert4rec"}]), "kind"),
        (_minimal(methods=[{"name": "s", "kind": "setrec"}]), "setrec.config"),
        (_minimal(setrec={"config": "a.yaml", "base": {"seed": 1}}), "not both"),
        ({"dataset": "x", "methods": []}, "data"),
        (_minimal(seeds=[]), "seeds"),
    ],
)
def test_bad_configs_name_the_field(values, message):
    with pytest.raises(ConfigError, match=message):
        parse_benchmark_config(values)


def test_overrides_and_missing_file(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(_minimal()))
    config = load_benchmark_config(path, {"evaluation.batch_size": 7, "seeds": [4]})
    assert config.evaluation.batch_size == 7 and config.seeds == [4]
    with pytest.raises(ConfigError, match="not found"):
        load_benchmark_config(tmp_path / "missing.yaml")


# ---------------------------------------------------------------- aggregation on hand-made runs

EXAMPLES = EvalExamples(user_idx=[0, 1, 2, 3], histories=[[0], [1], [2], [0, 1]], gold=[[3], [4], [5], [5]])
GROUPS = ItemGroups.from_train_items(np.array([0, 1, 2, 3, 3, 4]), num_items=6)  # item 5 is cold


def _run(name: str, seed: int, scores: list[float]) -> SeedRun:
    rec = ScoringRecommender(name, lambda h: torch.tensor(scores).expand(len(h), -1).clone(), num_items=6)
    result = evaluate(rec, EXAMPLES, GROUPS, ks=(1, 5), exclude_history=True)
    info = {"backbone": {"d_model": 8, "num_layers": 1}, "parameters": 10, "beam_size": 20}
    return SeedRun(seed, TrainedMethod(rec, {"ndcg@10": 0.1 * (seed + 1)}, 1.0, info), result)


def _config(**extra):
    values = _minimal(methods=[{"name": "ref", "kind": "popularity"}, {"name": "other", "kind": "popularity"}],
                      evaluation={"ks": [1, 5], "bootstrap_samples": 200}, reference="ref", beam_method="other", **extra)
    return parse_benchmark_config(values)


def test_seed_average_means_and_paired_differences():
    # ref: seed 0 ranks gold 3 and 5 first; seed 1 ranks item 4 first. other: one fixed ranking.
    runs = {
        "ref": [_run("ref", 0, [0, 0, 0, 9, 1, 8]), _run("ref", 1, [0, 0, 0, 1, 9, 2])],
        "other": [_run("other", 0, [6, 5, 4, 3, 2, 1]), _run("other", 1, [6, 5, 4, 3, 2, 1])],
    }
    report = build_report(_config(), runs, {"dataset": "x"})
    # per-user recall@1 of ref: seed 0 [1, 0, 0, 0] (user 3: 5 ranks 2nd behind 3), seed 1 [0, 1, 0, 0]
    assert report["ref"]["recall@1"]["mean"] == pytest.approx(np.mean([0.5, 0.5, 0.0, 0.0]))
    assert report["ref"]["recall@1"]["seed_std"] == pytest.approx(0.0)
    # other: history items excluded, so user 0 (hist 0) sees 1,2,3,... -> gold 3 at rank 3
    other_mrr = runs["other"][0].result.metric("mrr@5")
    assert report["other"]["mrr@5"]["mean"] == pytest.approx(float(np.mean(other_mrr)))
    lo, hi = report["ref"]["ndcg@5"]["ci"]
    assert lo <= report["ref"]["ndcg@5"]["mean"] <= hi
    # cold group: only item 5 is cold (users 2 and 3)
    assert report["ref"]["cold/recall@1"]["users"] == 2
    # both cold protocols side by side: ref ranks item 5 second of all items in both seeds (behind 3,
    # then behind 4) but first among the cold items (only 5 is cold)
    assert report["ref"]["cold/recall@1"]["mean"] == pytest.approx(0.0)
    assert report["ref"]["cold_only/recall@1"]["mean"] == pytest.approx(1.0)
    assert report["ref"]["cold_only/recall@1"]["users"] == 2 and report["ref"]["warm_only/recall@1"]["users"] == 2
    assert "cold_only/recall@1" in report["paired"]["vs"]["other"]
    diff = report["paired"]["vs"]["other"]["ndcg@5"]
    expected = np.mean((runs["ref"][0].result.metric("ndcg@5") + runs["ref"][1].result.metric("ndcg@5")) / 2
                       - runs["other"][0].result.metric("ndcg@5"))
    assert diff["diff"] == pytest.approx(expected) and diff["users"] == 4
    assert report["efficiency"]["beam_over_reference"] == pytest.approx(
        report["other"]["inference_seconds_per_1000_users"] / report["ref"]["inference_seconds_per_1000_users"])
    assert report["efficiency"]["equal_backbone"] is True
    assert {key for key, _, _ in report_metrics([1, 5])} <= set(report["ref"])
    assert report["ref"]["valid_ndcg@10"] == pytest.approx(0.15)
    json.dumps(report)  # plain JSON: no NaN objects, numpy types or tensors left


def test_markdown_and_plots_are_written(tmp_path):
    runs = {"ref": [_run("ref", 0, [0, 0, 0, 9, 1, 8])], "other": [_run("other", 0, [6, 5, 4, 3, 2, 1])]}
    report = build_report(_config(), runs, {"dataset": "x", "command": "recsys benchmark quality --config c.yaml"})
    md = write_markdown(report, tmp_path / "quality-x.md").read_text()
    assert "recsys benchmark quality --config c.yaml" in md and "| ref |" in md and "| other |" in md
    assert "Paired bootstrap" in md and "x as long" in md
    # every column names the items a gold item is ranked among
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    cells = [c.strip() for c in header.strip("|").split("|")][1:-2]
    assert all(c.endswith(("(all items)", "(cold items only)", "(warm items only)")) for c in cells), cells
    assert "cold Recall@20 (all items)" in header and "cold Recall@20 (cold items only)" in header
    paired = next(line for line in md.splitlines() if line.startswith("| vs"))
    assert "(cold items only)" in paired and "(all items)" in paired
    for png in write_plots(report, tmp_path, "x"):
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000


# ---------------------------------------------------------------- recsys evaluate


def test_recsys_evaluate_on_a_saved_sasrec_writes_per_user_parquet(tmp_path, capsys):
    from recsys.models.sasrec import SASRec, SASRecConfig
    from recsys.training.sasrec import save_sasrec

    data_dir = write_prepared(tmp_path / "data", cyclic_sequences(12, 15, seed=1), num_items=15)
    config = SASRecConfig(hidden_size=8, num_heads=1, inner_size=16, max_len=6)
    torch.manual_seed(0)
    model = SASRec(15, config).eval()
    from recsys.pipelines.prepared import PreparedDataset

    save_sasrec(model, config, tmp_path / "sasrec", extra={"dataset": PreparedDataset.load(data_dir).fingerprint})
    out = tmp_path / "eval"
    assert main(["evaluate", "--bundle", str(tmp_path / "sasrec"), "--data", str(data_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| all | all items |" in printed and "| cold | all items |" in printed
    assert "| cold_only | cold items only |" in printed and "| warm_only | warm items only |" in printed
    assert "history items excluded from the ranking (the default)" in printed
    assert "history items excluded" in (out / "summary.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exclude_history"] is True and summary["dataset_check"]["same"] is True
    per_user = pl.read_parquet(out / "per_user.parquet")
    assert summary["users"] == 12 and per_user.filter(pl.col("group") == "all").height == 12
    # the same numbers as the harness called directly, with the training job's default (history excluded)
    data = PreparedDataset.load(data_dir)
    rec = ScoringRecommender("sasrec", lambda h: model.score(SASRec.pad_histories(h, 6)), 15)
    direct = evaluate(rec, data.eval_examples("test"), ItemGroups.from_dataset(data), exclude_history=True)
    assert summary["summary"]["all"]["ndcg@10"] == pytest.approx(direct.summary["all"]["ndcg@10"])


def test_recsys_evaluate_refuses_a_dataset_the_model_was_not_trained_on(tmp_path, capsys):
    from recsys.models.sasrec import SASRec, SASRecConfig
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.training.sasrec import save_sasrec

    trained_on = write_prepared(tmp_path / "a", cyclic_sequences(12, 15, seed=1), num_items=15)
    other_ids = write_prepared(tmp_path / "b", cyclic_sequences(12, 15, seed=2), num_items=15)  # same item count
    config = SASRecConfig(hidden_size=8, num_heads=1, inner_size=16, max_len=6)
    model = SASRec(15, config).eval()
    recorded = PreparedDataset.load(trained_on).fingerprint
    save_sasrec(model, config, tmp_path / "sasrec", extra={"dataset": recorded})
    other = PreparedDataset.load(other_ids).fingerprint
    assert other != recorded
    out = tmp_path / "eval"
    assert main(["evaluate", "--bundle", str(tmp_path / "sasrec"), "--data", str(other_ids), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert recorded in captured.err and other in captured.err and "--allow-other-data" in captured.err
    assert "| all |" not in captured.out and not out.exists()
    # the explicit override evaluates, says so, and records it
    assert main(["evaluate", "--bundle", str(tmp_path / "sasrec"), "--data", str(other_ids), "--allow-other-data", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "warning: --allow-other-data" in captured.err and "| all |" in captured.out
    check = json.loads((out / "summary.json").read_text())["dataset_check"]
    assert check == {"model": recorded, "data": other, "same": False, "override": True}
    # a model that records no fingerprint cannot be checked: refused the same way
    save_sasrec(model, config, tmp_path / "bare")
    assert main(["evaluate", "--bundle", str(tmp_path / "bare"), "--data", str(trained_on)]) == 2
    assert "records no dataset fingerprint" in capsys.readouterr().err


def test_recsys_evaluate_help_states_the_history_default(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Default: excluded, as in the training job" in text and "--no-exclude-history" in text


def test_recsys_evaluate_refuses_what_is_not_a_model(tmp_path, capsys):
    data_dir = write_prepared(tmp_path / "data", cyclic_sequences(5, 8), num_items=8)
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--bundle", str(tmp_path / "empty"), "--data", str(data_dir)]) == 2
    assert "holds no model" in capsys.readouterr().err


# ---------------------------------------------------------------- interaction-only datasets


@pytest.mark.slow
def test_interaction_only_dataset_runs_methods_without_text_and_refuses_text_methods_by_name(tmp_path, monkeypatch):
    from recsys.evaluation import benchmark

    sequences = cyclic_sequences(20, 12, length=(5, 7), seed=4)
    source = tmp_path / "source"
    source.mkdir()
    rows = ["user_id,item_id,position"] + [f"U{u},{i},{p}" for u, seq in enumerate(sequences) for p, i in enumerate(seq)]
    (source / "interactions.csv").write_text("\n".join(rows) + "\n")  # no item file: no item text at all
    trained: list[str] = []
    original = benchmark.train_method
    monkeypatch.setattr(benchmark, "train_method", lambda spec, seed, context: trained.append(spec.name) or original(spec, seed, context))
    config = parse_benchmark_config({
        "dataset": "ionly", "work_dir": str(tmp_path / "work"), "seeds": [0],
        "data": {"source": str(source), "kcore": 0},
        "evaluation": {"bootstrap_samples": 50},
        "sasrec": {"hidden_size": 8, "num_heads": 1, "inner_size": 16, "max_len": 6, "max_epochs": 1, "batch_size": 64},
        "setrec": {"base": {"model": {"backbone": "t5", "preset": "tiny", "num_semantic_tokens": 2},
                            "trainer": {"max_epochs": 1, "accelerator": "cpu", "progress_bar": False},
                            "tracking": {"enabled": False}, "max_len": 6, "batch_size": 64, "beta_grid": [0.0]}},
        "reference": "sasrec",
        "methods": [{"name": "popularity", "kind": "popularity"}, {"name": "sasrec", "kind": "sasrec"},
                    {"name": "tiger", "kind": "tiger"}, {"name": "text", "kind": "text"},
                    {"name": "setrec", "kind": "setrec"},
                    {"name": "setrec-cf", "kind": "setrec", "overrides": {"model.token_set": "cf"}}],
    })
    logged: list[str] = []
    report = benchmark.run_benchmark(config, out_dir=tmp_path / "out", log_to_mlflow=False, log=logged.append)
    assert trained == ["popularity", "sasrec", "setrec-cf"]  # the text methods never started training
    assert [k for k in report if k not in ("paired", "efficiency", "seeds", "meta")] == ["popularity", "sasrec", "setrec-cf"]
    assert not (tmp_path / "work" / "semantic").exists()  # no text embeddings were built for the CF-only model
    refused = report["meta"]["refused_methods"]
    assert set(refused) == {"tiger", "text", "setrec"}
    assert all("needs item text" in reason and "12 of 12 items have no text" in reason for reason in refused.values())
    assert "model.token_set: cf needs no text" in refused["setrec"]
    first_training = next(i for i, line in enumerate(logged) if line.startswith("popularity seed"))
    refusal = next(i for i, line in enumerate(logged) if line.startswith("refused before training"))
    assert refusal < first_training and "tiger" in logged[refusal] and "setrec (" in logged[refusal]


def test_a_benchmark_of_text_methods_only_on_an_interaction_only_dataset_is_refused(tmp_path):
    from recsys.evaluation.benchmark import run_benchmark

    source = tmp_path / "source"
    source.mkdir()
    (source / "interactions.csv").write_text("user_id,item_id,position\nu,a,0\nu,b,1\nu,c,2\nv,a,0\nv,b,1\nv,c,2\n")
    config = parse_benchmark_config({"dataset": "x", "work_dir": str(tmp_path / "w"), "data": {"source": str(source)},
                                     "methods": [{"name": "tiger", "kind": "tiger"}]})
    with pytest.raises(ConfigError, match="every method needs item text.*tiger needs item text"):
        run_benchmark(config, out_dir=tmp_path / "out", log_to_mlflow=False, log=lambda _: None)


# ---------------------------------------------------------------- end to end (slow)

SETREC_AVAILABLE = importlib.util.find_spec("recsys.training.job") is not None


@pytest.mark.slow
def test_benchmark_quality_end_to_end(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("SETREC_CACHE_DIR", str(tmp_path / "cache"))
    sequences = cyclic_sequences(40, 24, length=(5, 8), seed=3)
    for user in range(0, 40, 8):  # five users end on an item nobody else has: cold test items
        sequences[user][-1] = 24 + user // 8
    source = write_source(tmp_path / "source", sequences, num_items=30)
    methods = [{"name": "popularity", "kind": "popularity"},
               {"name": "sasrec", "kind": "sasrec"},
               {"name": "tiger", "kind": "tiger"},
               {"name": "text", "kind": "text"}]
    if SETREC_AVAILABLE:
        methods += [{"name": "setrec", "kind": "setrec"}]
    base = {"model": {"backbone": "t5", "preset": "tiny", "num_semantic_tokens": 2, "num_prompt_tokens": 1, "num_response_tokens": 1},
            "optim": {"lr": 3e-3, "warmup_steps": 1}, "trainer": {"max_epochs": 1, "accelerator": "cpu", "progress_bar": False},
            "beta_grid": [0.0, 0.5, 1.0], "max_len": 8, "batch_size": 32}
    t5 = {"d_model": 32, "num_heads": 4, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2}
    config = {
        "dataset": "tiny", "work_dir": str(tmp_path / "work"), "seeds": [0, 1],
        "data": {"source": str(source), "kcore": 0},
        "evaluation": {"bootstrap_samples": 200},
        "sasrec": {"hidden_size": 16, "num_heads": 1, "inner_size": 32, "max_len": 8, "max_epochs": 1, "batch_size": 64},
        "tiger": {**t5, "max_epochs": 1, "max_history": 8, "beam_size": 20, "batch_size": 64},
        "semantic_ids": {"levels": 2, "codes": 8},
        "text_encoder": {"path": str(tiny_bert(tmp_path / "bert"))},
        "setrec": {"base": base},
        "reference": "setrec" if SETREC_AVAILABLE else "sasrec",
        "methods": methods,
    }
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "results"
    assert main(["benchmark", "quality", "--config", str(tmp_path / "bench.yaml"), "--out", str(out)]) == 0
    report = json.loads((out / "quality-tiny.json").read_text())
    names = [m["name"] for m in methods]
    assert [k for k in report if k not in ("paired", "efficiency", "seeds", "meta")] == names
    for name in names:
        for key in ("recall@5", "ndcg@10", "hr@20", "mrr@20", "cold/recall@20"):
            entry = report[name][key]
            assert set(entry) >= {"mean", "ci"} and len(entry["ci"]) == 2
        assert report[name]["inference_seconds_per_1000_users"] > 0
        assert len(report["seeds"][name]) == 2
    assert report["meta"]["evaluated_users"] == 40 and report["popularity"]["cold/recall@20"]["users"] == 5
    assert report["popularity"]["cold/recall@20"]["mean"] == 0.0  # ID-only scores are zero on cold items
    assert report["text"]["info"]["window"] in (1, 2, 3, 5, None)  # picked on valid
    assert set(report["paired"]["vs"]) == set(names) - {report["paired"]["reference"]}
    if SETREC_AVAILABLE:
        assert report["efficiency"]["beam_over_reference"] > 0 and report["efficiency"]["beam_size"] == 20
        assert report["efficiency"]["equal_backbone"] is True
    assert (out / "quality-tiny.md").read_text().count("\n| ") >= len(names)
    for png in ("quality-tiny-metrics.png", "quality-tiny-efficiency.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    client = MlflowClient()
    parent = client.get_run(report["meta"]["mlflow_parent_run"])
    assert parent.info.status == "FINISHED" and "quality-tiny.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 * len(names)
    assert all(not math.isnan(r.data.metrics[metric_name("test/ndcg@10")]) for r in children)


def test_merging_separate_runs_gives_the_joint_report(tmp_path):
    from recsys.evaluation.benchmark import merge_reports

    runs = {"ref": [_run("ref", 0, [0, 0, 0, 9, 1, 8]), _run("ref", 1, [0, 0, 0, 1, 9, 2])],
            "other": [_run("other", 0, [6, 5, 4, 3, 2, 1])]}
    config = _config()
    sources = []
    for name in ("other", "ref"):  # two processes, one method each
        work = tmp_path / name
        (work / "per_user").mkdir(parents=True)
        for run in runs[name]:
            run.result.per_user.write_parquet(work / "per_user" / f"{name}-seed{run.seed}.parquet")
        report = build_report(config, {name: runs[name]}, {"dataset": "x", "fingerprint": "f"})
        (work / "q.json").write_text(json.dumps(report))
        sources.append((work / "q.json", work))
    merged = merge_reports(config, sources, tmp_path / "out")
    joint = build_report(config, runs, {"dataset": "x"})
    assert list(k for k in merged if k in runs) == ["ref", "other"]  # config order
    for name in runs:
        for key in ("ndcg@5", "recall@1", "cold/recall@5"):
            assert merged[name][key]["mean"] == pytest.approx(joint[name][key]["mean"])
            assert merged[name][key]["ci"] == pytest.approx(joint[name][key]["ci"])
        assert merged[name]["inference_seconds_per_1000_users"] == pytest.approx(joint[name]["inference_seconds_per_1000_users"])
    assert merged["paired"]["vs"]["other"]["ndcg@5"]["diff"] == pytest.approx(joint["paired"]["vs"]["other"]["ndcg@5"]["diff"])
    assert merged["paired"]["vs"]["other"]["ndcg@5"]["ci"] == pytest.approx(joint["paired"]["vs"]["other"]["ndcg@5"]["ci"])
    assert (tmp_path / "out" / "quality-x.md").is_file()
