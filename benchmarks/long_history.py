"""Long-history serving benchmark (issue 17): latency per request at history lengths 50, 1k, 5k and 10k,
recent-only against DARE selection, through the FastAPI app.

Command (numbers in benchmarks/RESULTS.md, section "Long histories (issue 17)"; about 2-3 minutes):
    nice -n 19 .venv/bin/python benchmarks/long_history.py --prepare-only   # the fixture, at low priority
    nice -n 0 .venv/bin/python benchmarks/long_history.py                   # waits for load < 2.5, then times

What it does, in one run:

1. Data: a synthetic source from the pipeline benchmark's generator (``benchmarks/pipeline.py``
   ``generate``: power-law items, skewed user activity, day timestamps, duplicate events) with few
   users, so that every user has about 1,000 to 11,000 events (175,000 rows, 64 users, 20,000 items),
   plus an ``items.csv`` of titles; prepared with the real pipeline, ``recsys data prepare`` (k-core 5,
   leave-one-out, bad rows dropped, as the pipeline benchmark).
2. Bundle: ``tests/serving/bundles.py`` ``build_bundle`` (Qwen backbone, ``small`` preset, max_len 20,
   a few training steps, truncated-SVD CF embeddings, a random 2-layer BERT as text encoder): serving
   latency does not depend on the weight values, so a short training is enough. It is saved twice with
   ``save_bundle(history=...)``: ``history.selection: recent`` and ``dare`` with ``search_k`` 10, both with
   the CF embeddings as the attention table (the fallback of a CF artifact without a decoupled table).
3. Requests: per length L, contiguous windows of L events of the synthetic users' real sequences
   (source ids, oldest first; windows end at the user's last event and at spread-out earlier events),
   ``k`` 10 and ``exclude_history`` true (the API defaults, so the index search also drops every history
   item). Bodies are JSON-encoded once, beforehand: the client's encoding is not the service's time.
4. Timing: each selection's bundle is served by its own app, ``create_app(Recommender.from_bundle(..),
   AppConfig())`` (the defaults of ``recsys serve``: micro-batcher, 1 torch and FAISS thread), called
   through Starlette's ``TestClient`` one request at a time. That is the whole service path a user's
   request takes (body read, JSON parse, strict validation of every id, batcher, id lookup, history
   selection, model, index search with exclusions, JSON answer) without the socket and the HTTP parser,
   which do not depend on the history length beyond the bytes. Warm-up requests first; then every
   repetition sends one request per (selection, length) cell in a shuffled order, so load changes of
   the shared machine fall on every cell alike. The same loop also times ``Recommender.recommend`` on
   the same request (no HTTP, no validation) and the history selection alone, to show where time goes.
5. Load: before timing, the 1-minute load average must be below ``--max-load`` (2.5); the script
   re-checks every minute for up to ``--wait-minutes`` (20), then times anyway and marks the timing
   invalid in the JSON.

Writes ``benchmarks/results/long-history.json``: ``p50_ms`` -> selection (``recent``, ``dare``) ->
history length (``"50"``, ``"1000"``, ``"5000"``, ``"10000"``), and beside it ``p95_ms``, the
in-process and selection-only medians, ``ratio_p50_10000_over_50`` per selection against the target
(a 10,000-item history served in at most 2x the p50 of a 50-item history), the load, threads and the
bundle's ``max_len`` / ``search_k``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts benchmarks/ first on sys.path, where benchmarks/tokenizers.py would shadow
# Hugging Face `tokenizers`; import from the repository root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "long-history.json"
SELECTIONS = ("recent", "dare")
LENGTHS = (50, 1000, 5000, 10000)
#: The issue's target: p50 at the longest length over p50 at the shortest.
MAX_RATIO = 2.0


@dataclass
class Settings:
    """Sizes of one run (the defaults are the recorded benchmark; the test uses tiny ones)."""

    interactions: int = 175_000
    """Rows the pipeline benchmark's generator writes (64 users: about 1,000 to 11,000 events each)."""
    users: int = 64
    items: int = 20_000
    lengths: tuple[int, ...] = LENGTHS
    histories_per_length: int = 8
    """Distinct request histories per length (windows of the users' sequences), sent in turn."""
    repetitions: int = 200
    """Timed requests per (selection, length) cell."""
    warmup: int = 10
    """Untimed requests per cell before the timing."""
    k: int = 10
    preset: str = "small"
    max_len: int = 20
    search_k: int = 10
    train_steps: int = 20
    threads: int = 1
    """Torch and FAISS threads (``recsys serve --threads``, default 1)."""
    seed: int = 0
    text_encoder: str | None = None
    """Folder of the random 2-layer BERT (built there when missing); default: inside the work folder."""


@dataclass
class Fixture:
    data_dir: Path
    bundles: dict[str, Path]
    data: dict = field(default_factory=dict)


# ------------------------------------------------------------------ fixture

def build_fixture(work: Path, settings: Settings) -> Fixture:
    """Synthetic source -> ``recsys data prepare`` -> bundle saved per selection (reused when present)."""
    import polars as pl

    from benchmarks.pipeline import KCORE, generate
    from recsys.cli import main as recsys_main

    work = Path(work)
    key = f"i{settings.interactions}-u{settings.users}-n{settings.items}-s{settings.seed}"
    source_dir, data_dir = work / f"source-{key}", work / f"data-{key}"
    data_info: dict = {"interactions_generated": settings.interactions, "users_generated": settings.users,
                       "items_generated": settings.items, "generator": "benchmarks/pipeline.py generate", "kcore": KCORE}
    if not (data_dir / "manifest.json").is_file():
        generate(source_dir / "interactions.csv", settings.interactions, settings.users, settings.items, seed=settings.seed)
        ids = range(1, settings.items + 1)
        pl.DataFrame({"item_id": list(ids), "title": [f"synthetic item {i}" for i in ids]}).write_csv(source_dir / "items.csv")
        code = recsys_main(["data", "prepare", "--source", str(source_dir / "interactions.csv"), "--out", str(data_dir),
                            "--kcore", str(KCORE), "--split", "loo", "--on-bad-rows", "drop"])
        if code != 0:
            raise RuntimeError(f"recsys data prepare failed with exit code {code}")
    bundles = {s: work / f"bundle-{key}-{settings.preset}-l{settings.max_len}-k{settings.search_k}-t{settings.train_steps}-{s}"
               for s in SELECTIONS}
    if not all((path / "manifest.json").is_file() for path in bundles.values()):
        _build_bundles(work, data_dir, bundles, settings)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    data_info["prepared"] = {"fingerprint": manifest.get("fingerprint"), "counts": {
        k: v for k, v in manifest.get("counts", {}).items() if isinstance(v, (int, float))}}
    return Fixture(data_dir, bundles, data_info)


def _build_bundles(work: Path, data_dir: Path, bundles: dict[str, Path], settings: Settings) -> None:
    from recsys.bundle import load_bundle, save_bundle
    from recsys.models.history_selection import HistoryConfig, HistorySelector
    from tests.serving.bundles import BundleSpec, build_bundle, text_embeddings, tiny_text_encoder

    encoder = tiny_text_encoder(Path(settings.text_encoder) if settings.text_encoder else work / "bert")
    text = text_embeddings(data_dir, work / f"text-{data_dir.name}", encoder)
    spec = BundleSpec(backbone="qwen", preset=settings.preset, steps=settings.train_steps, max_len=settings.max_len,
                      batch_size=32, seed=settings.seed, threads=settings.threads)
    base = build_bundle(data_dir, work / f"{bundles['recent'].name}-base", spec, text)
    model = load_bundle(base)
    info = model.bundle
    table = model.item_encoder.cf_embeddings.detach()
    configs = {"recent": HistoryConfig("recent", 0), "dare": HistoryConfig("dare", settings.search_k)}
    for selection, path in bundles.items():
        selector = HistorySelector(table, info.max_len, configs[selection], "embeddings")
        save_bundle(model, path, beta=info.beta, max_len=info.max_len, items=info.items_path,
                    dataset_fingerprint=info.manifest["dataset_fingerprint"], config=info.config,
                    text_encoder=info.text_encoder, history=selector)


def request_histories(data_dir: Path, lengths, per_length: int, seed: int = 0) -> tuple[dict[int, list[list[str]]], dict]:
    """Per length L, up to ``per_length`` windows of L consecutive events (source ids) of the users' sequences.

    Windows end at the last event of each user with at least L events, then at earlier ends spread over
    those users' sequences, until ``per_length`` windows are drawn.

    Raises:
        ValueError: no user has L events.
    """
    import numpy as np
    import polars as pl

    interactions = pl.read_parquet(data_dir / "interactions.parquet", columns=["user_idx", "item_idx"])
    items = pl.read_parquet(data_dir / "items.parquet", columns=["item_idx", "item_id"]).sort("item_idx")
    ids = items["item_id"].cast(pl.String).to_list()
    # file order is the chronological order per user (DEVELOPERS.md, prepared dataset)
    sequences = [s for s in interactions.group_by("user_idx", maintain_order=True).agg("item_idx")["item_idx"].to_list()]
    counts = sorted(len(s) for s in sequences)
    rng = np.random.default_rng(seed)
    out: dict[int, list[list[str]]] = {}
    for length in lengths:
        eligible = [s for s in sequences if len(s) >= length]
        if not eligible:
            raise ValueError(f"no synthetic user has {length} events (longest: {counts[-1]}); generate more interactions")
        windows = [s[len(s) - length:] for s in eligible[:per_length]]
        while len(windows) < per_length:
            s = eligible[int(rng.integers(len(eligible)))]
            end = int(rng.integers(length, len(s) + 1))
            windows.append(s[end - length:end])
        out[length] = [[ids[i] for i in w] for w in windows]
    stats = {"users": len(sequences), "events_per_user": {"min": counts[0], "median": int(statistics.median(counts)),
                                                          "max": counts[-1]},
             "users_with_at_least": {str(length): sum(c >= length for c in counts) for length in lengths}}
    return out, stats


# ------------------------------------------------------------------ load

def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def wait_for_load(max_load: float, minutes: float, poll_s: float = 60.0) -> dict:
    """Wait until the 1-minute load is below ``max_load``, re-checking every ``poll_s``, at most ``minutes``."""
    started = time.monotonic()
    checks = [load_average()]
    while checks[-1][0] >= max_load and time.monotonic() - started + poll_s <= minutes * 60:
        print(f"1-minute load {checks[-1][0]} >= {max_load}: waiting {poll_s:.0f} s", flush=True)
        time.sleep(poll_s)
        checks.append(load_average())
    return {"threshold_1min": max_load, "checks": checks, "waited_s": round(time.monotonic() - started, 1),
            "below_threshold_at_start": checks[-1][0] < max_load}


# ------------------------------------------------------------------ timing

def _quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return round(statistics.median(ordered), 3), round(p95, 3)


def measure(fixture: Fixture, settings: Settings) -> dict:
    """Time every (selection, length) cell through the app, ``Recommender.recommend`` and the selection alone."""
    import faiss
    import numpy as np
    import torch
    from fastapi.testclient import TestClient

    from recsys.serving.app import AppConfig, create_app
    from recsys.serving.commands import set_threads
    from recsys.serving.service import Query, Recommender

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    set_threads(settings.threads)
    histories, stats = request_histories(fixture.data_dir, settings.lengths, settings.histories_per_length, settings.seed)
    recommenders, clients = {}, {}
    try:
        for selection, path in fixture.bundles.items():
            recommenders[selection] = Recommender.from_bundle(path, "torch")
            clients[selection] = TestClient(create_app(recommenders[selection], AppConfig())).__enter__()
        selector_info = {s: {"selection": r.engine.selector.config.selection, "search_k": r.engine.selector.config.search_k,
                             "max_len": r.engine.max_len} for s, r in recommenders.items()}
        for selection, info in selector_info.items():
            if info["selection"] != selection:
                raise RuntimeError(f"the {selection} bundle serves {info}")
        bodies = {n: [json.dumps({"history": h, "k": settings.k}).encode() for h in hs] for n, hs in histories.items()}
        rows = {n: [[recommenders["recent"]._row[i] for i in h] for h in hs] for n, hs in histories.items()}
        cells = [(s, n) for s in SELECTIONS for n in settings.lengths]
        app_ms = {c: [] for c in cells}
        rec_ms = {c: [] for c in cells}
        sel_ms = {c: [] for c in cells}
        order = random.Random(settings.seed)
        headers = {"content-type": "application/json"}
        for repetition in range(settings.warmup + settings.repetitions):
            order.shuffle(cells)
            timed = repetition >= settings.warmup
            for selection, length in cells:
                which = repetition % len(bodies[length])
                client, recommender = clients[selection], recommenders[selection]
                start = time.perf_counter()
                answer = client.post("/v1/recommend", content=bodies[length][which], headers=headers)
                elapsed = time.perf_counter() - start
                if answer.status_code != 200:
                    raise RuntimeError(f"{selection} at {length}: HTTP {answer.status_code}: {answer.text[:300]}")
                start = time.perf_counter()
                result = recommender.recommend([Query(histories[length][which], settings.k)])[0]
                in_process = time.perf_counter() - start
                if isinstance(result, Exception):
                    raise result
                start = time.perf_counter()
                recommender.engine.selector([rows[length][which]])
                selection_s = time.perf_counter() - start
                if timed:
                    app_ms[(selection, length)].append(elapsed * 1e3)
                    rec_ms[(selection, length)].append(in_process * 1e3)
                    sel_ms[(selection, length)].append(selection_s * 1e3)
        # the selection really reads different items under dare (else the comparison is moot)
        longest = max(settings.lengths)
        differs = sum(recommenders["dare"].engine.selector([r])[0] != r[-settings.max_len:] for r in rows[longest])
        threads = {"torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads()}
        num_items = recommenders["recent"].num_items
    finally:
        for client in clients.values():
            client.__exit__(None, None, None)
        for recommender in recommenders.values():
            recommender.close()
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])

    def table(samples: dict, index: int) -> dict:
        return {s: {str(n): _quantiles(samples[(s, n)])[index] for n in settings.lengths} for s in SELECTIONS}

    p50 = table(app_ms, 0)
    shortest, longest_key = str(min(settings.lengths)), str(max(settings.lengths))
    ratio = {s: round(p50[s][longest_key] / p50[s][shortest], 3) for s in SELECTIONS}
    return {
        "p50_ms": p50,
        "p95_ms": table(app_ms, 1),
        "recommender_p50_ms": table(rec_ms, 0),
        "recommender_p95_ms": table(rec_ms, 1),
        "selection_p50_ms": table(sel_ms, 0),
        f"ratio_p50_{longest_key}_over_{shortest}": ratio,
        "target": {"max_ratio": MAX_RATIO, "rule": f"p50 at {longest_key} items <= {MAX_RATIO} x p50 at {shortest} items",
                   "met": {s: ratio[s] <= MAX_RATIO for s in SELECTIONS}},
        "dare_selection_differs_from_recent": f"{differs} of {len(rows[longest])} histories of {longest_key} items",
        "threads": threads,
        "selectors": selector_info,
        "requests": {"k": settings.k, "exclude_history": True, "repetitions": settings.repetitions, "warmup": settings.warmup,
                     "histories_per_length": settings.histories_per_length, **stats},
        "catalogue_items": num_items,
    }


def run(work: Path, settings: Settings, max_load: float = 2.5, wait_minutes: float = 20.0, poll_s: float = 60.0) -> dict:
    """Build (or reuse) the fixture, wait for the load, time; returns the results (the JSON's content)."""
    started = time.perf_counter()
    fixture = build_fixture(work, settings)
    load = wait_for_load(max_load, wait_minutes, poll_s)
    timing_started = time.perf_counter()
    result = measure(fixture, settings)
    load["at_end"] = load_average()
    load["valid_timing"] = load["below_threshold_at_start"] and load["at_end"][0] < max_load
    manifest = json.loads((fixture.bundles["dare"] / "manifest.json").read_text())
    result.update({
        "path": "FastAPI app (create_app, AppConfig defaults) through Starlette's TestClient, one request at a time: "
                "body, JSON parse, strict validation, micro-batcher, id lookup, history selection, torch engine, "
                "exact FAISS search with the history excluded, JSON answer; no socket or HTTP parser",
        "load": load,
        "bundle": {"backbone": "qwen", "preset": settings.preset, "max_len": manifest["max_len"],
                   "search_k": settings.search_k, "train_steps": settings.train_steps,
                   "history": {s: json.loads((p / "manifest.json").read_text())["history"] for s, p in fixture.bundles.items()},
                   "note": "a few training steps: serving latency does not depend on the weight values"},
        "data": fixture.data,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items() if k != "text_encoder"},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "timing_seconds": round(time.perf_counter() - timing_started, 1),
        "seconds": round(time.perf_counter() - started, 1),
    })
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = Settings()
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "long-history", help="fixture folder (reused)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--prepare-only", action="store_true", help="build the fixture and stop (run it at nice 19)")
    parser.add_argument("--interactions", type=int, default=defaults.interactions)
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--items", type=int, default=defaults.items)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(defaults.lengths))
    parser.add_argument("--histories-per-length", type=int, default=defaults.histories_per_length)
    parser.add_argument("--repetitions", type=int, default=defaults.repetitions)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--preset", default=defaults.preset, choices=["tiny", "small"])
    parser.add_argument("--max-len", type=int, default=defaults.max_len)
    parser.add_argument("--search-k", type=int, default=defaults.search_k)
    parser.add_argument("--train-steps", type=int, default=defaults.train_steps)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--text-encoder", default=None, help="folder of the random BERT text encoder (built when missing)")
    parser.add_argument("--max-load", type=float, default=2.5, help="time only below this 1-minute load ...")
    parser.add_argument("--wait-minutes", type=float, default=20.0, help="... re-checked every minute for this long")
    parser.add_argument("--poll-s", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = Settings(interactions=args.interactions, users=args.users, items=args.items, lengths=tuple(args.lengths),
                        histories_per_length=args.histories_per_length, repetitions=args.repetitions, warmup=args.warmup,
                        preset=args.preset, max_len=args.max_len, search_k=args.search_k, train_steps=args.train_steps,
                        threads=args.threads, text_encoder=args.text_encoder)
    if args.prepare_only:
        fixture = build_fixture(args.workdir, settings)
        print(f"fixture ready: {fixture.data_dir}, {', '.join(str(p) for p in fixture.bundles.values())}")
        return 0
    result = run(args.workdir, settings, args.max_load, args.wait_minutes, args.poll_s)
    result["command"] = "benchmarks/long_history.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("p50_ms", "p95_ms", "recommender_p50_ms", "selection_p50_ms", "load")}, indent=2))
    ratio_key = next(k for k in result if k.startswith("ratio_p50_"))
    print(f"{ratio_key}: {result[ratio_key]}; target met: {result['target']['met']}; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
