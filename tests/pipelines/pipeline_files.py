"""Helpers writing tiny source files (shared by tests/pipelines; unique name on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path


def write(path: Path, text: str | bytes) -> Path:
    """Write ``text`` (str as UTF-8, or raw bytes) to ``path``, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def jsonl(rows: list[dict]) -> str:
    """One JSON object per line."""
    return "".join(json.dumps(row) + "\n" for row in rows)
