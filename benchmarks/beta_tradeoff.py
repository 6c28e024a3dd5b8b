"""Warm and cold ranking quality of one set-identifier bundle for every beta of a grid, valid and test.

Command (after `recsys benchmark quality --config configs/bench-industrial.yaml`):

    nice -n 10 .venv/bin/python benchmarks/beta_tradeoff.py \\
        --bundle runs/bench/amazon-industrial/models/setrec-seed0/bundle \\
        --data runs/bench/amazon-industrial/data --out benchmarks/results/beta-tradeoff-amazon-industrial.json

Beta weighs the CF dimension against the semantic ones: score = (1 - beta) s_0 + beta sum_k s_k.
Items without a train interaction share one CF token, so only the semantic dimensions can lift a
cold item, and only when beta > 0. The training job picks beta on valid NDCG@10 over all users;
this script shows what that choice costs or gains on cold gold items, per beta, on both splits.
It is a diagnostic: the reported model keeps the beta picked on valid, never one read off test.

Writes JSON: for each split and beta, NDCG@10 and Recall@20 over all users, Recall@20 over users
whose gold item is warm and over those whose gold item is cold, and the user counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# `python benchmarks/beta_tradeoff.py` puts benchmarks/ first on sys.path, where tokenizers.py would
# shadow Hugging Face `tokenizers`; drop it (the project is imported as the installed `recsys`).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

GRID = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)


def split_tradeoff(model, data, split: str, grid, batch_size: int, is_cold) -> dict:
    """Per-beta metrics of ``split`` from one backbone pass per batch (dimension scores reused)."""
    import torch

    from recsys.evaluation.metrics import exclude_items, pad_gold, per_user_metrics, set_ranks
    from recsys.models.setrec import pad_histories

    examples = data.eval_examples(split)
    table = model.item_table().detach()
    dims = []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            dims.append(model.dimension_scores(pad_histories(examples.histories[start : start + batch_size], model.bundle.max_len), table=table))
    dims = torch.cat(dims)
    gold = pad_gold(examples.gold)
    real = gold >= 0
    cold = real & is_cold[gold.clamp(min=0)]
    warm = real & ~cold
    weights = model.dimension_weights
    rows = []
    for beta in grid:
        w = weights(beta).to(dims)
        scores = (dims * w[None, :, None]).sum(dim=1)
        exclude_items(scores, examples.histories, keep=gold)
        ranks = set_ranks(scores, gold)
        row = {"beta": beta}
        for name, mask in (("all", real), ("warm", warm), ("cold", cold)):
            metrics = per_user_metrics(ranks, mask, (10, 20))
            users = ~torch.isnan(metrics["recall@20"])
            row[f"{name}/users"] = int(users.sum())
            row[f"{name}/recall@20"] = float(metrics["recall@20"][users].mean()) if users.any() else None
            if name == "all":
                row["all/ndcg@10"] = float(metrics["ndcg@10"][users].mean())
        rows.append(row)
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="set-identifier bundle (recsys train)")
    parser.add_argument("--data", required=True, help="the prepared dataset it was trained on")
    parser.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    import torch

    from recsys.bundle import load_bundle
    from recsys.evaluation.groups import ItemGroups
    from recsys.pipelines.prepared import PreparedDataset

    torch.set_num_threads(args.threads)
    data = PreparedDataset.load(args.data)
    model = load_bundle(args.bundle).eval()
    is_cold = torch.from_numpy(ItemGroups.from_dataset(data).is_cold)
    report = {
        "benchmark": "beta_tradeoff",
        "bundle": args.bundle,
        "data": args.data,
        "chosen_beta": float(model.bundle.beta),
        "splits": {split: split_tradeoff(model, data, split, args.grid, args.batch_size, is_cold) for split in ("valid", "test")},
        "command": "python benchmarks/beta_tradeoff.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    for split, body in report["splits"].items():
        for row in body["rows"]:
            print(f"{split} beta {row['beta']:.1f}: NDCG@10 {row['all/ndcg@10']:.4f}  Recall@20 warm "
                  f"{row['warm/recall@20']:.4f} cold {row['cold/recall@20'] if row['cold/recall@20'] is not None else float('nan'):.4f} "
                  f"({row['cold/users']} cold users)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
