"""Model bundles: the directory a trained set-identifier model ships as (ARCHITECTURE.md section 4).

A bundle holds everything evaluation and serving need, and nothing they must unpickle:

    manifest.json            schema version, kind, dataset fingerprint, model config, backbone
                             config, shapes, beta, max_len, text encoder, metrics, sha256 per file
    config.yaml              the full training config the model came from
    model.safetensors        SetRecModel state dict (LoRA merged): ``backbone.*`` (plain Qwen2Model /
                             T5Model keys), ``item_encoder.*`` (CF projection, autoencoder, and the frozen
                             CF/text embeddings, so new items can be added from text), ``prompt``,
                             ``response``, ``queries``
    item_tokens.safetensors  tensor ``tokens``: the (num_items, K, d) item token table
    items.parquet            the catalogue (item_idx, item_id, text, ...)
    index.faiss              flat inner-product index over the flattened token rows

Writes are atomic (temporary folder, then one rename); loads verify every checksum first and
refuse pickle files. Query vectors are ``concat((1 - beta) h_0, beta h_1, ..., beta h_N)``.

Example:
    >>> save_bundle(model, "bundles/setrec-ml100k", beta=0.4, max_len=50, items=items,
    ...             dataset_fingerprint="ab12", config=full_config, metrics={"valid/ndcg@10": 0.1})
    >>> model = load_bundle("bundles/setrec-ml100k")       # eval mode, model.bundle has the metadata
    >>> model.score_all(histories, model.bundle.beta)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from recsys.errors import ArtifactError

SCHEMA_VERSION = 1
KIND = "setrec-bundle"
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
MODEL = "model.safetensors"
ITEM_TOKENS = "item_tokens.safetensors"
ITEMS = "items.parquet"
INDEX = "index.faiss"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


@dataclass(frozen=True)
class BundleInfo:
    """What a loaded bundle carries besides the model.

    Attributes:
        path: the bundle directory.
        manifest: the parsed manifest.json.
        beta: the ranking weight picked on validation.
        max_len: history length the model was trained with (keep the last ``max_len`` items).
        config: the full training config (config.yaml).
        text_encoder: description of the text encoder of the semantic tokens (to embed new items).
    """

    path: Path
    manifest: dict
    beta: float
    max_len: int
    config: dict
    text_encoder: dict

    @property
    def items_path(self) -> Path:
        return self.path / ITEMS

    @property
    def index_path(self) -> Path:
        return self.path / INDEX

    @property
    def item_tokens_path(self) -> Path:
        return self.path / ITEM_TOKENS


def _sha256(path: Path) -> str:
    from recsys.tokenizers.artifact_io import sha256_file

    return sha256_file(path)


def write_index(table: torch.Tensor, path: Path) -> None:
    """Write a flat inner-product FAISS index over the flattened (num_items, K*d) token rows."""
    import faiss
    import numpy as np

    vectors = np.ascontiguousarray(table.detach().float().flatten(1).cpu().numpy())
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(path))


def save_bundle(
    model,
    out_dir: str | Path,
    *,
    beta: float,
    max_len: int,
    items,
    dataset_fingerprint: str,
    config: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
    text_encoder: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle directory atomically; returns its path.

    Args:
        model: a trained :class:`recsys.models.setrec.SetRecModel` (LoRA is merged on the way out).
        out_dir: the bundle directory (replaced as a whole if it exists).
        beta: ranking weight picked on the validation split.
        max_len: history length used in training.
        items: polars DataFrame of the catalogue, or the path of an ``items.parquet``.
        dataset_fingerprint: ``manifest.json`` fingerprint of the prepared dataset.
        config: the full training config (written to config.yaml and the manifest).
        metrics: final metrics (validation and test) to record.
        text_encoder: the semantic tokenizer's encoder description (its manifest ``encoder``).
    """
    import polars as pl
    import yaml
    from safetensors.torch import save_file, save_model

    from recsys.tokenizers.artifact_io import atomic_directory

    out_dir = Path(out_dir)
    exported = model.merged_copy()
    was_training = exported.training
    exported.eval()
    with torch.no_grad():
        table = exported.item_table().detach().float().cpu().contiguous()
    exported.train(was_training)
    frame = pl.read_parquet(items) if isinstance(items, (str, Path)) else items
    if frame.height != table.shape[0]:
        raise ArtifactError(f"items has {frame.height} rows but the model scores {table.shape[0]} items; pass the same dataset's items")
    with atomic_directory(out_dir) as tmp:
        save_model(exported, str(tmp / MODEL), metadata={"format": "pt"})
        save_file({"tokens": table}, str(tmp / ITEM_TOKENS))
        frame.write_parquet(tmp / ITEMS)
        write_index(table, tmp / INDEX)
        (tmp / CONFIG).write_text(yaml.safe_dump(json.loads(json.dumps(dict(config), default=str)), sort_keys=False))
        encoder = exported.item_encoder
        manifest = {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dataset_fingerprint": dataset_fingerprint,
            "model_config": exported.config.to_dict(),
            "backbone_config": json.loads(json.dumps(exported.backbone_config_dict(), default=str)),
            "shapes": {
                "num_items": int(table.shape[0]),
                "tokens_per_item": int(table.shape[1]),
                "hidden_size": int(table.shape[2]),
                "cf_dim": int(encoder.cf_embeddings.shape[1]),
                "text_dim": int(encoder.text_embeddings.shape[1]),
                "num_semantic_tokens": int(encoder.num_semantic_tokens),
            },
            "beta": float(beta),
            "max_len": int(max_len),
            "query_vector": "concat((1 - beta) h_0, beta h_1, ..., beta h_N); item vector = flattened token row",
            "text_encoder": dict(text_encoder or {}),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "files": {name: _sha256(tmp / name) for name in (MODEL, ITEM_TOKENS, ITEMS, INDEX, CONFIG)},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


def read_manifest(path: str | Path) -> dict:
    """The verified manifest of a bundle: every listed file present with its checksum, no pickles.

    Raises:
        ArtifactError: not a bundle, a file missing or changed, or a pickle file present.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not a model bundle: {MANIFEST} is missing; train one with `recsys train`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({error}); the bundle is corrupt, re-export it") from error
    if manifest.get("kind") != KIND:
        raise ArtifactError(f"{path} holds a {manifest.get('kind')!r} artifact, not a set-identifier model bundle")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{manifest_path}: schema_version {manifest.get('schema_version')} is not {SCHEMA_VERSION}; re-export the bundle")
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ArtifactError(f"{path} contains pickle files {pickles}; bundles hold safetensors only, remove them")
    for name, expected in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{file} is missing from the bundle; re-export it")
        actual = _sha256(file)
        if actual != expected:
            raise ArtifactError(f"{file}: sha256 {actual[:12]}... does not match the manifest ({expected[:12]}...); the bundle was modified or corrupted")
    missing = {MODEL, ITEM_TOKENS, ITEMS, INDEX, CONFIG} - set(manifest.get("files", {}))
    if missing:
        raise ArtifactError(f"{manifest_path} lists no checksum for {sorted(missing)}; re-export the bundle")
    return manifest


def load_bundle(path: str | Path, device: str | torch.device = "cpu"):
    """Load a bundle's :class:`SetRecModel` in eval mode after verifying its checksums.

    The returned model has a ``bundle`` attribute (:class:`BundleInfo`: beta, max_len, config, ...).

    Example:
        >>> model = load_bundle("bundles/setrec-ml100k")
        >>> scores = model.score_all(histories, beta=model.bundle.beta)
    """
    import yaml
    from safetensors.torch import load_model

    from recsys.models.setrec import SetRecConfig, SetRecModel
    from recsys.tokenizers.identifiers import ItemTokenEncoder

    path = Path(path)
    manifest = read_manifest(path)
    shapes = manifest["shapes"]
    config = SetRecConfig.from_dict(manifest["model_config"])
    encoder = ItemTokenEncoder(
        torch.zeros(shapes["num_items"], shapes["cf_dim"]),
        torch.zeros(shapes["num_items"], dtype=torch.bool),
        torch.zeros(shapes["num_items"], shapes["text_dim"]),
        shapes["num_semantic_tokens"],
        shapes["hidden_size"],
    )
    model = SetRecModel(config, encoder, backbone_config=manifest["backbone_config"])
    try:
        missing, unexpected = load_model(model, str(path / MODEL), strict=False, device=str(device))
    except Exception as error:  # safetensors raises several types for corrupt files
        raise ArtifactError(f"{path / MODEL} could not be loaded into the model ({error}); re-export the bundle") from error
    if missing or unexpected:
        raise ArtifactError(f"{path / MODEL} does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.to(device).eval()
    model.bundle = BundleInfo(
        path=path,
        manifest=manifest,
        beta=float(manifest["beta"]),
        max_len=int(manifest["max_len"]),
        config=yaml.safe_load((path / CONFIG).read_text()) or {},
        text_encoder=manifest.get("text_encoder", {}),
    )
    return model


def load_item_tokens(path: str | Path) -> torch.Tensor:
    """The (num_items, K, d) item token table of a bundle (checksums verified)."""
    from safetensors.torch import load_file

    path = Path(path)
    read_manifest(path)
    return load_file(str(path / ITEM_TOKENS))["tokens"]
