"""The recommender core of the service: source item ids -> engine -> index -> scored items.

:class:`Recommender` owns a bundle's model, an engine (:mod:`.engines`) that turns
histories into query vectors, the FAISS :class:`~recsys.serving.index.ItemIndex` over the
item vectors, and the item map (source id <-> row, titles). It answers batches of
queries (the micro-batcher hands it whole batches) and adds items at runtime from their
text: the bundle's text encoder embeds the text, the item encoder gives the semantic
tokens and the CF token by the unseen-item rule, and the item is appended to the model's
item encoder (so it may appear in histories) and to the index (so it is retrievable) at
once. One lock orders searches and insertions; the text is embedded before it is taken, so
readers wait only for the append. Items can be marked unavailable (:meth:`set_available`):
they leave every answer but stay valid in histories. Durable changes go through
:class:`~recsys.serving.catalogue.Catalogue`, which commits them to a store first.

Example:
    >>> rec = Recommender.from_bundle("bundles/setrec-ml100k", engine="torch")
    >>> rec.recommend([Query(history=["50", "172"], k=5)])[0].items[0]
    >>> rec.add_item("new-1", "A heist comedy set in 1920s Chicago", title="The Sting II")
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from recsys.errors import ArtifactError, ConfigError, SetrecError, UnknownItemError
from recsys.serving.catalogue import DuplicateItemError
from recsys.serving.index import IndexConfig, ItemIndex


class NoKnownHistoryError(UnknownItemError):
    """No item of a history is in the catalogue: nothing to recommend from."""


class TextEncoderUnavailableError(SetrecError):
    """The bundle's text encoder cannot be loaded, so items cannot be added from text."""


@dataclass
class Query:
    """One recommend request in source ids (see :class:`recsys.serving.schemas.RecommendRequest`)."""

    history: Sequence[str]
    k: int = 10
    exclude_history: bool = True
    exclude: Sequence[str] = ()
    candidates: Sequence[str] | None = None


@dataclass
class Recommendation:
    """Top items of one query, best first.

    Attributes:
        ids / scores / titles: the items.
        unknown_items: ids of the query that are not in the catalogue (ignored).
    """

    ids: list[str]
    scores: list[float]
    titles: list[str | None]
    unknown_items: list[str] = field(default_factory=list)


#: Nice increment of the text-encoding thread (Linux: per-thread priority).
ENCODE_NICE = 10


def _lower_thread_priority(increment: int) -> None:
    """Raise the calling thread's nice value by ``increment`` (Linux applies it to the thread only)."""
    import os

    if increment <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, min(19, current + increment))
    except OSError:  # not permitted here: keep the priority
        pass


def resolve_model(uri: str) -> tuple[Path, str, str]:
    """A bundle directory with its model name and version, from a path or ``models:/name@alias``.

    Registry URIs are downloaded by ``recsys.training.registry.resolve_model_uri``; the
    version is the registered version number (``recsys register``).

    Raises:
        ArtifactError: the URI cannot be resolved (the message says what to check).

    Example:
        >>> resolve_model("models:/setrec@champion")   # (Path(...), "setrec", "3")
    """
    if not uri.startswith("models:/"):
        path = Path(uri)
        if not path.is_dir():
            raise ArtifactError(f"--bundle {uri}: no such directory; give a bundle directory or --model models:/NAME@ALIAS")
        return path, path.resolve().name, _bundle_version(path)
    spec = uri[len("models:/") :]
    name, sep, ref = spec.partition("@")
    if not sep:
        name, _, ref = spec.partition("/")
    if not name or not ref:
        raise ArtifactError(f"--model {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    from recsys import tracking

    tracking.configure()
    try:
        from mlflow import MlflowClient

        client = MlflowClient()
        version = (client.get_model_version_by_alias(name, ref) if sep else client.get_model_version(name, ref)).version
    except Exception as error:  # mlflow raises MlflowException subclasses and connection errors
        raise ArtifactError(
            f"--model {uri}: not found in the registry at {tracking.tracking_uri()} ({error}); "
            "register a bundle with `recsys register` or set MLFLOW_TRACKING_URI"
        ) from error
    from recsys.training.registry import resolve_model_uri

    path = Path(resolve_model_uri(uri))
    return path, name, str(version)


def _bundle_version(path: Path) -> str:
    import json

    try:
        manifest = json.loads((path / "manifest.json").read_text())
        return "sha-" + manifest["files"]["model.safetensors"][:12]
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


class Recommender:
    """Ranks catalogue items for histories of source item ids.

    Args:
        model: the bundle's :class:`~recsys.models.setrec.SetRecModel` (eval mode).
        engine: an engine over that model (``torch`` or ``vllm``).
        index: item index over the model's flattened item token rows.
        item_ids: source id of each item row.
        titles: display title of each item row (None when unknown).
        model_name / model_version: reported with every answer.
        text_encoder: description of the text encoder (bundle manifest) for :meth:`add_item`.
        text_encoder_dir: where the text encoder is on this machine (``recsys serve --text-encoder``);
            None looks at the recorded path, then at the bundled all-MiniLM-L6-v2; each candidate
            is accepted only with the recorded fingerprint.
        dataset_fingerprint: the bundle's dataset fingerprint (names its catalogue in a store).
        encode_nice: how much lower the CPU priority of the text-encoding thread is than the
            process's (Linux nice increments, 0 to keep it equal); on a busy CPU, recommendations
            then get the cores before item insertions do.
    """

    def __init__(
        self,
        model,
        engine,
        index: ItemIndex,
        item_ids: Sequence[str],
        titles: Sequence[str | None],
        model_name: str,
        model_version: str,
        text_encoder: dict | None = None,
        text_encoder_dir: str | Path | None = None,
        dataset_fingerprint: str = "",
        encode_nice: int = ENCODE_NICE,
    ) -> None:
        if len(item_ids) != len(index) or len(titles) != len(index):
            raise ArtifactError(f"{len(item_ids)} item ids and {len(titles)} titles for an index of {len(index)} items")
        self.model = model
        self.engine = engine
        self.index = index
        self.model_name = model_name
        self.model_version = model_version
        self.text_encoder_info = dict(text_encoder or {})
        self._ids: list[str] = [str(i) for i in item_ids]
        self._row = {item: row for row, item in enumerate(self._ids)}
        if len(self._row) != len(self._ids):
            raise ArtifactError("the catalogue has duplicate item ids; re-run `recsys data prepare`")
        self._titles: list[str | None] = list(titles)
        self._added: list[bool] = [False] * len(self._ids)
        self._unavailable: set[int] = set()
        self._lock = threading.RLock()
        self._encode_lock = threading.Lock()  # the text encoder is not thread-safe; it is not the reader's lock
        self._encode_executor = None  # one thread of lower CPU priority for text encoding (see embed_texts)
        self._text_encoder = None
        self.text_encoder_dir = Path(text_encoder_dir) if text_encoder_dir else None
        self.dataset_fingerprint = dataset_fingerprint
        self.encode_nice = int(encode_nice)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        engine: str = "torch",
        *,
        model_name: str | None = None,
        model_version: str | None = None,
        index_config: IndexConfig | None = None,
        vllm_config=None,
        check_table: bool = True,
        text_encoder_dir: str | Path | None = None,
    ) -> "Recommender":
        """Load and verify a bundle (checksums, schema version) and start an engine on it.

        Args:
            path: bundle directory.
            engine: ``torch`` or ``vllm``.
            model_name / model_version: reported in answers (default: folder name and model checksum).
            index_config: how to index (default exact: the bundle's ``index.faiss`` as written).
            vllm_config: :class:`~recsys.serving.engines.VllmEngineConfig` for ``engine="vllm"``.
            check_table: verify that the stored item table equals the model's item table.
            text_encoder_dir: the bundle's text encoder on this machine (see the class arguments).

        Raises:
            ArtifactError / ConfigError: the bundle is invalid, or the engine cannot run it.
        """
        import polars as pl
        from safetensors.torch import load_file

        from recsys.bundle import load_bundle
        from recsys.serving.engines import ENGINES, make_engine

        if engine not in ENGINES:
            raise ConfigError(f"--engine must be one of {ENGINES}, got {engine!r}")
        path = Path(path)
        model = load_bundle(path)
        info = model.bundle
        table = load_file(str(info.item_tokens_path))["tokens"].float()
        if check_table:
            with torch.no_grad():
                computed = model.item_table().float()
            if computed.shape != table.shape or not torch.allclose(computed, table, atol=1e-4, rtol=1e-4):
                raise ArtifactError(f"{info.item_tokens_path} does not match the model's item table; re-export the bundle")
        vectors = table.flatten(1).numpy()
        if index_config is None or index_config.kind == "exact":
            index = ItemIndex.load(info.index_path, vectors, index_config or IndexConfig())
        else:
            index = ItemIndex(vectors, index_config)
        try:
            items = pl.read_parquet(info.items_path)
        except Exception as error:  # polars raises ComputeError, OSError, ... for a file that is not Parquet
            raise ArtifactError(f"{info.items_path} is not a readable Parquet file ({' '.join(str(error).split())[:200]}); re-export the bundle") from error
        missing = {"item_idx", "item_id"} - set(items.columns)
        if missing:
            raise ArtifactError(f"{info.items_path} has no column {sorted(missing)}; re-export the bundle")
        items = items.sort("item_idx")
        if items.height != table.shape[0] or items["item_idx"].to_list() != list(range(items.height)):
            raise ArtifactError(f"{info.items_path}: item_idx must be 0..{table.shape[0] - 1}; re-export the bundle")
        title_column = "title" if "title" in items.columns else "text" if "text" in items.columns else None
        titles = items[title_column].cast(pl.String).to_list() if title_column else [None] * items.height
        runner = make_engine(engine, model, info.beta, info.max_len, vllm_config)
        return cls(
            model,
            runner,
            index,
            items["item_id"].cast(pl.String).to_list(),
            titles,
            model_name or path.resolve().name,
            model_version or _bundle_version(path),
            info.text_encoder,
            text_encoder_dir=text_encoder_dir,
            dataset_fingerprint=str(info.manifest.get("dataset_fingerprint", "")),
        )

    # ------------------------------------------------------------------ catalogue
    @property
    def num_items(self) -> int:
        return len(self._ids)

    def has(self, item_id: str) -> bool:
        """True when ``item_id`` is in the catalogue (available or not)."""
        return item_id in self._row

    def _known_row(self, item_id: str, hint: str = "") -> int:
        """The row of ``item_id`` (call under the reader lock); ``hint`` ends the error message.

        Raises:
            UnknownItemError: the id is not in the catalogue.
        """
        row = self._row.get(item_id)
        if row is None:
            raise UnknownItemError(f"item {item_id!r} is not in the catalogue{hint}")
        return row

    def item(self, item_id: str) -> dict:
        """Catalogue entry of ``item_id``: id, index, title, has_cf, cf_predicted, added, available.

        Raises:
            UnknownItemError: the id is not in the catalogue.
        """
        with self._lock:
            row = self._known_row(item_id, "; add it with POST /v1/items")
            has_cf = bool(self.model.item_encoder.has_cf[row])
            predicted = bool(self.model.item_encoder.cf_predicted[row])
            return {
                "id": item_id, "index": row, "title": self._titles[row], "has_cf": has_cf, "cf_predicted": predicted,
                "added": self._added[row], "available": row not in self._unavailable,
            }

    def _rows(self, ids: Sequence[str], unknown: list[str], seen: set[str]) -> list[int]:
        rows = []
        for item in ids:
            row = self._row.get(item)
            if row is None:
                if item not in seen:
                    seen.add(item)
                    unknown.append(item)
            else:
                rows.append(row)
        return rows

    # ------------------------------------------------------------------ ranking
    def recommend(self, queries: Sequence[Query]) -> list[Recommendation | SetrecError]:
        """Answer a batch of queries with one engine call and one index search.

        A query whose history has no known item gets a :class:`NoKnownHistoryError` in
        its place (the others are answered); nothing raises for one bad query.

        Example:
            >>> rec.recommend([Query(["1", "2"], k=3), Query(["nope"])])   # [Recommendation, NoKnownHistoryError]
        """
        out: list[Recommendation | SetrecError | None] = [None] * len(queries)
        histories, excludes, candidates, rows, unknowns = [], [], [], [], []
        with self._lock:
            for position, query in enumerate(queries):
                unknown: list[str] = []
                seen: set[str] = set()
                history = self._rows(query.history, unknown, seen)
                if not history:
                    out[position] = NoKnownHistoryError(
                        f"history: none of its {len(query.history)} item ids is in the catalogue "
                        f"(e.g. {list(query.history)[:3]}); send ids of catalogue items"
                    )
                    continue
                exclude = set(self._rows(query.exclude, unknown, seen))
                if query.exclude_history:
                    exclude.update(history)
                if self._unavailable:
                    exclude.update(self._unavailable)
                pool = None if query.candidates is None else self._rows(query.candidates, unknown, seen)
                histories.append(history)
                excludes.append(exclude)
                candidates.append(pool)
                rows.append(position)
                unknowns.append(unknown)
            if histories:
                vectors = self.engine.query_vectors(histories)
                k = max(queries[p].k for p in rows)
                found = self.index.search(vectors, k, excludes, candidates)
                for i, position in enumerate(rows):
                    take = queries[position].k
                    ids = found.ids[i][:take].tolist()
                    out[position] = Recommendation(
                        ids=[self._ids[r] for r in ids],
                        scores=[float(s) for s in found.scores[i][:take]],
                        titles=[self._titles[r] for r in ids],
                        unknown_items=unknowns[i],
                    )
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ cold start
    def _encoder_candidates(self) -> list[tuple[str, Path]]:
        """Where the bundle's text encoder may be on this machine, most specific first."""
        from recsys.tokenizers.text_encoder import default_encoder_path

        candidates = []
        if self.text_encoder_dir is not None:
            candidates.append(("--text-encoder", self.text_encoder_dir))
        if self.text_encoder_info.get("path"):
            candidates.append(("the path recorded in the bundle", Path(self.text_encoder_info["path"])))
        try:
            candidates.append(("the bundled all-MiniLM-L6-v2", default_encoder_path()))
        except ImportError:
            pass
        return candidates

    def _encoder(self):
        """The bundle's text encoder, found by :meth:`_encoder_candidates` and its fingerprint; loaded once.

        Messages name no path of this server: the caller may show them to a client.
        """
        if self._text_encoder is not None:
            return self._text_encoder
        from recsys.tokenizers.text_encoder import TextEncoder, TextEncoderConfig

        info = self.text_encoder_info
        wanted = info.get("fingerprint")
        if not wanted and not info.get("path"):
            raise TextEncoderUnavailableError("the bundle records no text encoder; items cannot be added from text")
        tried = []
        for where, folder in self._encoder_candidates():
            if not folder.is_dir():
                tried.append(f"{where}: not found")
                continue
            try:
                encoder = TextEncoder(
                    TextEncoderConfig(path=str(folder), pooling=info.get("pooling"), normalize=info.get("normalize"), max_length=info.get("max_length"))
                )
            except ConfigError:
                tried.append(f"{where}: not a model folder")
                continue
            if wanted and encoder.fingerprint != wanted:
                tried.append(f"{where}: fingerprint {encoder.fingerprint}")
                continue
            if encoder.dim != self.model.item_encoder.text_embeddings.shape[1]:
                tried.append(f"{where}: {encoder.dim}-d vectors, the model reads {self.model.item_encoder.text_embeddings.shape[1]}-d")
                continue
            self._text_encoder = encoder
            return encoder
        raise TextEncoderUnavailableError(
            f"the bundle's text encoder (fingerprint {wanted or 'unrecorded'}) is not on this server ({'; '.join(tried)}); "
            "start recsys serve with --text-encoder DIR pointing at that encoder"
        )

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), text_dim) float32 embeddings by the bundle's text encoder; takes no reader lock.

        Raises:
            TextEncoderUnavailableError: the encoder cannot be found or loaded.
        """
        with self._encode_lock:
            if self._encode_executor is None:
                from concurrent.futures import ThreadPoolExecutor

                self._encode_executor = ThreadPoolExecutor(1, "setrec-encode", initializer=_lower_thread_priority, initargs=(self.encode_nice,))
            return self._encode_executor.submit(self._encode, list(texts)).result()

    def _encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._encoder().encode_batch(texts), dtype=np.float32)

    def insert_items(self, item_ids: Sequence[str], vectors: np.ndarray, titles: Sequence[str | None], added: bool = True) -> list[int]:
        """Append items from their text embeddings to the model and the index; returns their rows.

        Holds the reader lock only for the append (the item encoder on the new rows and one index
        add). Semantic tokens come from the bundle's item encoder; the CF embedding is predicted from
        the text by the bundle's text->CF map (fitted on warm items at training), or is the zero
        vector for bundles without one (the projection bias as CF token).

        Raises:
            DuplicateItemError: an id exists (nothing is appended).
        """
        vectors_t = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        with self._lock:
            clash = [i for i in item_ids if i in self._row]
            if clash or len(set(item_ids)) != len(item_ids):
                raise DuplicateItemError(f"id: item {(clash or list(item_ids))[0]!r} is already in the catalogue")
            new = self.model.item_encoder.add_items(vectors_t)
            with torch.no_grad():
                tokens = self.model.encode_items(new).float().cpu()
            rows = self.index.add(tokens.flatten(1).numpy())
            if rows.tolist() != new.tolist():
                raise ArtifactError(f"index rows {rows.tolist()} and item encoder rows {new.tolist()} differ; restart the service")
            for item_id, title, row in zip(item_ids, titles, rows.tolist()):
                self._ids.append(item_id)
                self._row[item_id] = row
                self._titles.append(title)
                self._added.append(added)
            return rows.tolist()

    def set_available(self, item_id: str, available: bool) -> dict:
        """Put an item back into, or take it out of, every answer (it stays valid in histories).

        Raises:
            UnknownItemError: the id is not in the catalogue.
        """
        with self._lock:
            row = self._known_row(item_id)
            if available:
                self._unavailable.discard(row)
            else:
                self._unavailable.add(row)
            return self.item(item_id)

    def add_item(self, item_id: str, text: str, title: str | None = None) -> dict:
        """Add an item from its text, in memory only; retrievable (and usable in histories) when this returns.

        The service adds items through :class:`~recsys.serving.catalogue.Catalogue`, which commits
        them to its store first.

        Raises:
            DuplicateItemError: the id exists.
            TextEncoderUnavailableError: the bundle's text encoder cannot be loaded.
        """
        if item_id in self._row:
            raise DuplicateItemError(f"id: item {item_id!r} is already in the catalogue")
        vector = self.embed_texts([text])
        self.insert_items([item_id], vector, [title])
        return self.item(item_id)

    def close(self) -> None:
        """Stop the engine and the encoding thread."""
        self.engine.close()
        if self._encode_executor is not None:
            self._encode_executor.shutdown(wait=True)
            self._encode_executor = None
