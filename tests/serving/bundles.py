"""Small real bundles for the serving tests and benchmark, trained on MovieLens-100k in seconds.

The steps follow the real pipeline: ``recsys data prepare --source ml-100k``; text embeddings
of every item with the bundled all-MiniLM-L6-v2 (``build_text_embeddings``, the agreed
artifact); CF embeddings in the agreed format, here a truncated SVD of the train
user-item matrix as a fast stand-in for the SASRec CF tokenizer; a
:class:`~recsys.models.setrec.SetRecModel` trained with ``model.loss`` on next-item
targets of the train split in a plain loop; ``save_bundle``.

Example:
    >>> spec = BundleSpec(backbone="qwen", preset="tiny", steps=200)
    >>> data = prepare_ml100k(tmp / "data")
    >>> text = text_embeddings(data, tmp / "text", tiny_text_encoder(tmp / "bert"))
    >>> bundle_dir = build_bundle(data, tmp / "bundle", spec, text_dir=text)
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass
class BundleSpec:
    """What to train."""

    backbone: str = "qwen"
    """``qwen`` or ``t5``."""
    preset: str = "tiny"
    """SetRecModel backbone preset (``tiny`` for tests, ``small`` for the demo-size benchmark)."""
    num_semantic_tokens: int = 4
    """N (items have N + 1 tokens)."""
    num_prompt_tokens: int = 2
    """P, learnable prompt tokens."""
    num_response_tokens: int = 1
    """R, learnable response tokens."""
    steps: int = 200
    """Optimizer steps of the plain training loop."""
    batch_size: int = 64
    """Training examples per step."""
    max_len: int = 20
    """History length (last items kept)."""
    cf_dim: int = 32
    """Size of the SVD CF embeddings."""
    lr: float = 3e-3
    """AdamW learning rate."""
    beta: float = 0.5
    """Ranking weight written to the bundle."""
    seed: int = 0
    """Seeds data order and initial weights."""
    threads: int = 1
    """Torch threads while training (1 is fastest for these tiny models on a busy shared CPU)."""
    text_to_cf: bool = False
    """Give items without a train interaction a CF embedding predicted from their text by a ridge map
    fitted on warm items (``recsys.tokenizers.text_to_cf``), kept in the bundle for items added later."""


def prepare_ml100k(out_dir: Path) -> Path:
    """``recsys data prepare --source ml-100k --out out_dir`` (reuses an existing folder)."""
    from recsys.cli import main

    out_dir = Path(out_dir)
    if not (out_dir / "manifest.json").is_file():
        code = main(["data", "prepare", "--source", "ml-100k", "--out", str(out_dir)])
        if code != 0:
            raise RuntimeError(f"recsys data prepare failed with exit code {code}")
    return out_dir


def tiny_text_encoder(out_dir: Path) -> Path:
    """A real (random-weight) 2-layer, 32-d BERT folder with MiniLM's tokenizer: embeds 1.3k texts in seconds."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from recsys.tokenizers.text_encoder import default_encoder_path

    out_dir = Path(out_dir)
    if not (out_dir / "config.json").is_file():
        torch.manual_seed(0)
        config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128)
        BertModel(config).save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(str(default_encoder_path())).save_pretrained(out_dir)
    return out_dir


def text_embeddings(data_dir: Path, out_dir: Path, encoder_dir: Path | None = None) -> Path:
    """The agreed text-embedding artifact of every item (``encoder_dir`` or the bundled MiniLM; cached on disk)."""
    from recsys.tokenizers.semantic import SemanticConfig, build_text_embeddings
    from recsys.tokenizers.text_encoder import TextEncoderConfig

    out_dir = Path(out_dir)
    if not (out_dir / "manifest.json").is_file():
        encoder = TextEncoderConfig(path=str(encoder_dir) if encoder_dir else None, max_length=64 if encoder_dir else None)
        build_text_embeddings(data_dir, out_dir, SemanticConfig(encoder=encoder, progress=False, use_cache=encoder_dir is None))
    return out_dir


def svd_cf_embeddings(data, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_items, dim) CF embeddings from a truncated SVD of the train user-item matrix, and has_cf."""
    import polars as pl

    train = data.interactions.filter(pl.col("split") == "train")
    users = torch.as_tensor(train["user_idx"].to_numpy().astype("int64"))
    items = torch.as_tensor(train["item_idx"].to_numpy().astype("int64"))
    matrix = torch.zeros(data.num_users, data.num_items)
    matrix[users, items] = 1.0
    torch.manual_seed(0)
    _, s, v = torch.svd_lowrank(matrix, q=dim, niter=4)
    cf = (v * s.sqrt()).float()
    has_cf = matrix.sum(0) > 0
    cf[~has_cf] = 0.0
    return cf / cf.norm(dim=1, keepdim=True).clamp(min=1e-6).mean(), has_cf


def load_cf_artifact(cf_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``recsys tokenize cf`` output (agreed format): ``embeddings`` float32 and ``has_cf`` uint8."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(cf_dir) / "cf_embeddings.safetensors"))
    return tensors["embeddings"].float(), tensors["has_cf"].bool()


def build_bundle(data_dir: Path, out_dir: Path, spec: BundleSpec, text_dir: Path, cf_dir: Path | None = None) -> Path:
    """Train a SetRecModel per ``spec`` on the prepared dataset and save it as a bundle.

    ``cf_dir`` is a ``recsys tokenize cf`` output; without it the SVD stand-in is used.
    """
    from recsys.bundle import save_bundle
    from recsys.models.setrec import PRESETS, SetRecConfig, SetRecModel, pad_histories
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.models.item_tokens import ItemTokenEncoder
    from recsys.tokenizers.semantic import load_text_embeddings, text_embeddings_manifest

    started = time.perf_counter()
    data = PreparedDataset.load(data_dir)
    text_dir = Path(text_dir)
    if not (text_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{text_dir}: build the text embeddings first (text_embeddings())")
    text = load_text_embeddings(text_dir, num_items=data.num_items)
    cf, has_cf = load_cf_artifact(cf_dir) if cf_dir else svd_cf_embeddings(data, spec.cf_dim)
    preset = PRESETS[spec.backbone][spec.preset]
    hidden = preset.get("hidden_size", preset.get("d_model"))
    predicted, mapping = None, None
    if spec.text_to_cf:
        from recsys.tokenizers.text_to_cf import fit_text_to_cf

        mapping = fit_text_to_cf(text, cf, has_cf & torch.from_numpy(data.train_item_mask()), seed=spec.seed)
        predicted = ~has_cf
        cf = cf.clone()
        cf[predicted] = mapping.predict(text[predicted])
    torch.manual_seed(spec.seed)
    encoder = ItemTokenEncoder(cf, has_cf, text, spec.num_semantic_tokens, hidden, cf_predicted=predicted, text_to_cf=mapping)
    config = SetRecConfig(
        backbone=spec.backbone,
        preset=spec.preset,
        num_semantic_tokens=spec.num_semantic_tokens,
        num_prompt_tokens=spec.num_prompt_tokens,
        num_response_tokens=spec.num_response_tokens,
        dropout=0.0,
    )
    model = SetRecModel(config, encoder)
    examples = [(seq[max(0, t - spec.max_len) : t], seq[t]) for seq in data.train_sequences() for t in range(1, len(seq))]
    rng = random.Random(spec.seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.lr)
    model.train()
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        losses = _train(model, optimizer, examples, rng, spec)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    # steps=0: untrained weights, for timing benchmarks only (compute does not depend on weight values)
    metrics = {"train/loss_first": losses[0], "train/loss_last": sum(losses[-10:]) / min(10, len(losses))} if losses else {}
    return save_bundle(
        model,
        out_dir,
        beta=spec.beta,
        max_len=spec.max_len,
        items=data.items,
        dataset_fingerprint=data.fingerprint,
        config={"model": config.to_dict(), "serving_fixture": asdict(spec), "seconds": round(time.perf_counter() - started, 2)},
        metrics=metrics,
        text_encoder=text_embeddings_manifest(text_dir).get("encoder", {}),
    )


def _train(model, optimizer, examples, rng, spec: BundleSpec) -> list[float]:
    from recsys.models.setrec import pad_histories

    losses = []
    for _ in range(spec.steps):
        batch = rng.sample(examples, spec.batch_size)
        histories = pad_histories([h for h, _ in batch], spec.max_len)
        targets = torch.tensor([t for _, t in batch])
        loss = model.loss(histories, targets, alpha=0.1)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
