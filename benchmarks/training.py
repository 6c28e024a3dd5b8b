"""Training throughput and peak memory of the demo presets: reference dense mask vs the fast path.

Command (after the demo data steps: `recsys data prepare --source ml-100k ...`, `recsys tokenize cf ...`,
`recsys tokenize semantic ...`, see configs/setrec-t5-demo.yaml):

    nice -n 10 .venv/bin/python benchmarks/training.py --steps 8 --warmup 2

For every demo config (configs/setrec-t5-demo.yaml, configs/setrec-qwen-demo.yaml) and every mask
builder (``model.mask_impl``: ``reference`` = the pair-by-pair dense mask builder, ``fast`` = the
vectorised builder), a fresh subprocess builds the model and times ``--steps`` optimiser steps
(loss, backward, AdamW) on real training batches after ``--warmup`` untimed ones. It reports
training samples per second and the peak memory of that process (``ru_maxrss``, imports included;
on a GPU also ``torch.cuda.max_memory_allocated``), plus the fast/reference speed ratio, in one
JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

# `python benchmarks/training.py` puts benchmarks/ first on sys.path, where tokenizers.py would shadow
# Hugging Face `tokenizers`; drop it (the project is imported as the installed `recsys`).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

CONFIGS = ("configs/setrec-t5-demo.yaml", "configs/setrec-qwen-demo.yaml")
MASKS = ("reference", "fast")


def measure(config: str, mask_impl: str, steps: int, warmup: int, device: str) -> dict:
    """Time ``steps`` training steps of ``config`` with ``mask_impl`` in this process."""
    import torch

    from recsys.pipelines.prepared import PreparedDataset
    from recsys.training.job import build_model, load_train_config
    from recsys.training.setrec_data import SetRecDataModule

    cfg = load_train_config(config, {"model.mask_impl": mask_impl})
    torch.manual_seed(cfg.seed)
    data = PreparedDataset.load(cfg.data)
    loader = SetRecDataModule(data, cfg.max_len, cfg.batch_size, seed=cfg.seed).train_dataloader()
    model, _ = build_model(cfg)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    batches = iter(loader)
    samples, seconds, cpu = 0, 0.0, 0.0
    for step in range(warmup + steps):
        histories, targets = next(batches)
        histories, targets = histories.to(device), targets.to(device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = model.loss(histories, targets, cfg.optim.alpha)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= warmup:
            seconds += time.perf_counter() - start
            cpu += time.process_time() - cpu_start
            samples += len(targets)
    result = {
        "config": config,
        "mask_impl": mask_impl,
        "backbone": cfg.model.backbone,
        "preset": cfg.model.preset,
        "batch_size": cfg.batch_size,
        "max_len": cfg.max_len,
        "tokens_per_item": cfg.model.num_semantic_tokens + 1,
        "timed_steps": steps,
        "samples_per_second": samples / seconds,
        "seconds_per_step": seconds / steps,
        "cpu_seconds_per_step": cpu / steps,
        "samples_per_cpu_second": samples / cpu,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.startswith("cuda"):
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed optimiser steps per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results/training.json")
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "MASK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure(args.one[0], args.one[1], args.steps, args.warmup, args.device)))
        return 0
    cases = []
    for config in CONFIGS:
        for mask in MASKS:
            command = [sys.executable, str(Path(__file__).resolve()), "--one", config, mask, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--device", args.device, "--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            case = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{config} {mask}: {case['samples_per_second']:.1f} samples/s "
                  f"({case['samples_per_cpu_second']:.1f} per CPU second), peak RSS {case['peak_rss_mib']:.0f} MiB")
            cases.append(case)
    ratios = {}
    for config in CONFIGS:
        by_mask = {c["mask_impl"]: c for c in cases if c["config"] == config}
        ratios[config] = {
            "wall": by_mask["fast"]["samples_per_second"] / by_mask["reference"]["samples_per_second"],
            "cpu": by_mask["fast"]["samples_per_cpu_second"] / by_mask["reference"]["samples_per_cpu_second"],
        }
    device = args.device
    if device.startswith("cuda"):
        import torch

        device = torch.cuda.get_device_name()
    report = {
        "benchmark": "training",
        "command": ".venv/bin/python benchmarks/training.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"device": device, "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "platform": platform.platform(), "load_average_1m_at_end": os.getloadavg()[0]},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cases": cases,
        "speedup_fast_over_reference": ratios,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    print(json.dumps(ratios, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
