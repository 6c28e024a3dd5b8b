"""Write a vLLM checkpoint directory for ``SetRecQwen2QueryModel`` from a Qwen2 backbone.

The directory holds ``config.json`` (the backbone's Qwen2 config, architecture
``SetRecQwen2QueryModel`` and the ``setrec_*`` layout fields) and ``model.safetensors``
(the backbone weights under transformers' Qwen2 names). Prompt, response, query and
item embeddings are not in it: the vllm engine sends every request as prompt
embeddings. vLLM's offline front end still insists on a tokenizer, so a two-word
placeholder tokenizer is written too (no text is ever tokenized).

Example:
    >>> export_backbone(backbone, SetLayout(2, 1, 5), "/tmp/setrec-vllm")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from recsys.serving.vllm_plugin import ARCHITECTURE
from recsys.serving.vllm_plugin.layout import SetLayout

#: Bumped when the directory format changes; the engine re-exports on mismatch.
FORMAT_VERSION = 1


def export_backbone(backbone: torch.nn.Module, layout: SetLayout, out_dir: str | Path, *, max_positions: int | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for vLLM.

    Args:
        backbone: a transformers ``Qwen2Model`` (or a module holding one as ``.model``).
        layout: the token counts of the set layout.
        out_dir: target directory (created).
        max_positions: ``max_position_embeddings`` to write (default: the backbone's).

    Returns:
        ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = backbone.config.to_dict()
    config.update(
        architectures=[ARCHITECTURE],
        model_type="qwen2",
        setrec_prompt_tokens=layout.prompt_tokens,
        setrec_response_tokens=layout.response_tokens,
        setrec_item_tokens=layout.item_tokens,
        setrec_format_version=FORMAT_VERSION,
        torch_dtype="float32",
        use_sliding_window=False,
    )
    config.pop("dtype", None)
    config["dtype"] = "float32"
    if max_positions is not None:
        config["max_position_embeddings"] = int(max_positions)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    state = {name: tensor.detach().to(torch.float32).contiguous().clone() for name, tensor in backbone.state_dict().items()}
    state = {name: tensor for name, tensor in state.items() if not name.endswith("rotary_emb.inv_freq")}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_placeholder_tokenizer(out)
    return out


def write_placeholder_tokenizer(out_dir: Path) -> None:
    """A two-word tokenizer: vLLM's offline entry point insists on one, requests never use it.

    Every request is sent as prompt embeddings, so no text is ever tokenized; the file
    only satisfies the front end's start-up (its scoring and chat warm-up load a tokenizer).
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": 1 << 20},
            indent=2,
        )
    )
