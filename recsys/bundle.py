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
    history.safetensors      tensor ``attention``: the (num_items, d_a) attention table of the long-history
                             selection (``recsys.models.history_selection``); optional

The manifest's ``history`` records the selection rule (``selection``, ``search_k``) and where the
attention table came from (``attention_source``: the CF artifact's ``attention_embeddings`` or its
``embeddings``); bundles written before it (issue 17) load with ``selection: recent``.

Writes are atomic (temporary folder, then one rename). Loads check, before anything is built:
the manifest's own checksum (``manifest_sha256``: sha256 of the rest of the manifest, so a hand
edit is caught), its schema and value ranges (:class:`Manifest`: strict types, ``max_len > 0``,
``0 <= beta <= 1``, positive shapes), every file's checksum, no pickle files, a readable
``config.yaml`` (safe YAML, a mapping), and that the declared backbone, its config and the
weights in ``model.safetensors`` agree (the model is built on the ``meta`` device and its
parameter shapes compared with the file's header) before any weight is allocated. Every
failure is one :class:`~recsys.errors.ArtifactError` line naming the file and field. Query
vectors are ``concat((1 - beta) h_0, beta h_1, ..., beta h_N)``.

Example:
    >>> save_bundle(model, "bundles/setrec-ml100k", beta=0.4, max_len=50, items=items,
    ...             dataset_fingerprint="ab12", config=full_config, metrics={"valid/ndcg@10": 0.1})
    >>> model = load_bundle("bundles/setrec-ml100k")       # eval mode, model.bundle has the metadata
    >>> model.score_all(histories, model.bundle.beta)
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from recsys.checksum import sha256_file
from recsys.errors import ArtifactError

#: Version 2 added ``manifest_sha256``; version 1 bundles (written before it) still load, range-checked.
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
KIND = "setrec-bundle"
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
MODEL = "model.safetensors"
ITEM_TOKENS = "item_tokens.safetensors"
ITEMS = "items.parquet"
INDEX = "index.faiss"
HISTORY = "history.safetensors"
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
        history: the long-history selection rule (``recent`` for bundles written before it).
        attention: (num_items, d_a) attention table of the selection, or None.
        attention_source: where that table came from (``attention_embeddings`` or ``embeddings`` of the CF artifact).
    """

    path: Path
    manifest: dict
    beta: float
    max_len: int
    config: dict
    text_encoder: dict
    history: Any = None
    attention: torch.Tensor | None = None
    attention_source: str = ""

    def history_selector(self, max_len: int | None = None, config=None):
        """The :class:`~recsys.models.history_selection.HistorySelector` evaluation and serving apply.

        Args:
            max_len: items the model reads (default: the bundle's ``max_len``).
            config: a :class:`~recsys.models.history_selection.HistoryConfig` to use instead of the
                bundle's (e.g. DARE selection on a model trained with ``recent``; needs the attention table).

        Example:
            >>> model.bundle.history_selector()([long_history])
        """
        from recsys.models.history_selection import HistoryConfig, HistorySelector

        config = config or self.history or HistoryConfig()
        return HistorySelector(self.attention, max_len or self.max_len, config, self.attention_source)

    @property
    def items_path(self) -> Path:
        return self.path / ITEMS

    @property
    def index_path(self) -> Path:
        return self.path / INDEX

    @property
    def item_tokens_path(self) -> Path:
        return self.path / ITEM_TOKENS


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
    history=None,
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
        history: the :class:`~recsys.models.history_selection.HistorySelector` the model was trained
            with (its rule and attention table are stored); None records ``recent`` without a table.
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
    attention = None if history is None else history.attention
    if attention is not None and (attention.ndim != 2 or attention.shape[0] != table.shape[0]):
        raise ArtifactError(f"the history attention table is {tuple(attention.shape)} but the model scores {table.shape[0]} items")
    if history is not None and int(history.max_len) != int(max_len):
        raise ArtifactError(f"the history selector reads {history.max_len} items but max_len is {max_len}")
    history_entry: dict[str, Any] = {"selection": "recent", "search_k": 0, "attention_source": "", "attention_dim": 0}
    if history is not None:
        history_entry = {**history.config.to_dict(), "attention_source": history.source if attention is not None else "",
                         "attention_dim": int(attention.shape[1]) if attention is not None else 0}
    with atomic_directory(out_dir) as tmp:
        save_model(exported, str(tmp / MODEL), metadata={"format": "pt"})
        save_file({"tokens": table}, str(tmp / ITEM_TOKENS))
        frame.write_parquet(tmp / ITEMS)
        write_index(table, tmp / INDEX)
        names = [MODEL, ITEM_TOKENS, ITEMS, INDEX, CONFIG]
        if attention is not None:
            save_file({"attention": attention.detach().float().cpu().contiguous()}, str(tmp / HISTORY))
            names.append(HISTORY)
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
            "history": history_entry,
            "query_vector": "concat((1 - beta) h_0, beta h_1, ..., beta h_N); item vector = flattened token row",
            "text_encoder": dict(text_encoder or {}),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "files": {name: sha256_file(tmp / name) for name in names},
        }
        manifest["manifest_sha256"] = manifest_checksum(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


class Shapes(BaseModel):
    """``manifest.json`` ``shapes``: sizes of the model and its item table (all > 0)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    num_items: int = Field(gt=0)
    tokens_per_item: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    cf_dim: int = Field(gt=0)
    text_dim: int = Field(gt=0)
    num_semantic_tokens: int = Field(gt=0)


class HistoryManifest(BaseModel):
    """``manifest.json`` ``history``: the long-history selection rule (``recsys.models.history_selection``)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    selection: Literal["recent", "dare"]
    search_k: int = Field(ge=0)
    attention_source: str = ""
    """``attention_embeddings`` or ``embeddings`` (of the CF artifact); empty without a table."""
    attention_dim: int = Field(default=0, ge=0)
    """d_a of ``history.safetensors`` (0: no table)."""


class Manifest(BaseModel):
    """The schema of ``manifest.json`` (strict: a string is not a number, a number not a string).

    Raises (through :func:`read_manifest`): ArtifactError naming the first bad field.
    """

    model_config = ConfigDict(strict=True, extra="allow", protected_namespaces=())
    kind: Literal["setrec-bundle"]
    schema_version: int
    dataset_fingerprint: str
    model_config_: dict = Field(alias="model_config")
    backbone_config: dict
    shapes: Shapes
    beta: float = Field(ge=0.0, le=1.0)
    """Ranking weight of the semantic tokens, in [0, 1]."""
    max_len: int = Field(gt=0)
    """History length kept (last items); > 0."""
    text_encoder: dict = Field(default_factory=dict)
    history: HistoryManifest | None = None
    """Absent in bundles written before issue 17 (they load as ``recent``)."""
    metrics: dict[str, float] = Field(default_factory=dict)
    files: dict[str, Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]]
    manifest_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """sha256 (hex) of a manifest without its ``manifest_sha256`` field, in canonical JSON.

    It guards against edits by hand or by a tool that does not know the format; it is no
    signature (whoever edits the file can recompute it).

    Example:
        >>> manifest["manifest_sha256"] = manifest_checksum(manifest)
    """
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _schema_error(manifest_path: Path, error: ValidationError) -> ArtifactError:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    got = first.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return ArtifactError(
        f"{manifest_path}: field {where}: {first['msg']} (got {shown[:80]}){more}; re-export the bundle, manifests are not edited by hand"
    )


def read_manifest(path: str | Path) -> dict:
    """The verified manifest of a bundle.

    Checks, in order: the file is a JSON object of a set-identifier bundle of a readable schema
    version; its own checksum (``manifest_sha256``, required from schema version 2); its fields
    (:class:`Manifest`: strict types and ranges); every listed file present with its sha256; no
    pickle files.

    Raises:
        ArtifactError: one line naming the file and what to do.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path} is not a model bundle: {MANIFEST} is missing; train one with `recsys train`")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({_one_line(error)}); the bundle is corrupt, re-export it") from error
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_path} holds a JSON {type(manifest).__name__}, not an object; the bundle is corrupt, re-export it")
    if manifest.get("kind") != KIND:
        raise ArtifactError(f"{path} holds a {manifest.get('kind')!r} artifact, not a set-identifier model bundle")
    version = manifest.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_SCHEMA_VERSIONS:
        raise ArtifactError(f"{manifest_path}: schema_version {version!r} is not one of {READABLE_SCHEMA_VERSIONS}; re-export the bundle")
    stored = manifest.get("manifest_sha256")
    if version >= 2 or stored is not None:
        if not isinstance(stored, str):
            raise ArtifactError(f"{manifest_path}: manifest_sha256 is missing; the manifest was edited, re-export the bundle")
        actual = manifest_checksum(manifest)
        if actual != stored:
            raise ArtifactError(
                f"{manifest_path}: its content does not match its manifest_sha256 ({actual[:12]}... vs {stored[:12]}...); "
                "the manifest was edited by hand or damaged, re-export the bundle"
            )
    try:
        Manifest.model_validate(manifest)
    except ValidationError as error:
        raise _schema_error(manifest_path, error) from error
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ArtifactError(f"{path} contains pickle files {pickles}; bundles hold safetensors only, remove them")
    missing = {MODEL, ITEM_TOKENS, ITEMS, INDEX, CONFIG} - set(manifest["files"])
    if missing:
        raise ArtifactError(f"{manifest_path} lists no checksum for {sorted(missing)}; re-export the bundle")
    for name, expected in manifest["files"].items():
        file = path / name
        if Path(name).name != name or not file.is_file():
            raise ArtifactError(f"{file} is missing from the bundle; re-export it")
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactError(f"{file}: sha256 {actual[:12]}... does not match the manifest ({expected[:12]}...); the bundle was modified or corrupted")
    return manifest


def read_config(path: str | Path) -> dict:
    """A bundle's ``config.yaml`` (safe YAML; must be a mapping).

    Raises:
        ArtifactError: invalid YAML, a Python tag (refused by the safe loader) or not a mapping.
    """
    import yaml

    file = Path(path) / CONFIG
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{file} is not valid safe YAML ({_one_line(error)[:200]}); re-export the bundle") from error
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ArtifactError(f"{file} holds a YAML {type(config).__name__}, not a mapping; re-export the bundle")
    return config


BACKBONE_MODEL_TYPES = {"qwen": "qwen2", "t5": "t5"}


def check_backbone(path: str | Path, manifest: Mapping[str, Any]):
    """Build the bundle's backbone on the ``meta`` device and compare it with ``model.safetensors``.

    Nothing is allocated: the declared backbone must match the backbone config's
    ``model_type``, its hidden size ``shapes.hidden_size``, and every parameter of the backbone
    built from the config on the ``meta`` device must exist in the file with the same shape
    (read from the safetensors header), and no other ``backbone.*`` tensor, so a config that disagrees
    with the weights (e.g. ``backbone: qwen`` over a T5 config, which would otherwise build a
    default 7B Qwen2) is refused before the real model is built.

    Args:
        path: the bundle directory.
        manifest: its verified manifest (:func:`read_manifest`).

    Returns:
        the :class:`~recsys.models.setrec.SetRecConfig` of the manifest.

    Raises:
        ArtifactError: one line naming the disagreement.
    """
    from safetensors import safe_open

    from recsys.errors import ConfigError
    from recsys.models.setrec import SetRecConfig, build_backbone

    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        values = dict(manifest["model_config"])
        values.setdefault("history_prior", "none")  # bundles saved before the key ran the backbone alone
        config = SetRecConfig.from_dict(values, where="model_config")
    except (ConfigError, TypeError, ValueError, KeyError) as error:
        raise ArtifactError(f"{manifest_path}: model_config is invalid ({_one_line(error)}); re-export the bundle") from error
    declared = BACKBONE_MODEL_TYPES.get(config.backbone)
    found = manifest["backbone_config"].get("model_type")
    if found != declared:
        raise ArtifactError(
            f"{manifest_path}: model_config.backbone is {config.backbone!r} but backbone_config.model_type is {found!r} "
            f"(expected {declared!r}); the manifest contradicts itself, re-export the bundle"
        )
    try:
        with safe_open(str(path / MODEL), framework="pt") as weights:
            stored = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    except Exception as error:  # safetensors raises several types for corrupt headers
        raise ArtifactError(f"{path / MODEL} is not a readable safetensors file ({_one_line(error)}); re-export the bundle") from error
    hidden = manifest["backbone_config"].get("hidden_size" if config.backbone == "qwen" else "d_model")
    if hidden != manifest["shapes"]["hidden_size"]:
        raise ArtifactError(
            f"{manifest_path}: backbone_config gives hidden size {hidden!r} but shapes.hidden_size is "
            f"{manifest['shapes']['hidden_size']}; re-export the bundle"
        )
    try:
        with torch.device("meta"):
            skeleton = build_backbone(config, manifest["backbone_config"])
    except Exception as error:  # transformers raises many types (huggingface_hub validation errors too) for bad configs
        raise ArtifactError(f"{manifest_path}: the backbone it describes cannot be built ({_one_line(error)[:300]}); re-export the bundle") from error
    tensors = {f"backbone.{key}": value for key, value in skeleton.state_dict(keep_vars=True).items()}
    expected = {key: tuple(value.shape) for key, value in tensors.items()}
    tied: dict[int, list[str]] = {}  # tied weights (T5's shared embeddings) are stored once
    for key, value in tensors.items():
        tied.setdefault(id(value), []).append(key)
    stored = {key: shape for key, shape in stored.items() if key.startswith("backbone.")}
    missing = sorted(keys[0] for keys in tied.values() if not any(key in stored for key in keys))
    unexpected = sorted(set(stored) - set(expected))
    wrong = sorted(key for key in set(expected) & set(stored) if expected[key] != stored[key])
    if missing or unexpected or wrong:
        detail = "; ".join(
            part for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                f"{wrong[0]} is {stored[wrong[0]]} in the file but {expected[wrong[0]]} in the manifest's model" if wrong else "",
            ) if part
        )
        raise ArtifactError(f"{path / MODEL} does not fit the model {MANIFEST} describes ({detail}); re-export the bundle")
    return config


def empty_item_encoder(shapes: Mapping[str, int]):
    """An :class:`~recsys.models.item_tokens.ItemTokenEncoder` of the manifest's ``shapes``, zero-filled (weights load next)."""
    from recsys.models.item_tokens import ItemTokenEncoder

    return ItemTokenEncoder(
        torch.zeros(shapes["num_items"], shapes["cf_dim"]),
        torch.zeros(shapes["num_items"], dtype=torch.bool),
        torch.zeros(shapes["num_items"], shapes["text_dim"]),
        shapes["num_semantic_tokens"],
        shapes["hidden_size"],
    )


def load_bundle(path: str | Path, device: str | torch.device = "cpu"):
    """Load a bundle's :class:`SetRecModel` in eval mode after verifying it (:func:`read_manifest`,
    :func:`read_config`, :func:`check_backbone`).

    The returned model has a ``bundle`` attribute (:class:`BundleInfo`: beta, max_len, config, the
    long-history rule: ``model.bundle.history_selector()`` is what evaluation and serving apply).

    Raises:
        ArtifactError: one line naming the file and field (see the module docstring).

    Example:
        >>> model = load_bundle("bundles/setrec-ml100k")
        >>> scores = model.score_all(histories, beta=model.bundle.beta)
    """
    from safetensors.torch import load_model

    from recsys.models.setrec import SetRecModel

    path = Path(path)
    manifest = read_manifest(path)
    config_yaml = read_config(path)
    config = check_backbone(path, manifest)
    encoder = empty_item_encoder(manifest["shapes"])
    model = SetRecModel(config, encoder, backbone_config=manifest["backbone_config"])
    try:
        missing, unexpected = load_model(model, str(path / MODEL), strict=False, device=str(device))
    except Exception as error:  # safetensors raises several types for corrupt files
        raise ArtifactError(f"{path / MODEL} could not be loaded into the model ({_one_line(error)}); re-export the bundle") from error
    # bundles written before issue 13 lack the item encoder's predicted-CF flags and text->CF map:
    # they load as "no predicted row, no map" (the zero-vector rule they were trained with)
    optional = {f"item_encoder.{key}" for key in type(encoder).OPTIONAL_STATE}
    missing = [key for key in missing if key not in optional]
    if missing or unexpected:
        raise ArtifactError(f"{path / MODEL} does not fit the model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.to(device).eval()
    history, attention, source = read_history(path, manifest)
    model.bundle = BundleInfo(
        path=path,
        manifest=manifest,
        beta=float(manifest["beta"]),
        max_len=int(manifest["max_len"]),
        config=config_yaml,
        text_encoder=manifest.get("text_encoder", {}),
        history=history,
        attention=attention,
        attention_source=source,
    )
    return model


def read_history(path: str | Path, manifest: Mapping[str, Any]):
    """The bundle's long-history rule and attention table: ``(HistoryConfig, attention or None, source)``.

    Bundles without a ``history`` entry load as ``recent`` without a table.

    Raises:
        ArtifactError: the rule does not fit ``max_len``, ``dare`` without ``history.safetensors``, or a
            table whose shape disagrees with the manifest.
    """
    from safetensors.torch import load_file

    from recsys.errors import ConfigError
    from recsys.models.history_selection import HistoryConfig

    path = Path(path)
    entry = manifest.get("history")
    if entry is None:
        return HistoryConfig(), None, ""
    config = HistoryConfig(entry["selection"], entry["search_k"])
    try:
        config.validate(int(manifest["max_len"]))
    except ConfigError as error:
        raise ArtifactError(f"{path / MANIFEST}: {error}; re-export the bundle") from error
    attention = None
    if HISTORY in manifest["files"]:
        try:
            attention = load_file(str(path / HISTORY)).get("attention")
        except Exception as error:  # safetensors raises several types for corrupt files
            raise ArtifactError(f"{path / HISTORY} is not a readable safetensors file ({_one_line(error)}); re-export the bundle") from error
        expected = (manifest["shapes"]["num_items"], entry.get("attention_dim", 0))
        if attention is None or attention.dtype != torch.float32 or tuple(attention.shape) != expected:
            got = None if attention is None else (str(attention.dtype), tuple(attention.shape))
            raise ArtifactError(f"{path / HISTORY}: tensor 'attention' must be float32 {expected}, got {got}; re-export the bundle")
    if config.selection == "dare" and attention is None:
        raise ArtifactError(f"{path / MANIFEST}: history.selection is dare but the bundle has no {HISTORY}; re-export the bundle")
    return config, attention, entry.get("attention_source", "") if attention is not None else ""


def load_item_tokens(path: str | Path) -> torch.Tensor:
    """The (num_items, K, d) item token table of a bundle (checksums verified)."""
    from safetensors.torch import load_file

    path = Path(path)
    read_manifest(path)
    return load_file(str(path / ITEM_TOKENS))["tokens"]
