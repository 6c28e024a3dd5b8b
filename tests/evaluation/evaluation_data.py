"""Helpers of the evaluation tests (imported by name: tests/ is not a package). Tiny datasets made in the test: a raw source for ``recsys data prepare`` and prepared tables."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl

WORDS = ("drill", "saw", "glove", "caliper", "staple", "brush", "lens", "relay", "valve", "clamp", "tape", "wire")


def item_text(item: int) -> str:
    """A short deterministic product text (two words, a size) for item ``item``."""
    return f"{WORDS[item % len(WORDS)]} {WORDS[(item * 7 + 3) % len(WORDS)]} size {item % 5}"


def cyclic_sequences(num_users: int, num_items: int, length: tuple[int, int] = (6, 10), seed: int = 0) -> list[list[int]]:
    """Users walk the catalogue in steps of 1 from a random start (a pattern models can learn)."""
    rng = random.Random(seed)
    out = []
    for _ in range(num_users):
        start = rng.randrange(num_items)
        out.append([(start + step) % num_items for step in range(rng.randint(*length))])
    return out


def write_source(root: Path, sequences: list[list[int]], num_items: int) -> Path:
    """Write a raw dataset in the amazon-industrial layout (interactions.csv + items.jsonl)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["user_id,item_id,position"]
    for user, seq in enumerate(sequences):
        lines += [f"U{user:03d},{item},{pos}" for pos, item in enumerate(seq)]
    (root / "interactions.csv").write_text("\n".join(lines) + "\n")
    with open(root / "items.jsonl", "w") as handle:
        for item in range(num_items):
            handle.write(json.dumps({"item_id": item, "title": item_text(item), "description": "", "brand": "B", "categories": ""}) + "\n")
    return root


def write_prepared(root: Path, sequences: list[list[int]], num_items: int, splits: list[list[str]] | None = None) -> Path:
    """Write prepared tables directly (leave-one-out splits unless ``splits`` is given)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for user, seq in enumerate(sequences):
        for pos, item in enumerate(seq):
            if splits is not None:
                split = splits[user][pos]
            else:
                split = "test" if pos == len(seq) - 1 else "valid" if pos == len(seq) - 2 else "train"
            rows.append((user, item, pos, split))
    interactions = pl.DataFrame({
        "user_idx": pl.Series([r[0] for r in rows], dtype=pl.Int32),
        "item_idx": pl.Series([r[1] for r in rows], dtype=pl.Int32),
        "ts": pl.Series([r[2] for r in rows], dtype=pl.Int64),
        "split": pl.Series([r[3] for r in rows], dtype=pl.Enum(["train", "valid", "test"])),
    })
    trained = set(interactions.filter(pl.col("split") == "train")["item_idx"].to_list())
    pl.DataFrame({
        "item_idx": pl.Series(range(num_items), dtype=pl.Int32),
        "item_id": [str(i) for i in range(num_items)],
        "text": [item_text(i) for i in range(num_items)],
        "title": [item_text(i) for i in range(num_items)],
        "is_cold": [i not in trained for i in range(num_items)],
    }).write_parquet(root / "items.parquet")
    interactions.write_parquet(root / "interactions.parquet")
    pl.DataFrame({"user_idx": pl.Series(range(len(sequences)), dtype=pl.Int32),
                  "user_id": [f"U{u}" for u in range(len(sequences))]}).write_parquet(root / "users.parquet")
    (root / "manifest.json").write_text(json.dumps({"schema_version": 1, "fingerprint": f"test{len(rows):012d}"}))
    return root


def tiny_bert(path: Path) -> Path:
    """A random one-layer BERT (32-d) with the bundled MiniLM tokenizer: a fast real text encoder folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from recsys.tokenizers.text_encoder import default_encoder_path

    if (path / "config.json").is_file():
        return path
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(default_encoder_path())).save_pretrained(path)
    return path


def holdout_sequences(num_users: int = 16, pool: int = 10, train_len: int = 5) -> tuple[list[list[int]], int, set[int], set[int]]:
    """Sequences whose valid and test items occur nowhere else (each user has their own two).

    Returns:
        (sequences, num_items, valid items, test items): any of those items in a training
        sample is leakage, whatever the model.
    """
    sequences, valid, test = [], set(), set()
    for user in range(num_users):
        train = [(user + step) % pool for step in range(train_len)]
        v, t = pool + user, pool + num_users + user
        sequences.append(train + [v, t])
        valid.add(v)
        test.add(t)
    return sequences, pool + 2 * num_users, valid, test
