"""Engines: histories of item indices -> query vectors, behind one interface.

A query vector is ``concat((1 - beta) h_0, beta h_1, ..., beta h_N)`` (the bundle's beta);
the FAISS index turns it into items. Two engines give the same vectors for the same
bundle (a parity test holds them to it):

- :class:`TorchEngine`: the bundle's :class:`~recsys.models.setrec.SetRecModel` (T5 or
  Qwen2), batched, no grad. ``cached_tokens=False`` runs ``model.query_vectors`` itself (the
  reference); the default gathers history tokens from the cached table and, for the sparse
  Qwen model, runs the last layer for the query rows only (``model.fast_query_states``); tests
  hold the two equal.
- :class:`VllmEngine`: the Qwen2 backbone as the out-of-tree vLLM pooling model of
  :mod:`recsys.serving.vllm_plugin`. Each user becomes one request whose prompt
  embeddings are the agreed layout ``[prompt][items][response][queries]``; vLLM batches the
  requests, the plugin rebuilds shared positions and the sparse mask, and returns the
  query states.

Both read the same items of a history: the bundle's long-history selection
(``model.bundle.history_selector()``, :mod:`recsys.models.history_selection`: the last
``max_len`` items, or with ``history.selection: dare`` the recent ones plus the older ones most
relevant to them under the attention embeddings), the rule the model was trained and evaluated with.

Both gather history item tokens from :class:`ItemTokens`, the model's item-token table
computed once (instead of running the item encoder on every history item of every
request); rows of items added at runtime (:meth:`recsys.serving.service.Recommender.add_item`)
are computed when a history first refers to them, so new items can appear in histories at once.

Example:
    >>> engine = TorchEngine(model, beta=0.4, max_len=50)   # model.bundle's history selection
    >>> engine.query_vectors([[3, 5, 7], [2]]).shape        # (2, K * d)
    >>> engine.selector([long_history])                      # the items the model reads
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch

from recsys.errors import ConfigError

ENGINES = ("torch", "vllm")


class Engine(Protocol):
    """What the service needs from an engine."""

    name: str

    def query_vectors(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """(B,) histories of item indices, oldest first -> (B, K*d) float32 query vectors."""
        ...

    def close(self) -> None:
        """Release what the engine holds (processes, temporary files)."""
        ...


class ItemTokens:
    """The model's (num_items, K, d) item-token table, kept in sync with its item encoder.

    Args:
        model: a :class:`~recsys.models.setrec.SetRecModel`.

    Example:
        >>> tokens, valid = ItemTokens(model).history(pad_histories([[1, 2]], 5))
    """

    def __init__(self, model) -> None:
        self.model = model
        with torch.no_grad():
            self.table = model.item_table().detach()

    def _sync(self) -> None:
        count = self.model.num_items
        if count > self.table.shape[0]:
            new = torch.arange(self.table.shape[0], count, device=self.table.device)
            with torch.no_grad():
                rows = self.model.encode_items(new).detach()
            self.table = torch.cat([self.table, rows.to(self.table)])

    def history(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same result as ``model.history_tokens(items)``: ((B, L, K, d) tokens, (B, L) valid)."""
        if items.numel() and int(items.max()) >= self.table.shape[0]:
            self._sync()
            if int(items.max()) >= self.table.shape[0]:
                from recsys.errors import UnknownItemError

                raise UnknownItemError(f"history item index {int(items.max())} is outside the catalogue of {self.table.shape[0]} items")
        valid = items >= 0
        tokens = self.table[items.clamp(min=0)]
        return tokens * valid[..., None, None], valid


class TorchEngine:
    """The bundle's model in PyTorch: batched, no grad.

    Args:
        model: a :class:`~recsys.models.setrec.SetRecModel` in eval mode.
        beta: ranking weight of the bundle.
        max_len: items of a history the model reads.
        batch_size: users per forward pass.
        cached_tokens: gather history tokens from the cached item-token table (the fast path).
        selector: which ``max_len`` items of a longer history are read
            (:class:`~recsys.models.history_selection.HistorySelector`); default: the bundle's
            (``model.bundle.history_selector``), or the last ``max_len`` for a model without a bundle.
    """

    name = "torch"

    def __init__(self, model, beta: float, max_len: int, batch_size: int = 256, cached_tokens: bool = True,
                 selector=None) -> None:
        from recsys.models.history_selection import model_selector

        self.model = model.eval()
        self.beta = float(beta)
        self.max_len = int(max_len)
        self.selector = selector or model_selector(model, self.max_len)
        self.batch_size = batch_size
        # The cached table is the fast path of the simultaneous model; the reference is model.query_vectors.
        self.tokens = ItemTokens(model) if cached_tokens and model.config.generation == "simultaneous" else None
        self.last_layer_queries_only = self.tokens is not None and model.has_fast_queries
        self.weights = model.dimension_weights(self.beta).to(model.prompt.device)

    @torch.inference_mode()
    def query_vectors(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        from recsys.models.setrec import pad_histories

        kept = self.selector(histories)
        parts = []
        for start in range(0, len(kept), self.batch_size):
            padded = pad_histories(kept[start : start + self.batch_size], self.max_len).to(self.model.prompt.device)
            if self.tokens is None:
                vectors = self.model.query_vectors(padded, self.beta)
            else:
                tokens, valid = self.tokens.history(padded)
                states = self.model.apply_history_prior(self.model.fast_query_states(tokens, valid), tokens, valid)
                vectors = (states * self.weights.to(states)[None, :, None]).flatten(1)
            parts.append(vectors.float().cpu())
        return torch.cat(parts).numpy()

    def close(self) -> None:
        return None


@dataclass
class VllmEngineConfig:
    """How the vllm engine runs the backbone."""

    max_num_seqs: int = 64
    """Most requests (users) vLLM puts in one forward pass."""
    dtype: str = "float32"
    """Compute dtype of the backbone (float32 for parity with the torch engine)."""
    in_process: bool = True
    """Run vLLM's engine core in this process (fast start, no copies of the prompt
    embeddings between processes); False starts vLLM's usual engine-core process."""
    workdir: str | None = None
    """Folder for the exported vLLM checkpoint; None uses a temporary folder removed on close."""
    kv_cache_memory_bytes: int = 1 << 26
    """Memory vLLM reserves for its KV cache; the model keeps none (encoder-only), so small."""


def vllm_supports(model) -> str | None:
    """None when ``model`` can run on the vllm engine, else the reason it cannot."""
    config = model.config
    if config.backbone != "qwen":
        return f"model.backbone is {config.backbone!r}; the vllm engine serves the qwen backbone (use --engine torch)"
    if config.attention != "sparse":
        return f"model.attention is {config.attention!r}; the vllm engine reproduces the sparse layout only (use --engine torch)"
    if config.generation != "simultaneous":
        return f"model.generation is {config.generation!r}; the vllm engine runs one pass (use --engine torch)"
    return None


class VllmEngine:
    """The Qwen2 backbone as a vLLM pooling model (out-of-tree ``SetRecQwen2QueryModel``).

    Args:
        model: the bundle's :class:`~recsys.models.setrec.SetRecModel` (qwen, sparse,
            simultaneous); its prompt, response and query embeddings and its item encoder
            build the prompt embeddings, its backbone weights go to vLLM.
        beta: ranking weight of the bundle.
        max_len: items of a history the model reads.
        config: vLLM settings.
        selector: which ``max_len`` items of a longer history are read (default: the bundle's, as
            :class:`TorchEngine`).

    Raises:
        ConfigError: the model cannot run on vLLM (the message says why).
    """

    name = "vllm"

    def __init__(self, model, beta: float, max_len: int, config: VllmEngineConfig | None = None, selector=None) -> None:
        reason = vllm_supports(model)
        if reason:
            raise ConfigError(reason)
        from recsys.models.history_selection import model_selector
        from recsys.serving.vllm_plugin.checkpoint import export_backbone
        from recsys.serving.vllm_plugin.layout import SetLayout

        self.model = model.eval()
        self.beta = float(beta)
        self.max_len = int(max_len)
        self.selector = selector or model_selector(model, self.max_len)
        self.config = config or VllmEngineConfig()
        k = model.tokens_per_item
        self.layout = SetLayout(model.config.num_prompt_tokens, model.config.num_response_tokens, k)
        self.weights = model.dimension_weights(self.beta).view(k, 1).float()
        self.tokens = ItemTokens(model)
        with torch.no_grad():
            self._prompt = model.prompt.detach().float().cpu()
            self._response = model.response.detach().float().cpu()
            self._queries = model.queries.detach().float().cpu()
        self._own_dir = self.config.workdir is None
        workdir = Path(self.config.workdir or tempfile.mkdtemp(prefix="setrec-vllm-"))
        max_model_len = self.layout.length(self.max_len)
        export_backbone(model.transformer(), self.layout, workdir, max_positions=max(max_model_len, 16))
        self.workdir = workdir
        self.llm = _start_llm(workdir, max_model_len, self.config)
        from vllm import PoolingParams

        self._params = PoolingParams(use_activation=False)

    def prompt_embeds(self, history: Sequence[int]) -> torch.Tensor:
        """(S, d) prompt embeddings of one history (already selected, at most ``max_len`` items) in the agreed layout."""
        items = torch.as_tensor(list(history), dtype=torch.long).view(1, -1)
        tokens, _ = self.tokens.history(items)
        d = self._prompt.shape[1]
        return torch.cat([self._prompt, tokens.reshape(-1, d).float().cpu(), self._response, self._queries])

    def query_vectors(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        kept = self.selector(histories)
        prompts = [{"prompt_embeds": self.prompt_embeds(h)} for h in kept]
        outputs = self.llm.encode(prompts, pooling_params=self._params, pooling_task="embed", use_tqdm=False)
        k = self.layout.item_tokens
        states = torch.stack([out.outputs.data.float().view(k, -1) for out in outputs])
        if self.model.history_prior is not None:  # vLLM runs the backbone; the prior is the model's own step
            from recsys.models.setrec import pad_histories

            device = self.model.prompt.device
            tokens, valid = self.tokens.history(pad_histories(kept, self.max_len).to(device))
            with torch.no_grad():
                states = self.model.apply_history_prior(states.to(device), tokens.float(), valid).cpu()
        return (states * self.weights).flatten(1).numpy()

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        if self._own_dir and getattr(self, "workdir", None) is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _start_llm(checkpoint: Path, max_model_len: int, config: VllmEngineConfig):
    """Start vLLM on an exported checkpoint, keeping its process-wide side effects contained."""
    if config.in_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # vLLM's CPU worker pins OpenMP threads to cores; inside a shared process, leave them be.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    from vllm import LLM

    from recsys.serving.vllm_plugin import register

    register()  # vLLM's plugin loader does this too; explicit for an uninstalled checkout
    set_num_threads = torch.set_num_threads  # the CPU worker replaces it with a no-op
    try:
        return LLM(
            model=str(checkpoint),
            runner="pooling",
            enable_prompt_embeds=True,
            dtype=config.dtype,
            enforce_eager=True,
            max_model_len=max_model_len,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=max(max_model_len, min(max_model_len * config.max_num_seqs, 1 << 16)),
            kv_cache_memory_bytes=config.kv_cache_memory_bytes,
            enable_prefix_caching=False,
            seed=0,
        )
    finally:
        torch.set_num_threads = set_num_threads


def make_engine(name: str, model, beta: float, max_len: int, vllm_config: VllmEngineConfig | None = None) -> Engine:
    """The engine called ``name`` (``torch`` or ``vllm``) over a loaded bundle model.

    Example:
        >>> engine = make_engine("torch", model, model.bundle.beta, model.bundle.max_len)
    """
    if name == "torch":
        return TorchEngine(model, beta, max_len)
    if name == "vllm":
        return VllmEngine(model, beta, max_len, vllm_config)
    raise ConfigError(f"--engine must be one of {ENGINES}, got {name!r}")
