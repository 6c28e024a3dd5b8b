"""Benchmark the item tokenizers: text embedding, residual k-means ids, SASRec on ML-100K.

Command (everything; about 25-40 minutes on a shared 2-core machine):
    nice -n 10 .venv/bin/python benchmarks/tokenizers.py
    .venv/bin/python benchmarks/tokenizers.py --phases embed rqkmeans --items 200000   # smaller

Each phase runs in its own subprocess, so its peak RSS is its own (``ru_maxrss`` of the
child, read with ``os.wait4``), and compares against a reference in the same run:

- embed: the item texts of ML-100K (1,682) through the bundled all-MiniLM-L6-v2, first with
  an empty embedding cache (cold: every text goes through the model), then again with the
  cache it filled (warm: no text does); texts/s of both and their ratio.
- rqkmeans: ``build_semantic_ids`` on ``--items`` synthetic embeddings (default 1M x 384, a
  Gaussian mixture with 4,096 centres) with the default 3 levels x 256 codes plus the
  extra digit, FAISS path: seconds and peak RSS; and the numpy reference against the FAISS
  path on the first ``--reference-items`` of them (seconds of both; share of items whose
  level-1 code and whose whole prefix agree).
- sasrec: ML-100K prepared with no k-core filter (943 users, 1,682 items), leave-one-out by
  time, full ranking over all items, history items kept rankable (RecBole's full-sort
  protocol). ``fit_sasrec`` with the SASRecConfig defaults (the fast "windows" path): valid
  and test NDCG@10 / Recall@10, seconds per epoch, epochs. The reference "prefixes" path
  (one sample per target, RecBole's batching) is timed on ``--reference-steps`` training
  steps of the same model and extrapolated to one epoch (its seconds per epoch are an
  estimate from those steps, labelled so).

Results go to ``benchmarks/results/tokenizers.json``; the numbers and machine go to
``benchmarks/RESULTS.md`` by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# Hugging Face ``tokenizers`` library (ARCHITECTURE.md section 1): take that folder off.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tokenizers.json"
PHASES = ("embed", "rqkmeans", "sasrec")
GIB = 1024**3


def _ml100k(workdir: Path) -> Path:
    """ML-100K prepared as in issue 3: no k-core filter, leave-one-out split."""
    from recsys.pipelines.prepare import PrepareConfig, prepare

    out = workdir / "ml100k-nokcore"
    if not (out / "manifest.json").is_file():
        prepare(PrepareConfig(source="ml-100k", out=str(out), kcore=0, split="loo"))
    return out


def phase_embed(args: argparse.Namespace, workdir: Path) -> dict:
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.tokenizers.text_encoder import EmbeddingCache, TextEncoder, embed_texts

    texts = PreparedDataset.load(_ml100k(workdir)).items["text"].to_list()
    encoder = TextEncoder()
    encoder.encode_batch(["warm up the model"])
    cache_root = workdir / "embedding-cache"
    cold_vectors, cold = embed_texts(texts, encoder, EmbeddingCache(cache_root, encoder.fingerprint, encoder.dim), progress=False)
    warm_vectors, warm = embed_texts(texts, encoder, EmbeddingCache(cache_root, encoder.fingerprint, encoder.dim), progress=False)
    assert warm.encoded == 0 and (warm_vectors == cold_vectors).all(), "the warm run must come from the cache"
    return {
        "embed_texts": len(texts),
        "embed_unique_texts": cold.unique_texts,
        "embed_batch_size": encoder.config.batch_size,
        "embed_seconds_cold": round(cold.seconds, 3),
        "embed_seconds_warm": round(warm.seconds, 3),
        "embed_texts_per_s_cold": round(len(texts) / cold.seconds, 1),
        "embed_texts_per_s_warm": round(len(texts) / warm.seconds, 1),
        "embed_warm_speedup": round(cold.seconds / warm.seconds, 1),
    }


def _mixture(n: int, dim: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4096, dim), dtype=np.float32)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= 0.5
    for start in range(0, n, 65536):
        x[start : start + 65536] += centres[rng.integers(0, 4096, min(65536, n - start))]
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # unit vectors, like sentence embeddings
    return x


def phase_rqkmeans(args: argparse.Namespace, workdir: Path) -> dict:
    import numpy as np
    import torch

    from recsys.tokenizers.semantic_ids import build_semantic_ids

    x = _mixture(args.items, args.dim)
    start = time.perf_counter()
    ids = build_semantic_ids(x, levels=3, codes=256, seed=0, backend="faiss")
    seconds = time.perf_counter() - start
    unique = int(torch.unique(ids.codes, dim=0).shape[0])
    small = np.ascontiguousarray(x[: args.reference_items])
    del x
    timings = {}
    codes = {}
    for backend in ("numpy", "faiss"):
        t = time.perf_counter()
        codes[backend] = build_semantic_ids(small, levels=3, codes=256, seed=0, backend=backend).codes
        timings[backend] = time.perf_counter() - t
    same = codes["numpy"][:, :3] == codes["faiss"][:, :3]
    agree = float(same.all(dim=1).float().mean())
    agree_level1 = float(same[:, 0].float().mean())
    return {
        "rqkmeans_items": args.items,
        "rqkmeans_dim": args.dim,
        "rqkmeans_levels_x_codes": "3x256 + extra digit",
        "rqkmeans_1m_seconds" if args.items == 1_000_000 else "rqkmeans_seconds": round(seconds, 2),
        "rqkmeans_ids_unique": unique == args.items,
        "rqkmeans_collision_rate": round(ids.stats["collision_rate"], 5),
        "rqkmeans_max_items_per_prefix": ids.stats["max_items_per_prefix"],
        "rqkmeans_utilisation_per_level": [round(u, 4) for u in ids.stats["utilisation_per_level"]],
        "rqkmeans_reference_items": args.reference_items,
        "rqkmeans_reference_numpy_seconds": round(timings["numpy"], 2),
        "rqkmeans_reference_faiss_seconds": round(timings["faiss"], 2),
        "rqkmeans_faiss_speedup_vs_numpy": round(timings["numpy"] / timings["faiss"], 2),
        "rqkmeans_numpy_faiss_prefix_agreement": round(agree, 4),
        "rqkmeans_numpy_faiss_level1_agreement": round(agree_level1, 4),
    }


def phase_sasrec(args: argparse.Namespace, workdir: Path) -> dict:
    import dataclasses

    import numpy as np
    import torch

    from recsys.models.sasrec import SASRec, SASRecConfig
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.training.sasrec import PrefixBatches, fit_sasrec, sasrec_loss

    data = PreparedDataset.load(_ml100k(workdir))
    config = SASRecConfig(accelerator="cpu")
    # the reference batching, timed on a few steps of the same model and optimiser
    torch.manual_seed(0)
    model = SASRec(data.num_items, config).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    prefixes = PrefixBatches(data.train_sequences(), config.max_len)
    order = np.random.default_rng(0).permutation(len(prefixes))
    start = time.perf_counter()
    for step in range(args.reference_steps):
        batch = order[step * config.batch_size : (step + 1) * config.batch_size].tolist()
        loss = sasrec_loss(model, *prefixes(batch))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    per_step = (time.perf_counter() - start) / args.reference_steps
    prefix_steps = -(-len(prefixes) // config.batch_size)
    result = fit_sasrec(data, config, log_to_mlflow=False)
    train_seconds = float(np.median(result.epoch_seconds))
    return {
        "sasrec_dataset": "ML-100K, no k-core (943 users, 1,682 items), leave-one-out by time, full ranking, history kept rankable",
        "sasrec_config": dataclasses.asdict(config),
        "sasrec_users": data.num_users,
        "sasrec_items": data.num_items,
        "sasrec_ml100k_valid_ndcg@10": round(result.valid_metrics["ndcg@10"], 4),
        "sasrec_ml100k_valid_recall@10": round(result.valid_metrics["recall@10"], 4),
        "sasrec_ml100k_test_ndcg@10": round(result.test_metrics["ndcg@10"], 4),
        "sasrec_ml100k_test_recall@10": round(result.test_metrics["recall@10"], 4),
        "sasrec_ml100k_best_epoch": result.best_epoch,
        "sasrec_ml100k_epochs_run": result.epochs_run,
        "sasrec_ml100k_seconds_per_epoch": round(result.seconds_per_epoch, 2),
        "sasrec_ml100k_median_seconds_per_epoch": round(train_seconds, 2),
        "sasrec_ml100k_total_train_seconds": round(float(sum(result.epoch_seconds)), 1),
        "sasrec_prefix_reference_seconds_per_step": round(per_step, 4),
        "sasrec_prefix_reference_steps_timed": args.reference_steps,
        "sasrec_prefix_reference_seconds_per_epoch_estimate": round(per_step * prefix_steps, 1),
        "sasrec_windows_speedup_vs_prefixes_estimate": round(per_step * prefix_steps / train_seconds, 1),
    }


RUNNERS = {"embed": phase_embed, "rqkmeans": phase_rqkmeans, "sasrec": phase_sasrec}


def run_phase(phase: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Run one phase in a child process; its JSON result plus its peak RSS."""
    command = [sys.executable, __file__, "--phase", phase, "--workdir", str(workdir), "--items", str(args.items),
               "--dim", str(args.dim), "--reference-items", str(args.reference_items), "--reference-steps", str(args.reference_steps), "--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, cwd=ROOT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"phase {phase} failed (status {status}); output:\n{output[-2000:]}")
    report = json.loads(output.strip().splitlines()[-1])
    report[f"{phase}_peak_rss_gib"] = round(usage.ru_maxrss * 1024 / GIB, 3)
    report[f"{phase}_phase_wall_seconds"] = round(time.perf_counter() - start, 1)
    if phase == "rqkmeans" and args.items == 1_000_000:
        report["rqkmeans_1m_peak_rss_gib"] = report["rqkmeans_peak_rss_gib"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--items", type=int, default=1_000_000, help="synthetic items for residual k-means (default 1M)")
    parser.add_argument("--dim", type=int, default=384, help="their dimension (default 384)")
    parser.add_argument("--reference-items", type=int, default=20_000, help="items for the numpy-vs-FAISS comparison")
    parser.add_argument("--reference-steps", type=int, default=20, help="timed steps of SASRec's prefix reference")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per phase (default 1: the machine is shared)")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(RUNNERS[args.phase](args, Path(args.workdir))))
        return
    with tempfile.TemporaryDirectory(prefix="setrec-bench-tok-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results_path = Path(args.results)
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB)} GiB"
        command = "nice -n 10 .venv/bin/python benchmarks/tokenizers.py " + " ".join(sys.argv[1:])
        for phase in args.phases:
            load_before = os.getloadavg()[0]
            report = run_phase(phase, args, workdir)
            report[f"{phase}_measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            report[f"{phase}_machine"] = machine
            report[f"{phase}_command"] = command
            report[f"{phase}_load_average_1min_before_after"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
            print(json.dumps(report, indent=2), flush=True)
            # merged into the file after every phase (re-read first: partial runs keep the other phases' numbers)
            result = json.loads(results_path.read_text()) if results_path.is_file() else {}
            result.update({"python": platform.python_version(), **report})
            results_path.parent.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results -> {results_path}")


if __name__ == "__main__":
    main()
