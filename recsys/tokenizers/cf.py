"""CF item embeddings: SASRec trained on the train split, or imported from elsewhere.

The CF token of an item (ARCHITECTURE.md section 3.1) projects a frozen collaborative
embedding ``e_i``. This module makes those embeddings and stores them as an artifact:

    recsys tokenize cf --data data/ml-100k --out artifacts/ml-100k/cf [--epochs 200 --dim 64]
    recsys tokenize cf --data data/ml-100k --out artifacts/ml-100k/cf --import emb.parquet

    recsys tokenize cf --data D --out O --semantic S [--align con|gen|none]   # RLMRec, predicted cold rows
    recsys tokenize cf --data D --out O --embeddings decoupled [--attention-size 32]   # DARE attention table too

The folder holds ``cf_embeddings.safetensors`` with tensors ``embeddings`` float32
(num_items, cf_dim) (row = item_idx), ``has_cf`` uint8 (num_items,) (1 = the item has a train
interaction) and ``predicted`` uint8 (num_items,), plus ``manifest.json`` (source, config,
metrics, dataset fingerprint, sha256 of every file). A trained folder also keeps the SASRec
model in ``sasrec/`` (reusable as the baseline).

The unseen-item rule: an item without a train interaction (or, for an import, without a
vector in the file) has ``has_cf = 0``; never the leftover random initialisation of its
embedding row. Given the text embeddings (``--semantic``), its row is a CF embedding
predicted from its text by a map fitted on warm items only (:mod:`recsys.tokenizers.text_to_cf`,
ARCHITECTURE.md 3.1), flagged ``predicted = 1``, and the map is stored too
(``text_to_cf_weight`` (dz, cf_dim), ``text_to_cf_bias`` (cf_dim,)); without them the row is
the zero vector (``predicted = 0``). Folders written before ``predicted`` existed load as all
zero. A SASRec trained with decoupled embeddings (``--embeddings decoupled``, DARE: Feng et al., ICLR
2025) keeps its representation table as ``embeddings`` and adds its attention table as
``attention_embeddings`` float32 (num_items, d_a) (row = item_idx; items without a train
interaction: the zero vector, never predicted); the manifest records ``attention_shape``.
:func:`load_cf_artifact` returns everything; :func:`load_cf_embeddings` (the older
interface) returns the embeddings with only the rows of items with a train interaction.
Both verify the checksum and the rule before returning anything.

Imports accept ``.npy`` (a 2-D float array, rows in item_idx order), ``.safetensors``
(tensor ``embeddings``, or the only tensor, rows in item_idx order; an optional
``has_cf`` tensor) and ``.parquet`` (an ``item_id`` column with the catalogue's source
ids and one list column of vectors, named ``vector``/``embedding``/``embeddings`` or the
only list column). Pickled files are refused.

Example:
    >>> train_cf_embeddings("data/ml-100k", "artifacts/ml-100k/cf")
    >>> import_cf_embeddings("emb.parquet", "data/ml-100k", "artifacts/ml-100k/cf-imported")
    >>> embeddings, has_cf = load_cf_embeddings("artifacts/ml-100k/cf")   # (1682, 64), (1682,) bool
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from recsys.checksum import sha256_file
from recsys.errors import ArtifactError, ConfigError, DataFormatError, UnknownItemError
from recsys.tokenizers.artifact_io import (
    check_out_dir,
    atomic_directory,
    read_json,
    read_safetensors_checked,
    write_json_atomic,
)

SCHEMA_VERSION = 1
KIND = "cf_embeddings"
EMBEDDINGS_FILE = "cf_embeddings.safetensors"
MANIFEST_FILE = "manifest.json"
SASREC_DIR = "sasrec"
VECTOR_COLUMNS = ("vector", "embedding", "embeddings")
IMPORT_SUFFIXES = (".npy", ".safetensors", ".parquet")


# --------------------------------------------------------------------------- the rule


def apply_unseen_rule(embeddings: torch.Tensor, has_cf: torch.Tensor) -> torch.Tensor:
    """A float32 copy of ``embeddings`` whose rows with ``has_cf`` False are the zero vector.

    Example:
        >>> apply_unseen_rule(torch.ones(3, 2), torch.tensor([True, False, True]))[1]   # tensor([0., 0.])
    """
    out = embeddings.detach().to(torch.float32).cpu().clone()
    out[~has_cf.bool().cpu()] = 0.0
    return out


# --------------------------------------------------------------------------- writing / reading


def _check_out_dir(out_dir: Path) -> None:
    check_out_dir(out_dir, KIND, "the CF embeddings", refuse_unknown_files=True)


def write_cf_embeddings(
    out_dir: str | Path,
    embeddings: torch.Tensor,
    has_cf: torch.Tensor,
    data,
    info: dict,
    sasrec=None,
    text_to_cf=None,
    text: torch.Tensor | None = None,
    attention: torch.Tensor | None = None,
) -> Path:
    """Write the artifact atomically (the whole folder is swapped in at the end).

    Args:
        out_dir: target folder (replaced when it already holds CF embeddings).
        embeddings: (num_items, dim) vectors; rows with ``has_cf`` False are written as zeros,
            or as predicted from text when ``text_to_cf`` is given.
        has_cf: (num_items,) bool, True for items with a train interaction.
        data: the prepared dataset they belong to (fingerprint and item count).
        info: extra manifest fields (``source``, ``config``, ``metrics``, ``counts``, ...).
        sasrec: optional ``(model, config)`` saved under ``sasrec/``.
        text_to_cf: optional :class:`~recsys.tokenizers.text_to_cf.TextToCF` fitted on warm items;
            with ``text`` it fills every row with ``has_cf`` False (``predicted = 1``) and is stored.
        text: (num_items, dz) text embeddings, required with ``text_to_cf``.
        attention: optional (num_items, d_a) attention table of a decoupled SASRec (DARE), stored as
            ``attention_embeddings``; rows with ``has_cf`` False are written as zeros.

    Example:
        >>> write_cf_embeddings("out/cf", torch.zeros(4, 8), torch.zeros(4, dtype=torch.bool), data, {"source": "test"})
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    if embeddings.ndim != 2 or embeddings.shape[0] != data.num_items or has_cf.shape != (data.num_items,):
        raise ArtifactError(
            f"CF embeddings {tuple(embeddings.shape)} / has_cf {tuple(has_cf.shape)} do not fit the catalogue of "
            f"{data.num_items} items of {data.root}"
        )
    vectors = apply_unseen_rule(embeddings, has_cf)
    predicted = torch.zeros(data.num_items, dtype=torch.bool)
    extra_tensors: dict[str, torch.Tensor] = {}
    if text_to_cf is not None:
        if text is None or text.shape[0] != data.num_items:
            raise ArtifactError(f"predicting cold CF rows needs the text embeddings of all {data.num_items} items")
        predicted = ~has_cf.bool().cpu()
        vectors[predicted] = text_to_cf.predict(text[predicted].float().cpu()).float()
        extra_tensors = text_to_cf.tensors()
    if attention is not None:
        if attention.ndim != 2 or attention.shape[0] != data.num_items or attention.shape[1] == 0:
            raise ArtifactError(f"attention embeddings {tuple(attention.shape)} do not fit the catalogue of {data.num_items} items "
                                f"of {data.root}; expected ({data.num_items}, d_a)")
        extra_tensors["attention_embeddings"] = apply_unseen_rule(attention, has_cf)
    for name, values in (("CF embeddings", vectors), ("attention embeddings", extra_tensors.get("attention_embeddings"))):
        if values is not None and not torch.isfinite(values).all():
            bad = torch.nonzero(~torch.isfinite(values).all(dim=1)).flatten()[:5].tolist()
            raise ArtifactError(f"{name} contain NaN or infinite values (item_idx {bad}...); nothing was written")
    flags = has_cf.bool().cpu().to(torch.uint8)
    with atomic_directory(out_dir) as tmp:
        save_file({"embeddings": vectors.contiguous(), "has_cf": flags.contiguous(),
                   "predicted": predicted.to(torch.uint8).contiguous(), **{k: v.contiguous() for k, v in extra_tensors.items()}},
                  str(tmp / EMBEDDINGS_FILE), metadata={"format": "setrec-cf-v1"})
        files = {EMBEDDINGS_FILE: {"sha256": sha256_file(tmp / EMBEDDINGS_FILE)}}
        if sasrec is not None:
            from recsys.training.sasrec import save_sasrec

            model, config = sasrec
            save_sasrec(model, config, tmp / SASREC_DIR, extra=info.get("metrics"))
            for name in sorted(p.name for p in (tmp / SASREC_DIR).iterdir()):
                files[f"{SASREC_DIR}/{name}"] = {"sha256": sha256_file(tmp / SASREC_DIR / name)}
        manifest = {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "dataset": {"path": str(Path(data.root).resolve()), "fingerprint": data.fingerprint, "num_items": data.num_items},
            "shape": list(vectors.shape),
            **({"attention_shape": list(attention.shape)} if attention is not None else {}),
            "unseen_item_rule": ("predicted from text by a map fitted on items with a train interaction, has_cf = 0, predicted = 1"
                                 if text_to_cf is not None else "zero vector, has_cf = 0"),
            **({"text_to_cf": text_to_cf.stats} if text_to_cf is not None else {}),
            **info,
            "counts": {"items": data.num_items, "has_cf": int(flags.sum()), "no_cf": int(data.num_items - flags.sum()),
                       "predicted": int(predicted.sum()), **info.get("counts", {})},
            "files": files,
        }
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    return out_dir


def cf_manifest(directory: str | Path) -> dict:
    """The parsed ``manifest.json`` of a CF-embeddings folder, checked to be one."""
    manifest = read_json(Path(directory) / MANIFEST_FILE, f"CF embeddings {directory}")
    if manifest.get("kind") != KIND:
        raise ArtifactError(f"{directory} does not hold CF embeddings (manifest kind {manifest.get('kind')!r}); run `recsys tokenize cf`")
    return manifest


@dataclasses.dataclass
class CFArtifact:
    """Everything a CF-embeddings folder holds (:func:`load_cf_artifact`).

    Attributes:
        embeddings: (num_items, dim) float32; rows with ``has_cf`` False are predicted (``predicted``) or zero.
        has_cf: (num_items,) bool, True for items with a train interaction.
        predicted: (num_items,) bool, True for rows predicted from text (all False in folders
            written before the flag existed).
        text_to_cf: the stored :class:`~recsys.tokenizers.text_to_cf.TextToCF`, or None.
        attention: (num_items, d_a) float32 attention table of a decoupled SASRec (DARE; rows with
            ``has_cf`` False are zero), or None (shared embeddings, imports, older folders).
    """

    embeddings: torch.Tensor
    has_cf: torch.Tensor
    predicted: torch.Tensor
    text_to_cf: object | None = None
    attention: torch.Tensor | None = None


def load_cf_embeddings(directory: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a CF-embeddings folder after verifying its checksum, shapes and the unseen-item rule.

    Rows predicted from text are returned as zero vectors here (the contract of this interface:
    ``has_cf`` False means a zero row); :func:`load_cf_artifact` returns them.

    Args:
        directory: folder written by ``recsys tokenize cf``.

    Returns:
        (embeddings float32 (num_items, dim), has_cf bool (num_items,)).

    Example:
        >>> embeddings, has_cf = load_cf_embeddings("artifacts/ml-100k/cf")
    """
    artifact = load_cf_artifact(directory)
    return apply_unseen_rule(artifact.embeddings, artifact.has_cf), artifact.has_cf


def load_cf_artifact(directory: str | Path) -> CFArtifact:
    """Read a CF-embeddings folder with its predicted rows and text->CF map (checksum, shapes, rule verified).

    Example:
        >>> artifact = load_cf_artifact("artifacts/ml-100k/cf"); artifact.predicted.sum()
    """
    directory = Path(directory)
    manifest = cf_manifest(directory)
    path = directory / EMBEDDINGS_FILE
    sha = manifest.get("files", {}).get(EMBEDDINGS_FILE, {}).get("sha256")
    if sha is None:
        raise ArtifactError(f"{directory / MANIFEST_FILE} records no sha256 of {EMBEDDINGS_FILE}; rebuild the CF embeddings")
    tensors = read_safetensors_checked(path, sha)
    for name in ("embeddings", "has_cf"):
        if name not in tensors:
            raise ArtifactError(f"{path} has no tensor {name!r} (found {sorted(tensors)}); rebuild it")
    embeddings, flags = tensors["embeddings"], tensors["has_cf"]
    if embeddings.dtype != torch.float32 or embeddings.ndim != 2:
        raise ArtifactError(f"{path}: 'embeddings' must be float32 2-D, got {embeddings.dtype} {tuple(embeddings.shape)}")
    if flags.shape != (embeddings.shape[0],):
        raise ArtifactError(f"{path}: 'has_cf' has shape {tuple(flags.shape)}, expected ({embeddings.shape[0]},)")
    if list(embeddings.shape) != list(manifest.get("shape", embeddings.shape)):
        raise ArtifactError(f"{path}: shape {tuple(embeddings.shape)} differs from the manifest's {manifest.get('shape')}")
    has_cf = flags.bool()
    predicted = tensors["predicted"].bool() if "predicted" in tensors else torch.zeros_like(has_cf)
    if predicted.shape != has_cf.shape or bool((predicted & has_cf).any()):
        raise ArtifactError(f"{path}: 'predicted' must be ({has_cf.shape[0]},) and 0 wherever has_cf = 1; rebuild the CF embeddings")
    if embeddings[~has_cf & ~predicted].abs().sum() != 0:
        raise ArtifactError(f"{path}: rows with has_cf = 0 and predicted = 0 must be zero vectors; rebuild the CF embeddings")
    mapping = None
    if "text_to_cf_weight" in tensors and "text_to_cf_bias" in tensors:
        from recsys.tokenizers.text_to_cf import TextToCF

        mapping = TextToCF(tensors["text_to_cf_weight"].float(), tensors["text_to_cf_bias"].float(), dict(manifest.get("text_to_cf", {})))
    attention = tensors.get("attention_embeddings")
    if attention is not None:
        if attention.dtype != torch.float32 or attention.ndim != 2 or attention.shape[0] != embeddings.shape[0]:
            raise ArtifactError(f"{path}: 'attention_embeddings' must be float32 ({embeddings.shape[0]}, d_a), got "
                                f"{attention.dtype} {tuple(attention.shape)}; rebuild the CF embeddings")
        if list(attention.shape) != list(manifest.get("attention_shape", attention.shape)):
            raise ArtifactError(f"{path}: attention shape {tuple(attention.shape)} differs from the manifest's {manifest.get('attention_shape')}")
        if attention[~has_cf].abs().sum() != 0:
            raise ArtifactError(f"{path}: 'attention_embeddings' rows with has_cf = 0 must be zero vectors; rebuild the CF embeddings")
    elif "attention_shape" in manifest:
        raise ArtifactError(f"{path}: the manifest records attention embeddings {manifest['attention_shape']} but the file has none; rebuild it")
    return CFArtifact(embeddings, has_cf, predicted, mapping, attention)


# --------------------------------------------------------------------------- training


def train_cf_embeddings(data_dir: str | Path, out_dir: str | Path, config=None, log_to_mlflow: bool = True,
                        semantic_dir: str | Path | None = None) -> Path:
    """Train SASRec on the train split (early stopping on valid NDCG@10) and write its item embeddings.

    Args:
        data_dir: prepared dataset.
        out_dir: output folder (``cf_embeddings.safetensors``, ``manifest.json``, ``sasrec/``).
        config: :class:`recsys.models.sasrec.SASRecConfig` (default: the tuned defaults; ``hidden_size`` is the CF dim).
        log_to_mlflow: log the training run (experiment ``tokenizers``, run ``cf``) with the artifact.
        semantic_dir: text embeddings (``recsys tokenize semantic``) of the same dataset. Required
            when ``config.align`` is "con" or "gen" (RLMRec); when given, every item without a train
            interaction gets a CF embedding predicted from its text by a ridge map fitted on the
            items with one (:func:`recsys.tokenizers.text_to_cf.fit_text_to_cf`).
            With ``config.embeddings == "decoupled"`` (DARE) the CF embeddings stay the representation
            table and the attention table is stored too (``attention_embeddings``).

    Returns:
        ``out_dir``.

    Example:
        >>> train_cf_embeddings("data/ml-100k", "artifacts/ml-100k/cf", SASRecConfig(max_epochs=50))
    """
    from recsys.models.sasrec import SASRecConfig
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.training.sasrec import fit_sasrec

    config = config or SASRecConfig()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)  # fail before training, not after
    if config.align != "none" and semantic_dir is None:
        raise ConfigError(f"align={config.align!r} (RLMRec) needs the text embeddings: pass --semantic DIR (`recsys tokenize semantic`)")
    data = PreparedDataset.load(data_dir)
    text = None
    if semantic_dir is not None:
        from recsys.tokenizers.semantic import load_text_embeddings

        text = load_text_embeddings(semantic_dir, num_items=data.num_items)
    result = fit_sasrec(data, config, log_to_mlflow=log_to_mlflow, experiment="tokenizers", run_name="cf", text_embeddings=text)
    has_cf = torch.from_numpy(data.train_item_mask())
    mapping = None
    if text is not None:
        from recsys.tokenizers.text_to_cf import fit_text_to_cf

        mapping = fit_text_to_cf(text, result.model.item_embeddings().detach(), has_cf, seed=config.seed)
    info = {
        "source": "sasrec",
        "config": dataclasses.asdict(config),
        "metrics": {
            "valid": result.valid_metrics,
            "test": result.test_metrics,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "seconds_per_epoch": result.seconds_per_epoch,
        },
        "mlflow_run_id": result.mlflow_run_id,
    }
    if semantic_dir is not None:
        from recsys.tokenizers.semantic import text_embeddings_manifest

        info["semantic"] = {"path": str(Path(semantic_dir).resolve()), "encoder": text_embeddings_manifest(semantic_dir).get("encoder", {})}
    attention = result.model.attention_embeddings().detach() if config.embeddings == "decoupled" else None
    write_cf_embeddings(out_dir, result.model.item_embeddings(), has_cf, data, info, sasrec=(result.model, config),
                        text_to_cf=mapping, text=text, attention=attention)
    if log_to_mlflow and result.mlflow_run_id:
        from recsys import tracking

        tracking.log_metrics({"cf/items_without_cf": float((~has_cf).sum())}, result.mlflow_run_id)
        tracking.log_artifact(out_dir, result.mlflow_run_id, artifact_path="cf")
    return out_dir


# --------------------------------------------------------------------------- import


def _read_matrix_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(vectors, has_cf or None) of an .npy or .safetensors file; rows in item_idx order."""
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise DataFormatError(f"not a plain numeric .npy array ({error}); save it with np.save(allow_pickle=False)", path=path) from error
        return array, None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise DataFormatError(f"not a readable safetensors file ({error})", path=path) from error
    if "embeddings" in tensors:
        array = tensors["embeddings"]
    elif len(tensors) == 1:
        array = next(iter(tensors.values()))
    else:
        raise DataFormatError(f"holds tensors {sorted(tensors)}; name the embedding tensor 'embeddings'", path=path)
    flags = tensors.get("has_cf")
    if flags is not None:
        flags = np.asarray(flags).reshape(-1) != 0
        if flags.shape != (array.shape[0],):
            raise DataFormatError(f"'has_cf' has {flags.shape[0]} entries but 'embeddings' has {array.shape[0]} rows", path=path, column="has_cf")
    return array, flags


def _read_parquet_vectors(path: Path, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Vectors of a Parquet file placed in item_idx order by ``item_id``; missing ids get has_cf False."""
    import polars as pl

    try:
        frame = pl.read_parquet(path)
    except (pl.exceptions.ComputeError, OSError) as error:
        raise DataFormatError(f"cannot read Parquet ({error})", path=path) from error
    if "item_id" not in frame.columns:
        raise DataFormatError(f"column 'item_id' is missing (found {frame.columns})", path=path, column="item_id")
    list_columns = [c for c, t in frame.schema.items() if isinstance(t, (pl.List, pl.Array))]
    named = [c for c in VECTOR_COLUMNS if c in frame.columns]
    if named:
        column = named[0]
    elif len(list_columns) == 1:
        column = list_columns[0]
    else:
        raise DataFormatError(
            f"cannot tell which column holds the vectors (list columns: {list_columns}); name it 'vector'", path=path
        )
    ids = frame["item_id"].cast(pl.String).to_list()
    null_ids = [row + 1 for row, v in enumerate(ids) if v is None]
    if null_ids:
        raise DataFormatError(f"{len(null_ids)} row(s) without item_id, e.g. rows {null_ids[:5]}", path=path, column="item_id")
    seen: dict[str, int] = {}
    duplicates = []
    for row, item in enumerate(ids):
        if item in seen:
            duplicates.append(f"{item!r} (rows {seen[item] + 1} and {row + 1})")
        seen[item] = row
    if duplicates:
        raise DataFormatError(f"{len(duplicates)} duplicate item_id(s), e.g. {', '.join(duplicates[:3])}; keep one vector per item", path=path, column="item_id")
    index = {item: idx for idx, item in enumerate(item_ids)}
    unknown = [item for item in ids if item not in index]
    if unknown:
        raise UnknownItemError(
            f"{path}: {len(unknown)} item_id(s) are not in the catalogue (items.parquet), e.g. {unknown[:5]}; "
            "remove them or prepare the dataset that contains them"
        )
    vectors = frame[column].to_list()
    null_rows = [row + 1 for row, v in enumerate(vectors) if v is None]
    if null_rows:
        raise DataFormatError(f"{len(null_rows)} row(s) without a vector, e.g. rows {null_rows[:5]}; drop those rows instead", path=path, column=column)
    lengths = {len(v) for v in vectors}
    if len(lengths) > 1:
        first = len(vectors[0])
        bad = next(row for row, v in enumerate(vectors) if len(v) != first)
        raise DataFormatError(f"vectors differ in length ({sorted(lengths)}), e.g. row {bad + 1} has {len(vectors[bad])} values and row 1 has {first}", path=path, column=column)
    dim = lengths.pop() if lengths else 0
    if dim == 0:
        raise DataFormatError("no vectors (empty file or empty lists)", path=path, column=column)
    try:
        values = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise DataFormatError(f"vectors are not numeric ({error})", path=path, column=column) from error
    out = np.zeros((len(item_ids), dim), dtype=np.float64)
    flags = np.zeros(len(item_ids), dtype=bool)
    rows = np.array([index[item] for item in ids], dtype=np.int64)
    out[rows] = values
    flags[rows] = True
    return out, flags, {"file_rows": len(ids), "catalogue_items_missing_from_file": int(len(item_ids) - len(ids))}


def import_cf_embeddings(path: str | Path, data_dir: str | Path, out_dir: str | Path) -> Path:
    """Import external CF embeddings (.npy, .safetensors, .parquet) as a CF-embeddings folder.

    Rows of .npy / .safetensors files are items in item_idx order, so their row count must
    equal the catalogue size; Parquet rows are matched by ``item_id``. An item gets
    ``has_cf = 0`` (and the zero vector) when the file has no vector for it: an all-zero row,
    ``has_cf`` 0 in a safetensors file, or an id absent from a Parquet file; the manifest
    counts them, and counts the imported vectors of items without a train interaction.

    Args:
        path: the file to import.
        data_dir: the prepared dataset whose catalogue the embeddings describe.
        out_dir: output folder.

    Raises:
        DataFormatError: unreadable file, wrong shape, non-finite values, duplicate ids.
        UnknownItemError: Parquet ids that are not in the catalogue.

    Example:
        >>> import_cf_embeddings("sasrec_items.npy", "data/ml-100k", "artifacts/ml-100k/cf")
    """
    from recsys.pipelines.prepared import PreparedDataset

    path = Path(path)
    out_dir = Path(out_dir)
    if not path.is_file():
        raise ConfigError(f"--import {path}: the file does not exist")
    suffix = path.suffix.lower()
    if suffix not in IMPORT_SUFFIXES:
        raise ConfigError(f"--import {path}: use {', '.join(IMPORT_SUFFIXES)} (pickles are refused)")
    _check_out_dir(out_dir)
    data = PreparedDataset.load(data_dir)
    counts: dict = {}
    if suffix == ".parquet":
        item_ids = data.items["item_id"].cast(str).to_list()
        array, flags, counts = _read_parquet_vectors(path, item_ids)
    else:
        array, flags = _read_matrix_file(path)
        if array.ndim != 2:
            raise DataFormatError(f"embeddings must be 2-D (num_items, dim), got shape {array.shape}", path=path)
        if array.shape[0] != data.num_items:
            raise DataFormatError(
                f"has {array.shape[0]} rows but the catalogue of {data.root} has {data.num_items} items; rows must be "
                "the items in item_idx order (items.parquet), or import a Parquet file with item_id and vector columns",
                path=path,
            )
        if array.shape[1] == 0:
            raise DataFormatError("embeddings have 0 columns", path=path)
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise DataFormatError(f"embeddings must be real numbers, got dtype {array.dtype}", path=path)
    array = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)[:5].tolist()
        raise DataFormatError(
            f"{int((~finite).sum())} item(s) have NaN or infinite values, e.g. item_idx {bad}; use a zero row for an item without an embedding",
            path=path,
        )
    nonzero = np.abs(array).sum(axis=1) > 0
    flags = nonzero if flags is None else (flags & nonzero)
    trained = data.train_item_mask()
    counts.update(
        {
            "zero_or_missing_rows": int((~flags).sum()),
            "imported_for_items_without_train_interaction": int((flags & ~trained).sum()),
            "trained_items_without_vector": int((~flags & trained).sum()),
        }
    )
    info = {"source": "import", "import": {"path": str(path.resolve()), "sha256": sha256_file(path), "format": suffix.lstrip(".")}, "counts": counts}
    return write_cf_embeddings(out_dir, torch.from_numpy(array.astype(np.float32)), torch.from_numpy(flags), data, info)
