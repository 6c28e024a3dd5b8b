"""Small, safe file helpers for tokenizer artifacts: atomic writes, checksums, manifests.

Every artifact file is written to a temporary name in the same folder and renamed into
place, so a crash never leaves half a file under the real name. Manifests record the
sha256 of each file; readers verify it before trusting the contents. Only safetensors
and Parquet are read, never pickles.

Example:
    >>> digest = write_safetensors_atomic(out / "x.safetensors", {"embeddings": tensor})
    >>> write_json_atomic(out / "manifest.json", {"files": {"x.safetensors": {"sha256": digest}}})
    >>> tensors = read_safetensors_checked(out / "x.safetensors", expected_sha256=digest)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from recsys.checksum import sha256_file  # the one helper; tokenizer modules import it from here too
from recsys.errors import ArtifactError



@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    Example:
        >>> with atomic_path("out/table.parquet") as tmp:
        ...     frame.write_parquet(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_safetensors_atomic(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """Write ``tensors`` as safetensors atomically; returns the file's sha256."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}))
        digest = sha256_file(tmp)
    return digest


def write_json_atomic(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path, what: str) -> dict:
    """Parse a JSON file, raising :class:`ArtifactError` naming ``what`` when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: {what} has no manifest; rebuild it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); rebuild {what}") from error


def check_out_dir(out_dir: str | Path, kind: str, what: str, *, refuse_unknown_files: bool = False) -> None:
    """Refuse to overwrite a folder that holds another artifact (its manifest names another ``kind``).

    Args:
        out_dir: the output folder about to be (re)written.
        kind: the manifest ``kind`` this writer produces; a folder of the same kind may be replaced.
        what: what is being written, for the message ("the CF embeddings").
        refuse_unknown_files: also refuse a non-empty folder that has no manifest at all.

    Example:
        >>> check_out_dir("runs/tokenizers/ml-100k/cf", "setrec-cf-embeddings", "the CF embeddings")
    """
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.json"
    if manifest.is_file():
        found = read_json(manifest, "the output folder").get("kind")
        if found != kind:
            raise ArtifactError(f"{out_dir} already holds another artifact (manifest kind {found!r}); write {what} to a folder of their own")
    elif refuse_unknown_files and out_dir.exists() and any(out_dir.iterdir()):
        raise ArtifactError(f"{out_dir} is a non-empty folder without a manifest; choose an empty or new --out folder for {what}")


def verify_checksum(path: str | Path, expected_sha256: str | None) -> None:
    """Raise :class:`ArtifactError` when ``path`` is missing or its sha256 differs from the manifest's."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; rebuild the artifact")
    if expected_sha256 is None:
        return
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ArtifactError(
            f"{path} is corrupt or was changed after it was written: sha256 {actual[:16]}... "
            f"differs from the manifest's {expected_sha256[:16]}...; rebuild the artifact"
        )


def read_safetensors_checked(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file after checking its sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    verify_checksum(path, expected_sha256)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(f"{path} is not a readable safetensors file ({error}); rebuild it") from error


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; it replaces ``path`` as a whole when the block succeeds.

    A previous folder at ``path`` is moved aside first and removed only after the swap.

    Example:
        >>> with atomic_directory("tables/ml-100k") as tmp:
        ...     write_files(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
