"""Training throughput and peak memory of the demo presets: all-prefix (packed) vs one prefix per sample,
and the reference dense mask vs the fast one.

Command (after the demo data steps: `recsys data prepare --source ml-100k ...`, `recsys tokenize cf ...`,
`recsys tokenize semantic ...`, see configs/setrec-t5-demo.yaml):

    nice -n 10 .venv/bin/python benchmarks/training.py --steps 8 --warmup 2

For every demo config (configs/setrec-t5-demo.yaml, configs/setrec-qwen-demo.yaml) three cases run, each
in a fresh subprocess that builds the model and times ``--steps`` optimiser steps (loss, backward, AdamW)
on real training batches after ``--warmup`` untimed ones:

- ``one_prefix`` + ``reference`` mask (the pair-by-pair dense mask builder),
- ``one_prefix`` + ``fast`` mask (the vectorised builder),
- ``all_prefix`` + ``fast`` mask: windows of ``max_len`` items, every target of a window in one pass.

The model is the same in all three. The one-prefix batch holds ``--batch`` samples (256, the one-prefix
default before all-prefix training); the all-prefix batch holds as many windows as give the same number
of backbone token slots per step (``--packed-batch`` overrides), so both run at about the same activation
memory; peak memory is reported per case. Reported: training targets per
second (a target = one (history, next item) loss term) and per CPU second, peak memory (``ru_maxrss``,
imports included; on a GPU also ``torch.cuda.max_memory_allocated``) and the ratios: all-prefix over
one-prefix targets/s (``packed_over_per_prefix_targets_per_s``: the smaller of the two backbones; per
config under ``packed_over_per_prefix_targets_per_s_by_config``) and the fast/reference mask ratio.
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
CASES = (("one_prefix", "reference"), ("one_prefix", "fast"), ("all_prefix", "fast"))


def slots_per_sample(cfg, train_mode: str) -> int:
    """Backbone token slots (encoder + decoder) of one training sample of ``cfg`` under ``train_mode``."""
    m = cfg.model
    k = m.num_semantic_tokens + 1
    if train_mode == "one_prefix":
        return m.num_prompt_tokens + cfg.max_len * k + m.num_response_tokens + k
    return m.num_prompt_tokens + cfg.max_len * k + cfg.max_len * (m.num_response_tokens + k)


def measure(config: str, mask_impl: str, steps: int, warmup: int, device: str, train_mode: str = "one_prefix",
            packed_batch: int = 0, batch: int = 256, max_len: int = 0) -> dict:
    """Time ``steps`` training steps of ``config`` with ``mask_impl`` and ``train_mode`` in this process."""
    import torch

    from recsys.pipelines.prepared import PreparedDataset
    from recsys.training.job import build_model, load_train_config
    from recsys.training.setrec_data import SetRecDataModule

    overrides = {"model.mask_impl": mask_impl, "train_mode": train_mode, "batch_size": batch}
    if max_len:
        overrides["max_len"] = max_len
    cfg = load_train_config(config, overrides)
    torch.manual_seed(cfg.seed)
    data = PreparedDataset.load(cfg.data)
    batch_size = cfg.batch_size
    if train_mode == "all_prefix":
        same_slots = round(cfg.batch_size * slots_per_sample(cfg, "one_prefix") / slots_per_sample(cfg, "all_prefix"))
        batch_size = packed_batch or max(1, same_slots)
    loader = SetRecDataModule(data, cfg.max_len, batch_size, seed=cfg.seed, train_mode=train_mode).train_dataloader()
    model, _ = build_model(cfg)
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    batches = iter(loader)
    targets_seen, seconds, cpu = 0, 0.0, 0.0
    for step in range(warmup + steps):
        histories, targets = next(batches)
        histories, targets = histories.to(device), targets.to(device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        out = model.loss(histories, targets, cfg.optim.alpha)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= warmup:
            seconds += time.perf_counter() - start
            cpu += time.process_time() - cpu_start
            targets_seen += int(out["targets"])
    result = {
        "config": config,
        "mask_impl": mask_impl,
        "train_mode": train_mode,
        "backbone": cfg.model.backbone,
        "preset": cfg.model.preset,
        "batch_size": batch_size,
        "slots_per_batch": batch_size * slots_per_sample(cfg, train_mode),
        "max_len": cfg.max_len,
        "tokens_per_item": cfg.model.num_semantic_tokens + 1,
        "timed_steps": steps,
        "targets_per_second": targets_seen / seconds,
        "targets_per_cpu_second": targets_seen / cpu,
        "seconds_per_step": seconds / steps,
        "cpu_seconds_per_step": cpu / steps,
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
    parser.add_argument("--batch", type=int, default=256, help="one-prefix samples per step")
    parser.add_argument("--max-len", type=int, default=0, help="history items per sample/window (0: the config's)")
    parser.add_argument("--packed-batch", type=int, default=0,
                        help="windows per all-prefix batch (0: as many as match the one-prefix batch's token slots)")
    parser.add_argument("--out", default="benchmarks/results/training.json")
    parser.add_argument("--one", nargs=3, metavar=("CONFIG", "MASK", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        config, mask, mode = args.one
        print(json.dumps(measure(config, mask, args.steps, args.warmup, args.device, mode, args.packed_batch, args.batch,
                                 args.max_len)))
        return 0
    load_at_start = os.getloadavg()[0]
    cases = []
    for config in CONFIGS:
        for mode, mask in CASES:
            command = [sys.executable, str(Path(__file__).resolve()), "--one", config, mask, mode, "--steps", str(args.steps),
                       "--warmup", str(args.warmup), "--device", args.device, "--threads", str(args.threads),
                       "--packed-batch", str(args.packed_batch), "--batch", str(args.batch), "--max-len", str(args.max_len)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            case = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{config} {mode} {mask}: {case['targets_per_second']:.1f} targets/s "
                  f"({case['targets_per_cpu_second']:.1f} per CPU second), batch {case['batch_size']}, "
                  f"peak RSS {case['peak_rss_mib']:.0f} MiB")
            cases.append(case)
    mask_ratios, packed = {}, {}
    for config in CONFIGS:
        by_case = {(c["train_mode"], c["mask_impl"]): c for c in cases if c["config"] == config}
        reference, fast, all_prefix = (by_case[case] for case in CASES)
        mask_ratios[config] = {
            "wall": fast["targets_per_second"] / reference["targets_per_second"],
            "cpu": fast["targets_per_cpu_second"] / reference["targets_per_cpu_second"],
        }
        packed[config] = {
            "wall": all_prefix["targets_per_second"] / fast["targets_per_second"],
            "cpu": all_prefix["targets_per_cpu_second"] / fast["targets_per_cpu_second"],
            "peak_rss_mib": {"all_prefix": all_prefix["peak_rss_mib"], "one_prefix": fast["peak_rss_mib"]},
        }
    device = args.device
    if device.startswith("cuda"):
        import torch

        device = torch.cuda.get_device_name()
    report = {
        "benchmark": "training",
        "command": ".venv/bin/python benchmarks/training.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"device": device, "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "platform": platform.platform(), "load_average_1m_at_start": load_at_start,
                    "load_average_1m_at_end": os.getloadavg()[0]},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cases": cases,
        "packed_over_per_prefix_targets_per_s": min(r["wall"] for r in packed.values()),
        "packed_over_per_prefix_targets_per_s_by_config": packed,
        "speedup_fast_over_reference": mask_ratios,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    print(json.dumps({"packed_over_per_prefix": packed, "fast_over_reference": mask_ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
