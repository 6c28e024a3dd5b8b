"""The set-identifier Qwen2 backbone as a vLLM pooling model that returns the query states.

Input: one request per user whose prompt embeddings are the agreed decoder-only layout
``[prompt P] [L items x (N+1) tokens] [response R] [queries N+1]`` (built by the vllm
engine from the bundle). Output: the final hidden states (after the backbone's final
norm) of the N+1 query tokens, flattened to ``(N+1) * d``: the ``embed`` pooling task.

What differs from vLLM's own Qwen2: positions and the attention mask. vLLM passes
ordinary positions restarting at 0 per sequence; the model rebuilds the shared positions
and the sparse mask of each sequence from its length (:mod:`.layout`) and runs
attention in plain PyTorch (``scaled_dot_product_attention`` on a padded per-sequence
view), so no attention backend can drop the mask. The model declares itself
``encoder_only``: vLLM then turns chunked prefill and prefix caching off for it (each
request is one whole prefill) and keeps no KV cache. The same code runs on the CPU and
GPU builds of vLLM.

The checkpoint directory is written by :func:`recsys.serving.vllm_plugin.checkpoint.export_backbone`:
a Qwen2 ``config.json`` (architecture ``SetRecQwen2QueryModel`` plus ``setrec_*`` layout
fields) and the backbone weights under transformers' Qwen2 names.

Example (after ``recsys.serving.vllm_plugin.register()``, done by vLLM's plugin loader):
    >>> llm = vllm.LLM(model=checkpoint_dir, runner="pooling", enable_prompt_embeds=True,
    ...                dtype="float32", enforce_eager=True, enable_prefix_caching=False)
    >>> out = llm.encode([{"prompt_embeds": embeds}], pooling_task="embed")
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from typing import ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.pooler import Pooler
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.models.qwen2 import Qwen2MLP
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper
from vllm.transformers_utils.config import set_default_rope_theta
from vllm.v1.pool.metadata import PoolingMetadata

from recsys.serving.vllm_plugin.layout import PackedLayout, SetLayout, packed_layout

ARCHITECTURE = "SetRecQwen2QueryModel"


def layout_of(config) -> SetLayout:
    """The :class:`SetLayout` stored in a checkpoint's config (``setrec_*`` fields)."""
    try:
        return SetLayout(
            prompt_tokens=int(config.setrec_prompt_tokens),
            response_tokens=int(config.setrec_response_tokens),
            item_tokens=int(config.setrec_item_tokens),
        )
    except AttributeError as error:
        raise ValueError(
            f"config.json of a {ARCHITECTURE} checkpoint lacks {error.name!r}; "
            "write the checkpoint with recsys.serving.vllm_plugin.checkpoint.export"
        ) from error


class SetRecAttention(nn.Module):
    """Qwen2 self-attention with shared positions and the sparse set mask."""

    def __init__(self, config, quant_config=None, prefix: str = "") -> None:
        super().__init__()
        tp_size = get_tensor_model_parallel_world_size()
        self.total_num_heads = config.num_attention_heads
        self.num_heads = self.total_num_heads // tp_size
        self.total_num_kv_heads = config.num_key_value_heads
        self.num_kv_heads = max(1, self.total_num_kv_heads // tp_size)
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.total_num_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scaling = self.head_dim**-0.5
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size,
            self.head_dim,
            self.total_num_heads,
            self.total_num_kv_heads,
            bias=True,
            quant_config=quant_config,
            prefix=f"{prefix}.qkv_proj",
        )
        self.o_proj = RowParallelLinear(
            self.total_num_heads * self.head_dim,
            config.hidden_size,
            bias=False,
            quant_config=quant_config,
            prefix=f"{prefix}.o_proj",
        )
        self.rotary_emb = get_rope(
            self.head_dim,
            max_position=config.max_position_embeddings,
            rope_parameters=config.rope_parameters,
        )

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, packed: PackedLayout) -> torch.Tensor:
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        batch, t_max = packed.gather.shape

        def padded(x: torch.Tensor, heads: int) -> torch.Tensor:
            # (T_total, heads*hd) -> (B, heads, T_max, hd)
            return x.view(-1, heads, self.head_dim)[packed.gather].transpose(1, 2)

        out = F.scaled_dot_product_attention(
            padded(q, self.num_heads),
            padded(k, self.num_kv_heads),
            padded(v, self.num_kv_heads),
            attn_mask=packed.mask,
            scale=self.scaling,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )
        out = out.transpose(1, 2).reshape(batch * t_max, self.q_size)[packed.flat_index]
        output, _ = self.o_proj(out)
        return output


class SetRecDecoderLayer(nn.Module):
    """A Qwen2 decoder layer whose attention is :class:`SetRecAttention`."""

    def __init__(self, config, quant_config=None, prefix: str = "") -> None:
        super().__init__()
        self.self_attn = SetRecAttention(config, quant_config, prefix=f"{prefix}.self_attn")
        self.mlp = Qwen2MLP(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            hidden_act=config.hidden_act,
            quant_config=quant_config,
            prefix=f"{prefix}.mlp",
        )
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, positions, hidden_states, residual, packed):
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states, packed)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class SetRecQueryPooler(Pooler):
    """Pools the last N+1 tokens of each sequence (the queries), flattened, in float32."""

    def __init__(self, layout: SetLayout) -> None:
        super().__init__()
        self.layout = layout

    def get_supported_tasks(self) -> Set[str]:
        return {"embed"}

    def forward(self, hidden_states: torch.Tensor, pooling_metadata: PoolingMetadata):
        cursor = pooling_metadata.get_pooling_cursor()
        if cursor.is_partial_prefill():
            raise RuntimeError(f"{ARCHITECTURE} needs each request in one prefill; chunked prefill must stay off")
        for length in cursor.prompt_lens_cpu.tolist():
            if self.layout.num_items(length) is None:
                raise ValueError(f"a request of {length} tokens does not fit the set layout {self.layout}")
        count = self.layout.item_tokens
        offsets = torch.arange(count - 1, -1, -1, device=hidden_states.device)
        rows = cursor.last_token_indices_gpu.unsqueeze(1) - offsets.unsqueeze(0)
        pooled = hidden_states[rows].flatten(1).to(torch.float32)
        return list(pooled.unbind(0))


class SetRecQwen2QueryModel(nn.Module):
    """vLLM pooling model: set-layout Qwen2 backbone -> flattened query states."""

    is_pooling_model: ClassVar[Literal[True]] = True
    attn_type: ClassVar[str] = "encoder_only"
    default_seq_pooling_type: ClassVar[str] = "LAST"
    default_tok_pooling_type: ClassVar[str] = "ALL"
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={"model.": "", "lm_head.": None},
        orig_to_new_suffix={".rotary_emb.inv_freq": None},
        orig_to_new_stacked={
            ".q_proj": (".qkv_proj", "q"),
            ".k_proj": (".qkv_proj", "k"),
            ".v_proj": (".qkv_proj", "v"),
            ".gate_proj": (".gate_up_proj", 0),
            ".up_proj": (".gate_up_proj", 1),
        },
    )

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config.get_text_config()
        quant_config = vllm_config.quant_config
        set_default_rope_theta(config, default_theta=1000000)
        self.config = config
        self.layout = layout_of(config)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, prefix="embed_tokens")
        self.layers = nn.ModuleList(
            SetRecDecoderLayer(config, quant_config, prefix=f"layers.{i}") for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.pooler = SetRecQueryPooler(self.layout)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors=None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        packed = packed_layout(self.layout, positions)
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(packed.positions, hidden_states, residual, packed)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loader = AutoWeightsLoader(self)
        return loader.load_weights(weights, mapper=self.hf_to_vllm_mapper)
