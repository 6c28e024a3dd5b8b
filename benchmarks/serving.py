"""Serving benchmark: bounded loopback load against `recsys serve`, per engine and concurrency.

Command (numbers in benchmarks/RESULTS.md, section "Serving"):
    .venv/bin/python benchmarks/serving.py --bundle runs/serving/bundle-qwen-demo \
        --data runs/data/ml-100k --engines torch vllm --concurrency 1 8 32 --duration 20

For each engine it measures, in one run:

- engine parity (both engines): max |score difference| over every item and top-10 overlap of the
  vllm engine against the torch engine for 200 held-out users, fp32;
- ``floor_ms``: the in-process floor, the median time of one query through the recommender
  (one engine forward pass plus one index search, no HTTP, no batching), the reference the
  service's latency is compared to;
- for each concurrency c: a ``recsys serve`` subprocess on 127.0.0.1 gets a closed-loop load of c
  clients (each sends its next request when the last one is answered) for ``--duration``
  seconds after a short warm-up: p50/p95/p99 latency in ms, requests per second, errors
  (non-200 answers and transport failures), and the mean micro-batch size from /metrics;
- ``service_overhead_ratio_p50_at_1``: p50 at concurrency 1 over ``floor_ms`` (target <= 1.3), with
  ``where_the_time_went_at_1``: the client's mean latency split, from the server's own /metrics in
  the same window, into the recommender's batch time (engine + index), the rest of the server's
  time (parsing, validation, batching, JSON) and what lies outside the app (HTTP, sockets, client);
- ``<c>_without_admin`` then ``<c>_with_admin`` (``--admin-concurrency``, default 8), back to back: the
  recommend load of c clients alone, then while one more client adds items (``POST /v1/items``,
  closed loop, new ids, texts embedded by the bundle's text encoder): recommend stats, items added
  per second, add latency, and ``admin_rps_ratio`` = recommend req/s with the admin client over
  req/s without it (target >= 0.8).

Requests are held-out users' histories of the prepared dataset (source ids), k=10. The JSON
goes to benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts benchmarks/ first on sys.path, where a benchmarks/tokenizers.py
# would shadow Hugging Face `tokenizers`; import from the repository root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))


def item_texts(data_dir: Path, limit: int = 500) -> list[str]:
    """Texts of catalogue items, the admin client's new items are made from."""
    from recsys.pipelines.prepared import PreparedDataset

    items = PreparedDataset.load(data_dir).items
    column = "text" if "text" in items.columns else "title"
    return [str(t) for t in items[column].head(limit).to_list()]


def histories_of(data_dir: Path, limit: int = 2000) -> list[list[str]]:
    """Test-split histories of the prepared dataset as source item ids."""
    from recsys.pipelines.prepared import PreparedDataset

    data = PreparedDataset.load(data_dir)
    ids = data.items["item_id"].cast(str).to_list()
    examples = data.eval_examples("test")
    return [[ids[i] for i in h] for h in examples.histories[:limit]]


PARITY_USERS = 200


def floor_ms(bundle: Path, engine: str, histories: list[list[str]], runs: int) -> tuple[dict, np.ndarray]:
    """Median ms of one query (one forward + one search) in process, the batch-32 time per query,
    and the scores of every item for the first PARITY_USERS histories (engine parity)."""
    from recsys.serving.service import Query, Recommender

    recommender = Recommender.from_bundle(bundle, engine)
    try:
        rows = [[recommender._row[i] for i in h] for h in histories[:PARITY_USERS]]
        scores = recommender.engine.query_vectors(rows) @ recommender.index.vectors.T
        queries = [Query(h, k=10) for h in histories]
        for query in queries[:5]:
            recommender.recommend([query])
        single = []
        for i in range(runs):
            start = time.perf_counter()
            recommender.recommend([queries[i % len(queries)]])
            single.append((time.perf_counter() - start) * 1000)
        batched = []
        for i in range(max(3, runs // 20)):
            chunk = [queries[(i * 32 + j) % len(queries)] for j in range(32)]
            start = time.perf_counter()
            recommender.recommend(chunk)
            batched.append((time.perf_counter() - start) * 1000 / 32)
    finally:
        recommender.close()
    floors = {"floor_ms": round(statistics.median(single), 3), "floor_batch32_ms_per_query": round(statistics.median(batched), 3),
              "floor_mean_ms": round(statistics.fmean(single), 3)}  # the mean, to set against where_the_time_went_at_1
    return floors, scores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bundle: Path, engine: str, port: int, args) -> subprocess.Popen:
    token = args.log_dir / "admin.token"
    token.write_text(ADMIN_TOKEN)
    token.chmod(0o600)
    catalogue = args.log_dir / f"catalogue-{engine}-{port}.db"  # fresh: items added by this run only
    command = [
        sys.executable, "-m", "recsys", "serve", "--bundle", str(bundle), "--engine", engine, "--port", str(port),
        "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "4096", "--threads", str(args.threads),
        "--admin-token-file", str(token), "--catalogue", f"sqlite:///{catalogue}",
    ]
    log = open(args.log_dir / f"server-{engine}-{port}.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=ROOT)
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"recsys serve exited with {process.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"recsys serve did not become ready in 300 s; see {log.name}")


ADMIN_TOKEN = "benchmark-admin-token-0123456789"


class _Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator shares the CPU with the server,
    so it must cost far less per request than the server does (httpx costs several ms here)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes, token: str | None = None) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        await self.reader.readexactly(length)
        if close:
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


async def load(port: int, histories: list[list[str]], concurrency: int, duration: float, warmup: float, admin_texts: list[str] | None = None) -> dict:
    """Closed-loop load: ``concurrency`` clients, each sending its next request when answered;
    with ``admin_texts``, one more client adds items from those texts the same way."""
    latencies: list[float] = []
    add_latencies: list[float] = []
    errors = add_errors = 0
    counter = 0
    bodies = [json.dumps({"history": h, "k": 10}).encode() for h in histories]
    measuring_from = time.perf_counter() + warmup
    stop_at = measuring_from + duration
    run_tag = time.time_ns()

    async def worker(offset: int) -> None:
        nonlocal errors, counter
        connection = _Connection("127.0.0.1", port)
        i = offset
        try:
            while time.perf_counter() < stop_at:
                body = bodies[i % len(bodies)]
                i += concurrency
                start = time.perf_counter()
                try:
                    ok = await connection.post("/v1/recommend", body) == 200
                except (OSError, ValueError, asyncio.IncompleteReadError):
                    ok = False
                    await connection.close()
                end = time.perf_counter()
                if start >= measuring_from and end <= stop_at:
                    counter += 1
                    if ok:
                        latencies.append((end - start) * 1000)
                    else:
                        errors += 1
        finally:
            await connection.close()

    async def admin() -> None:
        nonlocal add_errors
        connection = _Connection("127.0.0.1", port)
        i = 0
        try:
            while time.perf_counter() < stop_at:
                text = admin_texts[i % len(admin_texts)]
                body = json.dumps({"id": f"bench-{run_tag}-{i}", "text": f"{text} (edition {i})", "title": f"added {i}"}).encode()
                i += 1
                start = time.perf_counter()
                try:
                    ok = await connection.post("/v1/items", body, token=ADMIN_TOKEN) == 201
                except (OSError, ValueError, asyncio.IncompleteReadError):
                    ok = False
                    await connection.close()
                end = time.perf_counter()
                if start >= measuring_from and end <= stop_at:
                    if ok:
                        add_latencies.append((end - start) * 1000)
                    else:
                        add_errors += 1
        finally:
            await connection.close()

    tasks = [worker(c) for c in range(concurrency)] + ([admin()] if admin_texts else [])
    await asyncio.gather(*tasks)
    values = np.asarray(latencies)
    stats = {
        "p50_ms": round(float(np.percentile(values, 50)), 2) if values.size else None,
        "p95_ms": round(float(np.percentile(values, 95)), 2) if values.size else None,
        "p99_ms": round(float(np.percentile(values, 99)), 2) if values.size else None,
        "mean_ms": round(float(values.mean()), 3) if values.size else None,
        "rps": round(counter / duration, 1),
        "errors": errors,
        "requests": counter,
    }
    if admin_texts:
        adds = np.asarray(add_latencies)
        stats.update(
            adds_per_s=round(adds.size / duration, 1),
            add_p50_ms=round(float(np.percentile(adds, 50)), 2) if adds.size else None,
            add_errors=add_errors,
        )
    return stats


def server_totals(url: str) -> dict[str, float]:
    """Sums and counts of the server's histograms that split a request's time (see the module docstring)."""
    import httpx

    wanted = {
        'setrec_request_latency_seconds_sum{endpoint="/v1/recommend"}': "request_s",
        'setrec_request_latency_seconds_count{endpoint="/v1/recommend"}': "requests",
        "setrec_batch_seconds_sum": "batch_s",
        "setrec_batch_seconds_count": "batches",
        "setrec_batch_size_sum": "batch_items",
    }
    totals = dict.fromkeys(wanted.values(), 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in wanted:
            totals[wanted[name]] = float(value)
    return totals


def time_split(before: dict, after: dict, client_mean_ms: float | None) -> dict | None:
    """Mean ms per request: recommender (engine + index, per query of a batch), the rest of the app, outside the app."""
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    if not requests or not batches or client_mean_ms is None:
        return None
    server = (after["request_s"] - before["request_s"]) * 1000 / requests
    queries = (after["batch_items"] - before["batch_items"]) or batches
    recommender = (after["batch_s"] - before["batch_s"]) * 1000 / queries
    return {
        "client_mean_ms": round(client_mean_ms, 3),
        "server_mean_ms": round(server, 3),
        "recommender_ms": round(recommender, 3),
        "app_ms": round(server - recommender, 3),
        "outside_app_ms": round(client_mean_ms - server, 3),
    }


def batch_totals(url: str) -> tuple[float, float]:
    """(sum, count) of the server's micro-batch size histogram."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("setrec_batch_size_sum", "setrec_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("setrec_batch_size_sum", 0.0), values.get("setrec_batch_size_count", 0.0)


def build_demo_bundle(args) -> Path:
    """A Qwen 'small' bundle at demo sizes (N=2, P=1, R=1, max_len 10) when none is given.

    Text artifact: ``--semantic`` (built there with the bundled all-MiniLM-L6-v2 when missing).
    CF artifact: ``--cf``; when that folder does not exist, the truncated-SVD stand-in of the
    serving tests. ``--train-steps 0`` keeps the initial weights: the timings do not depend on
    weight values (the bundle's ranking quality is meaningless then).
    """
    sys.path.insert(0, str(ROOT))
    from tests.serving.bundles import BundleSpec, build_bundle, text_embeddings

    out = ROOT / "runs" / "serving" / f"bundle-qwen-demo{'' if args.train_steps == 150 else f'-steps{args.train_steps}'}"
    if not (out / "manifest.json").is_file():
        semantic = args.semantic if (args.semantic / "manifest.json").is_file() else text_embeddings(args.data, args.semantic)
        cf = args.cf if (args.cf / "cf_embeddings.safetensors").is_file() else None
        spec = BundleSpec(backbone="qwen", preset="small", num_semantic_tokens=2, num_prompt_tokens=1, num_response_tokens=1,
                          steps=args.train_steps, batch_size=64, max_len=10, lr=2e-3, cf_dim=64)
        build_bundle(args.data, out, spec, semantic, cf)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: build runs/serving/bundle-qwen-demo)")
    parser.add_argument("--data", type=Path, default=ROOT / "runs/data/ml-100k", help="prepared dataset of the request histories")
    parser.add_argument("--cf", type=Path, default=ROOT / "runs/tokenizers/ml-100k/cf", help="CF artifact (only to build the bundle)")
    parser.add_argument("--semantic", type=Path, default=ROOT / "runs/tokenizers/ml-100k/semantic", help="text artifact (only to build the bundle)")
    parser.add_argument("--train-steps", type=int, default=150, help="training steps of the demo bundle built when --bundle is not given")
    parser.add_argument("--engines", nargs="+", default=["torch", "vllm"], choices=["torch", "vllm"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per concurrency")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--floor-runs", type=int, default=200)
    parser.add_argument("--admin-concurrency", type=int, default=8, help="recommend clients of the with/without-admin case (0: skip it)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="torch/FAISS threads of the server and the floor (recsys serve --threads)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serving.json")
    parser.add_argument("--machine", default="2-core CPU, 24 GiB")
    args = parser.parse_args(argv)
    args.log_dir = ROOT / "runs" / "serving" / "logs"
    args.log_dir.mkdir(parents=True, exist_ok=True)
    from recsys.serving.commands import set_threads

    set_threads(args.threads)
    bundle = args.bundle or build_demo_bundle(args)
    histories = histories_of(args.data)
    texts = item_texts(args.data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    result = {
        "machine": args.machine,
        "load_average_at_start": os.getloadavg(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "command": "benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "bundle": {"path": str(bundle), "model_config": manifest["model_config"], "shapes": manifest["shapes"], "max_len": manifest["max_len"]},
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "k": 10, "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "threads": args.threads},
        "engines": {},
    }
    scores: dict[str, np.ndarray] = {}
    for engine in args.engines:
        print(f"[{engine}] in-process floor ...", flush=True)
        row, scores[engine] = floor_ms(bundle, engine, histories, args.floor_runs)
        print(f"[{engine}] {row}", flush=True)
        port = free_port()
        server = start_server(bundle, engine, port, args)
        url = f"http://127.0.0.1:{port}"
        try:
            for concurrency in args.concurrency:
                if concurrency == 1:  # warm up apart, so the server's totals cover the measured window only
                    asyncio.run(load(port, histories, concurrency, args.warmup, 0.0))
                sum_before, count_before = batch_totals(url)
                totals_before = server_totals(url)
                stats = asyncio.run(load(port, histories, concurrency, args.duration, 0.0 if concurrency == 1 else args.warmup))
                sum_after, count_after = batch_totals(url)
                batches = count_after - count_before
                stats["mean_batch_size"] = round((sum_after - sum_before) / batches, 2) if batches else None
                row[str(concurrency)] = stats
                if concurrency == 1:
                    row["where_the_time_went_at_1"] = time_split(totals_before, server_totals(url), stats["mean_ms"])
                print(f"[{engine}] concurrency {concurrency}: {stats}", flush=True)
            if args.admin_concurrency:  # back to back, so both see the same machine load
                c = args.admin_concurrency
                without = asyncio.run(load(port, histories, c, args.duration, args.warmup))
                stats = asyncio.run(load(port, histories, c, args.duration, args.warmup, admin_texts=texts))
                row[f"{c}_without_admin"], row[f"{c}_with_admin"] = without, stats
                if without["rps"]:
                    row["admin_rps_ratio"] = round(stats["rps"] / without["rps"], 3)
                print(f"[{engine}] concurrency {c} without / with one admin client: {without} / {stats}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
        if "1" in row and "32" in row and row["1"]["rps"]:
            row["rps_ratio_32_over_1"] = round(row["32"]["rps"] / row["1"]["rps"], 2)
        if "1" in row and row["1"]["p50_ms"]:
            row["service_overhead_p50_ms_at_1"] = round(row["1"]["p50_ms"] - row["floor_ms"], 2)
            row["service_overhead_ratio_p50_at_1"] = round(row["1"]["p50_ms"] / row["floor_ms"], 3)
        result["engines"][engine] = row
    if {"torch", "vllm"} <= set(scores):
        ref, got = scores["torch"], scores["vllm"]
        top_ref, top_got = np.argsort(-ref, axis=1)[:, :10], np.argsort(-got, axis=1)[:, :10]
        result["parity_vllm_vs_torch"] = {
            "users": int(ref.shape[0]),
            "max_abs_score_diff": float(np.abs(ref - got).max()),
            "top10_overlap": float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_ref, top_got)])),
        }
        print(f"parity: {result['parity_vllm_vs_torch']}", flush=True)
    result["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(json.dumps(result["engines"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
