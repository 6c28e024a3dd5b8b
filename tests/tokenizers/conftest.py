"""Fixtures of the tokenizer tests: tiny prepared datasets, a shared MiniLM encoder, a tiny BERT folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import polars as pl
import pytest

DEFAULT_TEXTS = (
    "Cordless drill 18V with two batteries and a charger",
    "Stainless steel staples, half inch, 1000 count",
    "Hard start kit for air conditioner compressors",
    "Nitrile gloves, powder free, size large, box of 100",
    "Digital caliper, 6 inch, stainless steel, LCD display",
    "Safety glasses with anti-fog clear lens",
    "Cordless drill 18V with two batteries and a charger",  # same text as item 0
    "Replacement carbon brushes for an angle grinder",
)


def write_prepared_dataset(
    root: Path,
    texts: Sequence[str] = DEFAULT_TEXTS,
    num_users: int = 12,
    seed: int = 0,
) -> Path:
    """Write a small prepared dataset (ARCHITECTURE.md section 2) with leave-one-out splits.

    Each user gets a deterministic walk through the catalogue; the last item of every
    user is ``test``, the second last ``valid``. The final item never appears in train
    (is_cold True) when there are at least 3 items.
    """
    import random

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    n_items = len(texts)
    warm = max(1, n_items - 1) if n_items >= 3 else n_items
    rows = []
    for user in range(num_users):
        length = rng.randint(4, 7)
        seq = [rng.randrange(warm) for _ in range(length)]
        for pos, item in enumerate(seq):
            split = "test" if pos == length - 1 else "valid" if pos == length - 2 else "train"
            rows.append((user, item, 1_000 * user + pos, split))
    interactions = pl.DataFrame(
        {
            "user_idx": pl.Series([r[0] for r in rows], dtype=pl.Int32),
            "item_idx": pl.Series([r[1] for r in rows], dtype=pl.Int32),
            "ts": pl.Series([r[2] for r in rows], dtype=pl.Int64),
            "split": pl.Series([r[3] for r in rows], dtype=pl.Enum(["train", "valid", "test"])),
        }
    )
    trained = set(interactions.filter(pl.col("split") == "train")["item_idx"].to_list())
    items = pl.DataFrame(
        {
            "item_idx": pl.Series(range(n_items), dtype=pl.Int32),
            "item_id": [f"I{i:03d}" for i in range(n_items)],
            "text": list(texts),
            "title": [t if t is None else t.split(",")[0] for t in texts],
            "is_cold": [i not in trained for i in range(n_items)],
        }
    )
    users = pl.DataFrame({"user_idx": pl.Series(range(num_users), dtype=pl.Int32), "user_id": [f"U{u}" for u in range(num_users)]})
    interactions.write_parquet(root / "interactions.parquet")
    items.write_parquet(root / "items.parquet")
    users.write_parquet(root / "users.parquet")
    digest = hashlib.sha256()
    for name in ("interactions.parquet", "items.parquet", "users.parquet"):
        digest.update((root / name).read_bytes())
    manifest = {
        "schema_version": 1,
        "fingerprint": digest.hexdigest()[:16],
        "counts": {"users": num_users, "items": n_items, "rows_kept": interactions.height},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture
def prepared_dir(tmp_path) -> Path:
    """A tiny prepared dataset with 8 items (items 0 and 6 share their text)."""
    return write_prepared_dataset(tmp_path / "prepared")


@pytest.fixture
def make_prepared(tmp_path):
    """Factory: ``make_prepared(texts=..., name=...)`` writes a prepared dataset and returns its folder."""

    def make(texts: Sequence[str] = DEFAULT_TEXTS, name: str = "prepared", **kwargs) -> Path:
        return write_prepared_dataset(tmp_path / name, texts, **kwargs)

    return make


@pytest.fixture(scope="session")
def minilm():
    """The bundled all-MiniLM-L6-v2, loaded once per test session (counters reset per use)."""
    from recsys.tokenizers.text_encoder import TextEncoder

    encoder = TextEncoder()
    encoder.encode_batch(["warm up"])
    return encoder


@pytest.fixture
def fresh_minilm(minilm):
    """The shared MiniLM with its call counters set to zero."""
    minilm.calls = 0
    minilm.texts_encoded = 0
    return minilm


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A plain Hugging Face folder (no sentence-transformers files): a 2-layer random BERT, 32-d."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from recsys.tokenizers.text_encoder import default_encoder_path

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(default_encoder_path())).save_pretrained(path)
    return path


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "embedding-cache"


@pytest.fixture(autouse=True)
def _private_embedding_cache(tmp_path, monkeypatch):
    """The default embedding cache of every tokenizer test is private, never ~/.cache."""
    monkeypatch.setenv("SETREC_CACHE_DIR", str(tmp_path / "default-cache"))
