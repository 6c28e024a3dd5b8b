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
  (non-200 answers and transport failures), and the mean micro-batch size from /metrics.

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
    floors = {"floor_ms": round(statistics.median(single), 3), "floor_batch32_ms_per_query": round(statistics.median(batched), 3)}
    return floors, scores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bundle: Path, engine: str, port: int, args) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "recsys", "serve", "--bundle", str(bundle), "--engine", engine, "--port", str(port),
        "--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "4096", "--threads", str(args.threads),
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


class _Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator shares the CPU with the server,
    so it must cost far less per request than the server does (httpx costs several ms here)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
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


async def load(port: int, histories: list[list[str]], concurrency: int, duration: float, warmup: float) -> dict:
    """Closed-loop load: ``concurrency`` clients, each sending its next request when answered."""
    latencies: list[float] = []
    errors = 0
    counter = 0
    bodies = [json.dumps({"history": h, "k": 10}).encode() for h in histories]
    measuring_from = time.perf_counter() + warmup
    stop_at = measuring_from + duration

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

    await asyncio.gather(*(worker(c) for c in range(concurrency)))
    values = np.asarray(latencies)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2) if values.size else None,
        "p95_ms": round(float(np.percentile(values, 95)), 2) if values.size else None,
        "p99_ms": round(float(np.percentile(values, 99)), 2) if values.size else None,
        "rps": round(counter / duration, 1),
        "errors": errors,
        "requests": counter,
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
    """A Qwen 'small' bundle at demo sizes (N=2, P=1, R=1, max_len 10) when none is given."""
    sys.path.insert(0, str(ROOT))
    from tests.serving.bundles import BundleSpec, build_bundle

    out = ROOT / "runs" / "serving" / "bundle-qwen-demo"
    if not (out / "manifest.json").is_file():
        spec = BundleSpec(backbone="qwen", preset="small", num_semantic_tokens=2, num_prompt_tokens=1, num_response_tokens=1,
                          steps=150, batch_size=64, max_len=10, lr=2e-3)
        build_bundle(args.data, out, spec, args.semantic, args.cf)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: build runs/serving/bundle-qwen-demo)")
    parser.add_argument("--data", type=Path, default=ROOT / "runs/data/ml-100k", help="prepared dataset of the request histories")
    parser.add_argument("--cf", type=Path, default=ROOT / "runs/tokenizers/ml-100k/cf", help="CF artifact (only to build the bundle)")
    parser.add_argument("--semantic", type=Path, default=ROOT / "runs/tokenizers/ml-100k/semantic", help="text artifact (only to build the bundle)")
    parser.add_argument("--engines", nargs="+", default=["torch", "vllm"], choices=["torch", "vllm"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per concurrency")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--floor-runs", type=int, default=200)
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
    manifest = json.loads((bundle / "manifest.json").read_text())
    result = {
        "machine": args.machine,
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
                sum_before, count_before = batch_totals(url)
                stats = asyncio.run(load(port, histories, concurrency, args.duration, args.warmup))
                sum_after, count_after = batch_totals(url)
                batches = count_after - count_before
                stats["mean_batch_size"] = round((sum_after - sum_before) / batches, 2) if batches else None
                row[str(concurrency)] = stats
                print(f"[{engine}] concurrency {concurrency}: {stats}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
        if "1" in row and "32" in row and row["1"]["rps"]:
            row["rps_ratio_32_over_1"] = round(row["32"]["rps"] / row["1"]["rps"], 2)
        if "1" in row and row["1"]["p50_ms"]:
            row["service_overhead_p50_ms_at_1"] = round(row["1"]["p50_ms"] - row["floor_ms"], 2)
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(json.dumps(result["engines"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
