"""Inference cost of set identifiers against beam-20 token-sequence generation, at equal backbone size.

Command (after `recsys benchmark quality --config configs/bench-industrial.yaml`, which leaves the
prepared dataset and both tokenizers' artifacts in runs/bench/amazon-industrial):

    nice -n 10 .venv/bin/python benchmarks/inference.py --work-dir runs/bench/amazon-industrial \\
        --users 512 --threads 1

The quality benchmark times every method inside its own run, on whatever load the machine has
while it trains the next method. This script isolates the question "how much cheaper is one
forward pass with query tokens than trie-constrained beam search" on an otherwise idle process:

- both models are built on the same catalogue (the work dir's items, CF and text embeddings;
  TIGER over RQ-KMeans ids of the same text embeddings) with the same T5 size, for several
  sizes: the benchmark's ``small`` preset (2 encoder layers, 1 decoder layer, the size the
  quality benchmark trains) and symmetric T5 stacks as in published TIGER/T5 set-ups;
- the weights are random: the cost of a forward pass and of a trie-constrained beam search
  does not depend on their values (the beam always keeps ``beam`` live hypotheses on a
  catalogue of thousands of items);
- the same real test histories go through both, in batches of ``--batch-size`` users, timed
  as serving does it: set identifiers score the whole catalogue (one inner product with the
  cached item-token table) and take the top 20 after hiding history items; TIGER runs beam 20
  with the key/value cache, history items banned at the last code.

Writes benchmarks/results/inference.json: per size, seconds per 1,000 users for each method
(median of ``--repeats``), parameters of both models, and ``speedup`` = beam / set identifiers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# `python benchmarks/inference.py` puts benchmarks/ first on sys.path, where tokenizers.py would shadow
# Hugging Face `tokenizers`; drop it (the project is imported as the installed `recsys`).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

#: T5 sizes compared: name -> (d_model, heads, d_ff, encoder layers, decoder layers).
SIZES = {
    "small-2enc-1dec": (128, 4, 384, 2, 1),
    "small-2enc-2dec": (128, 4, 384, 2, 2),
    "base-4enc-4dec": (256, 4, 1024, 4, 4),
    "t5small-6enc-6dec": (512, 8, 2048, 6, 6),
}


def build_models(work_dir: Path, size: tuple[int, int, int, int, int], beam: int, max_len: int, codes):
    """(set-identifier model, TIGER) of one T5 size over the work dir's catalogue, random weights."""
    import torch

    from recsys.models.setrec import SetRecConfig, SetRecModel
    from recsys.models.tiger import Tiger, TigerConfig
    from recsys.tokenizers.identifiers import build_item_encoder

    d_model, heads, d_ff, enc, dec = size
    torch.manual_seed(0)
    encoder, _ = build_item_encoder(work_dir / "data", work_dir / "cf", work_dir / "semantic", 4, d_model)
    backbone = dict(d_model=d_model, d_kv=d_model // heads, num_heads=heads, d_ff=d_ff, num_layers=enc,
                    num_decoder_layers=dec, vocab_size=8, dropout_rate=0.0)
    setrec = SetRecModel(SetRecConfig(backbone="t5", preset="small", dropout=0.0), encoder, backbone_config=backbone).eval()
    tiger = Tiger(codes, TigerConfig(d_model=d_model, num_heads=heads, d_ff=d_ff, num_layers=enc,
                                     num_decoder_layers=dec, max_history=max_len, beam_size=beam, dropout=0.0)).eval()
    return setrec, tiger


def parameters(module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def time_setrec(model, histories: list[list[int]], batch_size: int, max_len: int, k: int) -> float:
    """Seconds for all users: one backbone pass, catalogue inner product, history hidden, top-k."""
    import torch

    from recsys.evaluation.metrics import exclude_items
    from recsys.models.setrec import pad_histories

    table = model.item_table().detach()
    start = time.perf_counter()
    with torch.no_grad():
        for begin in range(0, len(histories), batch_size):
            part = histories[begin : begin + batch_size]
            scores = model.score_all(pad_histories(part, max_len), 0.5, table=table)
            exclude_items(scores, part)
            scores.topk(k, dim=1)
    return time.perf_counter() - start


def time_tiger(model, histories: list[list[int]], batch_size: int, k: int) -> float:
    """Seconds for all users: trie-constrained beam search (beam = model.config.beam_size), history banned."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        for begin in range(0, len(histories), batch_size):
            part = histories[begin : begin + batch_size]
            model.rank(part, k, part)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="runs/bench/amazon-industrial",
                        help="quality-benchmark work dir holding data/, cf/ and semantic/")
    parser.add_argument("--users", type=int, default=512, help="test users timed per method and size")
    parser.add_argument("--batch-size", type=int, default=256, help="users per model call")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--max-len", type=int, default=20, help="history items read by both models")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the quality benchmark uses 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per method; the median is kept")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--levels", type=int, default=3, help="RQ-KMeans levels of TIGER's ids")
    parser.add_argument("--codes", type=int, default=256, help="centroids per RQ-KMeans level")
    parser.add_argument("--out", default="benchmarks/results/inference.json")
    args = parser.parse_args(argv)

    import torch

    from recsys.pipelines.prepared import PreparedDataset
    from recsys.tokenizers.semantic import load_text_embeddings
    from recsys.tokenizers.semantic_ids import build_semantic_ids

    torch.set_num_threads(args.threads)
    work_dir = Path(args.work_dir)
    for part in ("data", "cf", "semantic"):
        if not (work_dir / part).is_dir():
            sys.exit(f"{work_dir / part} is missing: run `recsys benchmark quality --config ...` first, "
                     "or point --work-dir at a folder with data/, cf/ and semantic/")
    data = PreparedDataset.load(work_dir / "data")
    examples = data.eval_examples("test")
    histories = [h[-args.max_len :] for h in examples.histories[: args.users] if h]
    built = build_semantic_ids(load_text_embeddings(work_dir / "semantic", data.num_items),
                               levels=args.levels, codes=args.codes, seed=0)
    codes = torch.as_tensor(built.codes)
    k = 20
    results = []
    for name in args.sizes:
        setrec, tiger = build_models(work_dir, SIZES[name], args.beam, args.max_len, codes)
        time_setrec(setrec, histories[: args.batch_size], args.batch_size, args.max_len, k)  # warm-up
        time_tiger(tiger, histories[: args.batch_size], args.batch_size, k)
        set_s = statistics.median(time_setrec(setrec, histories, args.batch_size, args.max_len, k) for _ in range(args.repeats))
        beam_s = statistics.median(time_tiger(tiger, histories, args.batch_size, k) for _ in range(args.repeats))
        d_model, heads, d_ff, enc, dec = SIZES[name]
        row = {
            "size": name,
            "backbone": {"d_model": d_model, "num_heads": heads, "d_ff": d_ff, "num_layers": enc, "num_decoder_layers": dec},
            "setrec_parameters": parameters(setrec),
            "tiger_parameters": parameters(tiger),
            "setrec_seconds_per_1000_users": 1000 * set_s / len(histories),
            "tiger_seconds_per_1000_users": 1000 * beam_s / len(histories),
            "speedup": beam_s / set_s,
        }
        results.append(row)
        print(f"{name}: set identifiers {row['setrec_seconds_per_1000_users']:.2f} s / 1000 users, "
              f"beam {args.beam} {row['tiger_seconds_per_1000_users']:.2f} s -> {row['speedup']:.1f}x", flush=True)
    report = {
        "benchmark": "inference",
        "dataset": data.manifest.get("source", {}).get("name") if isinstance(data.manifest.get("source"), dict) else str(work_dir),
        "num_items": data.num_items,
        "users": len(histories),
        "batch_size": args.batch_size,
        "beam": args.beam,
        "max_len": args.max_len,
        "threads": args.threads,
        "repeats": args.repeats,
        "semantic_id_shape": list(codes.shape),
        "results": results,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "device": "cpu"},
        "command": "python benchmarks/inference.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
