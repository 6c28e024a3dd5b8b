"""vLLM plugin: the set-identifier Qwen2 backbone as an out-of-tree pooling model.

vLLM calls :func:`register` in every process through the entry point declared in
pyproject.toml (``[project.entry-points."vllm.general_plugins"] setrec = ...``). The
model class is registered lazily by name, so importing this package never imports vLLM.

Example:
    >>> from recsys.serving.vllm_plugin import register
    >>> register()   # idempotent; vLLM does this itself when the package is installed
"""

from __future__ import annotations

ARCHITECTURE = "SetRecQwen2QueryModel"
MODEL_CLASS = "recsys.serving.vllm_plugin.model:SetRecQwen2QueryModel"


def register() -> None:
    """Register ``SetRecQwen2QueryModel`` with vLLM's model registry (safe to call twice)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
