"""The main job on the embedded default dataset: data, tokenizers, training, evaluation, registry, service.

Command (what ``make demo`` runs)::

    recsys demo                      # MovieLens-100k, T5 demo preset, 150 s on an idle 2-core CPU
    recsys demo --size tiny          # the same steps at toy size (what the test suite runs)
    recsys demo --no-serve           # stop after registering the model

Steps, each printed with its wall time:

1. ``recsys data prepare --source ml-100k`` (fetched once from the recbole wheel, offline afterwards);
2. ``recsys tokenize semantic`` (all-MiniLM-L6-v2 text embeddings, cached) and ``recsys tokenize cf``
   (SASRec trained on the train split; it is also the baseline);
3. ``recsys train --config configs/setrec-t5-demo.yaml``: the set-identifier model, tracked in MLflow;
4. both models evaluated on the test split in one harness (full ranking, warm/cold groups);
5. the set-identifier bundle registered as ``setrec`` with the alias ``champion`` when it beats SASRec
   on validation NDCG@10 in the same harness (else ``challenger``, and the report says SASRec stays better);
6. ``recsys serve`` started on that registered model, one real ``POST /v1/recommend`` for a sample user;
7. a report in ``runs/demo/``: ``report.md`` (metrics table, the sample user) and PNG plots.

Example:
    >>> from recsys.demo import DemoConfig, run_demo
    >>> outcome = run_demo(DemoConfig(size="tiny", root="runs/demo-tiny"))
    >>> outcome.report_path, outcome.recommended_titles[:3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError, SetrecError

#: Training overrides per demo size. "demo" is the CPU preset as shipped; "tiny" trains for a few
#: batches only (the test suite runs it to check that every step connects).
SIZE_OVERRIDES: dict[str, dict[str, Any]] = {
    "demo": {},
    "tiny": {"model.preset": "tiny", "trainer.max_epochs": 1, "trainer.limit_train_batches": 20, "trainer.progress_bar": False},
}
#: SASRec settings per size (the CF tokenizer and the baseline); the rest are SASRecConfig defaults.
SASREC_OVERRIDES: dict[str, dict[str, Any]] = {
    "demo": {"max_epochs": 12, "patience": 3},
    "tiny": {"max_epochs": 1, "patience": 1},
}
SERVICE_START_SECONDS = 180.0


class DemoError(SetrecError):
    """A demo step failed; the message names the step and what to look at."""


@dataclass
class DemoConfig:
    """Settings of ``recsys demo``."""

    size: str = "demo"
    """``demo`` (the CPU preset; the whole demo takes 150 s on an idle 2-core CPU) or ``tiny`` (a few batches; for tests)."""
    root: str = "runs"
    """Folder for data, tokenizers, the training job and the report (``<root>/demo``)."""
    source: str = "ml-100k"
    """Dataset: the embedded ``ml-100k`` or a path in any format ``recsys data prepare`` reads."""
    train_config: str = "configs/setrec-t5-demo.yaml"
    """Training config of the set-identifier model (``recsys train``)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Extra dotted training overrides, applied after the size's."""
    serve: bool = True
    """Start the service on the registered model and send one request."""
    engine: str = "torch"
    """Serving engine: ``torch`` or ``vllm`` (Qwen backbones only)."""
    sample_user: int | None = None
    """user_idx of the user shown; None picks the test user with the longest history."""
    k: int = 10
    """Items recommended to the sample user."""

    def validate(self) -> None:
        if self.size not in SIZE_OVERRIDES:
            raise ConfigError(f"--size must be one of {sorted(SIZE_OVERRIDES)}, got {self.size!r}")
        if self.engine not in ("torch", "vllm"):
            raise ConfigError(f"--engine must be torch or vllm, got {self.engine!r}")
        if not Path(self.train_config).is_file():
            raise ConfigError(f"training config {self.train_config} not found; run the demo from the repository root")


@dataclass
class DemoOutcome:
    """What the demo produced."""

    report_path: Path
    metrics: dict[str, dict[str, float]]
    champion: str
    registered_version: str | None
    sample_history: list[str]
    recommended_titles: list[str]
    step_seconds: dict[str, float]


class _Steps:
    """Numbered step headers with wall times."""

    def __init__(self, total: int) -> None:
        self.total, self.number, self.seconds = total, 0, {}
        self._name: str | None = None
        self._start = 0.0

    def start(self, name: str) -> None:
        self.finish()
        self.number += 1
        self._name, self._start = name, time.perf_counter()
        print(f"\n=== [{self.number}/{self.total}] {name}", flush=True)

    def finish(self) -> None:
        if self._name is not None:
            elapsed = time.perf_counter() - self._start
            self.seconds[self._name] = round(elapsed, 1)
            print(f"--- {self._name}: {elapsed:.1f} s", flush=True)
            self._name = None


def _prepare(config: DemoConfig, data_dir: Path) -> None:
    from recsys.pipelines.prepare import PrepareConfig, prepare
    from recsys.pipelines.stats import dataset_stats, format_stats

    manifest = data_dir / "manifest.json"
    previous = json.loads(manifest.read_text()) if manifest.is_file() else {}
    parameters = previous.get("parameters", {})
    if previous.get("source", {}).get("name") == config.source and parameters.get("kcore") == 0 and parameters.get("split") == "loo":
        print(f"using the prepared dataset in {data_dir}")
    else:
        prepare(PrepareConfig(source=config.source, out=str(data_dir), kcore=0, split="loo"))
    print(format_stats(dataset_stats(data_dir), title=str(data_dir)))


def _tokenizers(config: DemoConfig, data_dir: Path, tok_dir: Path) -> None:
    from recsys.models.sasrec import SASRecConfig
    from recsys.tokenizers.cf import train_cf_embeddings
    from recsys.tokenizers.semantic import build_text_embeddings

    semantic_dir, cf_dir = tok_dir / "semantic", tok_dir / "cf"
    if not (semantic_dir / "manifest.json").is_file():
        _, stats = build_text_embeddings(data_dir, semantic_dir)
        print(f"text embeddings: {stats}")
    else:
        print(f"using the text embeddings in {semantic_dir}")
    if not (cf_dir / "manifest.json").is_file():
        train_cf_embeddings(data_dir, cf_dir, SASRecConfig(**SASREC_OVERRIDES[config.size]))
    else:
        print(f"using the CF embeddings (and SASRec) in {cf_dir}")


def _train(config: DemoConfig, data_dir: Path, tok_dir: Path, job_dir: Path):
    from recsys.training.job import load_train_config, train

    overrides = {
        "data": str(data_dir),
        "cf": str(tok_dir / "cf"),
        "semantic": str(tok_dir / "semantic"),
        "out_dir": str(job_dir),
        "tracking.enabled": True,
        "tracking.run_name": f"demo-{config.size}",
        **SIZE_OVERRIDES[config.size],
        **config.overrides,
    }
    cfg = load_train_config(config.train_config, overrides=overrides)
    result = train(cfg)
    print(f"bundle: {result.bundle_dir}  MLflow run: {result.run_id}  beta: {result.best_beta}")
    return result


def _evaluate(data, bundle_dir: Path, sasrec_dir: Path, split: str = "test"):
    """Both models on ``split``, same harness, history items excluded for both."""
    from recsys.bundle import load_bundle
    from recsys.evaluation.evaluate import evaluate
    from recsys.evaluation.groups import ItemGroups
    from recsys.evaluation.methods import bundle_recommender
    from recsys.evaluation.recommenders import ScoringRecommender
    from recsys.models.sasrec import SASRec
    from recsys.training.sasrec import load_sasrec

    examples = data.eval_examples(split)
    groups = ItemGroups.from_dataset(data)
    setrec = bundle_recommender("setrec", load_bundle(bundle_dir))
    sasrec_model, sasrec_config = load_sasrec(sasrec_dir)
    sasrec_model.eval()

    def sasrec_scores(histories):
        return sasrec_model.score(SASRec.pad_histories(histories, sasrec_config.max_len))

    sasrec = ScoringRecommender("sasrec", sasrec_scores, sasrec_model.num_items)
    return {rec.name: evaluate(rec, examples, groups, exclude_history=True) for rec in (setrec, sasrec)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ask_service(model_uri: str, engine: str, history_ids: list[str], k: int, log_path: Path) -> dict:
    """Start ``recsys serve`` on ``model_uri``, send one recommendation request, stop the service."""
    import httpx

    port = _free_port()
    command = [sys.executable, "-m", "recsys", "serve", "--model", model_uri, "--engine", engine,
               "--host", "127.0.0.1", "--port", str(port)]
    print("$ " + " ".join(command[2:]).replace("-m recsys", "recsys"), flush=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + SERVICE_START_SECONDS
            while True:
                if process.poll() is not None:
                    raise DemoError(f"the service exited with code {process.returncode} while starting; see {log_path}")
                try:
                    if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise DemoError(f"the service was not ready after {SERVICE_START_SECONDS:.0f} s; see {log_path}")
                time.sleep(0.5)
            body = {"history": history_ids, "k": k, "exclude_history": True}
            print(f"$ curl -X POST {url}/v1/recommend -H 'Content-Type: application/json' -d '{json.dumps(body)[:80]}...'")
            response = httpx.post(f"{url}/v1/recommend", json=body, timeout=60.0)
            if response.status_code != 200:
                raise DemoError(f"POST /v1/recommend answered {response.status_code}: {response.text[:300]}")
            return response.json()
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _sample_user(data, user_idx: int | None) -> tuple[int, list[int]]:
    examples = data.eval_examples("test")
    if user_idx is None:
        position = max(range(len(examples)), key=lambda i: (min(len(examples.histories[i]), 60), -examples.user_idx[i]))
    else:
        if user_idx not in examples.user_idx:
            raise ConfigError(f"--sample-user {user_idx} has no test item; pick a user_idx from users.parquet with one")
        position = examples.user_idx.index(user_idx)
    return examples.user_idx[position], examples.histories[position]


def _plots(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    groups = [g for g in ("all", "warm", "cold") if all(g in r.summary for r in results.values())]
    for metric in ("ndcg@10", "recall@10"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        width = 0.8 / len(results)
        for offset, (name, result) in enumerate(results.items()):
            values = [result.summary[g].get(metric, 0.0) for g in groups]
            ax.bar([i + offset * width for i in range(len(groups))], values, width=width, label=name)
        ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(groups))], groups)
        ax.set_ylabel(f"test {metric}")
        ax.set_title(f"MovieLens demo: {metric} by gold-item group")
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{metric.replace('@', '_at_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _metrics_table(results: dict) -> str:
    keys = ("ndcg@10", "recall@10", "mrr@10", "ndcg@20", "recall@20")
    lines = ["| model | group | users | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 3)]
    for name, result in results.items():
        for group in ("all", "warm", "cold"):
            if group not in result.summary:
                continue
            users = result.counts.get(group, {}).get("users", 0)
            cells = " | ".join(f"{result.summary[group].get(k, float('nan')):.4f}" for k in keys)
            lines.append(f"| {name} | {group} | {users} | {cells} |")
    return "\n".join(lines) + "\n"


def run_demo(config: DemoConfig) -> DemoOutcome:
    """Run every step of the demo; see the module docstring.

    Example:
        >>> run_demo(DemoConfig(size="tiny", root="runs/demo-tiny")).recommended_titles
    """
    config.validate()
    from recsys import tracking
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.training.registry import register_bundle

    tracking.configure()
    root = Path(config.root)
    dataset_name = Path(config.source).name if config.source != "ml-100k" else "ml-100k"
    data_dir, tok_dir = root / "data" / dataset_name, root / "tokenizers" / dataset_name
    job_dir, report_dir = root / f"demo-{config.size}-job", root / "demo"
    report_dir.mkdir(parents=True, exist_ok=True)
    steps = _Steps(7 if config.serve else 6)

    steps.start("prepare the dataset")
    _prepare(config, data_dir)
    data = PreparedDataset.load(data_dir)

    steps.start("item tokenizers: text embeddings and CF embeddings (SASRec)")
    _tokenizers(config, data_dir, tok_dir)

    steps.start(f"train the set-identifier model ({config.train_config})")
    result = _train(config, data_dir, tok_dir, job_dir)

    steps.start("evaluate both models on the valid and test splits (full ranking, same harness)")
    valid = _evaluate(data, result.bundle_dir, tok_dir / "cf" / "sasrec", split="valid")
    results = _evaluate(data, result.bundle_dir, tok_dir / "cf" / "sasrec", split="test")
    table = _metrics_table(results)
    print(table)

    steps.start("register the model in MLflow")
    # The champion is chosen on validation under one protocol (history excluded for both), never on test.
    setrec_valid = float(valid["setrec"].summary["all"]["ndcg@10"])
    sasrec_valid = float(valid["sasrec"].summary["all"]["ndcg@10"])
    alias = "champion" if setrec_valid >= sasrec_valid else "challenger"
    if result.run_id is None:
        raise DemoError("the training run was not tracked in MLflow (tracking.enabled is false in the config)")
    version = register_bundle(result.run_id, "setrec", alias)
    champion = "setrec" if alias == "champion" else "sasrec"
    print(f"valid NDCG@10: setrec {setrec_valid:.4f}, SASRec {sasrec_valid:.4f} -> models:/setrec@{alias} (version {version})")
    if alias != "champion":
        print("SASRec stays better on validation: the set-identifier model is registered as the challenger")

    titles = data.item_titles()
    item_ids = data.items["item_id"].cast(str).to_list()
    user_idx, history = _sample_user(data, config.sample_user)
    history_ids = [item_ids[i] for i in history]
    recommended: list[str] = []
    if config.serve:
        steps.start(f"serve models:/setrec@{alias} and send one request")
        answer = _ask_service(f"models:/setrec@{alias}", config.engine, history_ids, config.k, report_dir / "service.log")
        recommended = [item.get("title") or item["id"] for item in answer["items"]]
        model = answer.get("model", {})
        print(f"answered by {model.get('name')} version {model.get('version')}; unknown history items: {answer.get('unknown_items')}")

    steps.start("write the report")
    sample = _sample_markdown(user_idx, [titles[i] for i in history], recommended)
    print(sample)
    plots = _plots(results, report_dir)
    steps.finish()
    report = report_dir / "report.md"
    report.write_text(_report_markdown(config, data, table, sample, plots, alias, version, setrec_valid, sasrec_valid, steps.seconds))
    (report_dir / "metrics.json").write_text(json.dumps({name: r.summary for name, r in results.items()}, indent=2))
    print(f"\nReport: {report}  (open it in any markdown viewer; plots next to it)")
    print("MLflow UI: mlflow ui --backend-store-uri sqlite:///mlruns.db   then open http://127.0.0.1:5000")
    return DemoOutcome(report, {name: r.summary["all"] for name, r in results.items()}, champion, version,
                       [titles[i] for i in history], recommended, steps.seconds)


def _sample_markdown(user_idx: int, history_titles: list[str], recommended: list[str]) -> str:
    shown = history_titles[-10:]
    lines = [f"Sample user {user_idx}: last {len(shown)} of {len(history_titles)} items in the history, "
             "and the service's top recommendations", "", "| # | history (latest last) | recommended |", "|---|---|---|"]
    for i in range(max(len(shown), len(recommended))):
        left = shown[i] if i < len(shown) else ""
        right = recommended[i] if i < len(recommended) else ""
        lines.append(f"| {i + 1} | {left} | {right} |")
    return "\n".join(lines) + "\n"


def _report_markdown(config, data, table, sample, plots, alias, version, setrec_valid, sasrec_valid, seconds) -> str:
    steps = "\n".join(f"| {name} | {value:.1f} |" for name, value in seconds.items())
    images = "\n".join(f"![{p.stem}]({p.name})" for p in plots)
    return f"""# setrec demo report

Dataset: `{data.root}` ({data.num_users} users, {data.num_items} items, fingerprint `{data.fingerprint}`),
leave-one-out by time, full ranking over all items, history items excluded.
Produced by `recsys demo --size {config.size}` with `{config.train_config}`.

## Test metrics

{table}
Validation NDCG@10 (same harness, history excluded): setrec {setrec_valid:.4f}, SASRec {sasrec_valid:.4f}.
The set-identifier bundle is registered as `models:/setrec@{alias}` (version {version}); it is the
champion only when it beats SASRec on validation, otherwise it is registered as the challenger and the
service below serves it under that alias.

{images}

## A real request

{sample}
## Steps (wall seconds)

| step | seconds |
|---|---|
{steps}

Open the runs: `mlflow ui --backend-store-uri sqlite:///mlruns.db`.
"""


def register(subparsers) -> None:
    """Add ``recsys demo``."""
    parser = subparsers.add_parser("demo", help="the whole pipeline on MovieLens-100k, ending in a live request")
    parser.add_argument("--size", default="demo", choices=sorted(SIZE_OVERRIDES), help="demo (default) or tiny")
    parser.add_argument("--root", default="runs", help="folder for data, tokenizers, jobs and the report (default runs)")
    parser.add_argument("--source", default="ml-100k", help="dataset (default: the embedded ml-100k)")
    parser.add_argument("--config", default="configs/setrec-t5-demo.yaml", help="training config of the set-identifier model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training override, e.g. trainer.max_epochs=3")
    parser.add_argument("--engine", default="torch", choices=("torch", "vllm"), help="serving engine")
    parser.add_argument("--no-serve", action="store_true", help="skip the service and the live request")
    parser.add_argument("--sample-user", type=int, default=None, help="user_idx shown in the report")
    parser.set_defaults(func=_run)


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    from recsys.config import split_override

    overrides = {}
    for item in items:
        key, value = split_override(item)
        overrides[key] = yaml.safe_load(value)
    return overrides


def check_overrides(train_config: str, items: list[str]) -> None:
    """Type-check the ``--set`` items against the training config through the one config path (:mod:`recsys.config`),
    before any step runs: an unknown key or a wrong type fails at once, naming the flag and the key."""
    from recsys.config import parse_command
    from recsys.training.setrec_config import TrainJobConfig

    parse_command(TrainJobConfig, ["--config", train_config, *[arg for item in items for arg in ("--set", item)]], "recsys demo")


def _run(args: argparse.Namespace) -> int:
    config = DemoConfig(size=args.size, root=args.root, source=args.source, train_config=args.config,
                        overrides=_parse_overrides(args.set), serve=not args.no_serve, engine=args.engine,
                        sample_user=args.sample_user)
    config.validate()
    check_overrides(config.train_config, args.set)
    run_demo(config)
    return 0
