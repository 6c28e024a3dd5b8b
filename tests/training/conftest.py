"""Fixtures of the training-job tests: a real slice of amazon-industrial with its CF and text artifacts.

The slice keeps the first users of ../shared/data/amazon-industrial (real histories, real item
texts) and prepares it with the real pipeline. Its artifacts are made by the real tokenizer
code: text embeddings from a tiny random BERT with the bundled MiniLM tokenizer (fast on CPU),
CF embeddings from a truncated SVD of the train interaction matrix, imported with
``recsys.tokenizers.cf.import_cf_embeddings``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SLICE_USERS = 240


def _write_slice(source: Path, out: Path, num_users: int) -> Path:
    """interactions.csv of the first ``num_users`` users, items.jsonl of their items (+ 5 catalogue-only items)."""
    import polars as pl

    out.mkdir(parents=True, exist_ok=True)
    inter = pl.read_csv(source / "interactions.csv", schema_overrides={"user_id": pl.String, "item_id": pl.String})
    users = inter["user_id"].unique(maintain_order=True)[:num_users]
    part = inter.filter(pl.col("user_id").is_in(users.implode()))
    part.write_csv(out / "interactions.csv")
    used = set(part["item_id"].to_list())
    kept, extra = [], 0
    with open(source / "items.jsonl") as handle:
        for line in handle:
            row = json.loads(line)
            if str(row["item_id"]) in used:
                kept.append(line)
            elif extra < 5:
                kept.append(line)
                extra += 1
    (out / "items.jsonl").write_text("".join(kept))
    return out


def _tiny_bert(path: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from recsys.tokenizers.text_encoder import default_encoder_path

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(default_encoder_path())).save_pretrained(path)
    return path


def _svd_cf(data_dir: Path, out_dir: Path, dim: int = 16) -> Path:
    """CF embeddings: item factors of a truncated SVD of the train user-item matrix (zero rows for unseen items)."""
    import polars as pl

    from recsys.pipelines.prepared import PreparedDataset
    from recsys.tokenizers.cf import import_cf_embeddings

    data = PreparedDataset.load(data_dir)
    train = data.interactions.filter(pl.col("split") == "train")
    matrix = np.zeros((data.num_users, data.num_items), dtype=np.float32)
    matrix[train["user_idx"].to_numpy(), train["item_idx"].to_numpy()] = 1.0
    _, s, vt = np.linalg.svd(matrix, full_matrices=False)
    factors = (vt[:dim].T * np.sqrt(s[:dim])).astype(np.float32)
    factors[matrix.sum(0) == 0] = 0.0
    npy = out_dir.parent / "svd_items.npy"
    np.save(npy, factors)
    import_cf_embeddings(npy, data_dir, out_dir)
    return out_dir


@pytest.fixture(scope="session")
def industrial_artifacts(tmp_path_factory) -> dict[str, Path]:
    """{"data", "cf", "semantic"}: a prepared slice of amazon-industrial and its tokenizer artifacts."""
    source = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "amazon-industrial"
    if not source.is_dir():
        pytest.skip(f"{source} is absent (a fresh clone has no ../shared)")
    from recsys.pipelines.prepare import PrepareConfig, prepare
    from recsys.tokenizers.semantic import SemanticConfig, build_text_embeddings
    from recsys.tokenizers.text_encoder import TextEncoder, TextEncoderConfig

    root = tmp_path_factory.mktemp("industrial")
    raw = _write_slice(source, root / "raw", SLICE_USERS)
    data = root / "data"
    prepare(PrepareConfig(source=str(raw), out=str(data), kcore=0, split="loo"))
    bert = _tiny_bert(root / "tiny-bert")
    semantic = root / "semantic"
    encoder = TextEncoder(TextEncoderConfig(path=str(bert), max_length=64))
    build_text_embeddings(data, semantic, SemanticConfig(use_cache=False, progress=False), encoder=encoder)
    cf = _svd_cf(data, root / "cf")
    return {"data": data, "cf": cf, "semantic": semantic}
