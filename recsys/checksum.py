"""The one file-checksum helper: every manifest (prepared datasets, the embedded ML-100K copy,
tokenizer artifacts, model bundles) records and verifies files with :func:`sha256_file`.

It sits outside the layers (like ``recsys.errors``): pipelines, at the bottom, use it too.

Example:
    >>> sha256_file("data/ml-100k/interactions.parquet")[:16]
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (hashlib releases the GIL: a thread can hash
    while others work, as ``recsys data prepare`` does with the source files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
