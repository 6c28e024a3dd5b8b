"""How much of the text neighbourhood of each item survives in a bundle's item tokens.

Command (after `recsys benchmark quality --config configs/bench-industrial.yaml`):

    nice -n 10 .venv/bin/python benchmarks/token_geometry.py \\
        --bundle runs/bench/amazon-industrial/models/setrec-seed0/bundle \\
        --work-dir runs/bench/amazon-industrial --out benchmarks/results/token-geometry-amazon-industrial.json

For every item, the 10 nearest other items by cosine of the frozen text embeddings (the
reference) are compared with its 10 nearest by the bundle's tokens: the concatenated
semantic tokens (inner product, which is what ranking uses, and cosine) and the CF token.
The overlap (shared neighbours / 10) is averaged over all, warm and cold items. A semantic
token table that kept the text geometry would score near 1 under cosine; 10 random
neighbours would score about 10 / num_items. It is a diagnostic of why cold items are (not)
reached through their text; it trains nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# `python benchmarks/token_geometry.py` puts benchmarks/ first on sys.path, where tokenizers.py would
# shadow Hugging Face `tokenizers`; drop it (the project is imported as the installed `recsys`).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def neighbour_overlap(reference, candidate, k: int = 10):
    """(num_items,) share of each row's top-k neighbours (self excluded) that two similarity matrices agree on."""
    import torch

    ref, cand = reference.clone(), candidate.clone()
    ref.fill_diagonal_(float("-inf"))
    cand.fill_diagonal_(float("-inf"))
    top_ref = ref.topk(k, dim=1).indices
    top_cand = cand.topk(k, dim=1).indices
    shared = (top_ref[:, :, None] == top_cand[:, None, :]).any(dim=2).sum(dim=1)
    return shared.to(torch.float32) / k


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="set-identifier bundle directory")
    parser.add_argument("--work-dir", required=True, help="benchmark work_dir holding data/ and semantic/")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    import torch

    from recsys.bundle import load_bundle
    from recsys.evaluation.groups import ItemGroups
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.tokenizers.semantic import load_text_embeddings

    torch.set_num_threads(1)
    work = Path(args.work_dir)
    data = PreparedDataset.load(work / "data")
    cold = torch.from_numpy(ItemGroups.from_dataset(data).is_cold)
    text = torch.nn.functional.normalize(load_text_embeddings(work / "semantic", data.num_items), dim=1)
    model = load_bundle(args.bundle).eval()
    with torch.no_grad():
        table = model.item_table().detach().float()
    semantic = table[:, 1:].reshape(table.shape[0], -1)
    views = {
        "semantic_inner_product": semantic @ semantic.T,
        "semantic_cosine": (lambda u: u @ u.T)(torch.nn.functional.normalize(semantic, dim=1)),
        "cf_inner_product": table[:, 0] @ table[:, 0].T,
    }
    reference = text @ text.T
    rows = {}
    for name, similarity in views.items():
        overlap = neighbour_overlap(reference, similarity, args.k)
        rows[name] = {"all": float(overlap.mean()), "warm": float(overlap[~cold].mean()),
                      "cold": float(overlap[cold].mean()) if cold.any() else None}
        print(f"{name}: text {args.k}-NN overlap all {rows[name]['all']:.3f} warm {rows[name]['warm']:.3f} "
              f"cold {rows[name]['cold'] if rows[name]['cold'] is None else round(rows[name]['cold'], 3)}")
    report = {"benchmark": "token_geometry", "bundle": args.bundle, "work_dir": args.work_dir, "k": args.k,
              "num_items": int(table.shape[0]), "cold_items": int(cold.sum()), "random_overlap": args.k / table.shape[0],
              "overlap": rows, "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])])}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
