"""The quality benchmark's shared inputs: the prepared dataset and the tokenizer artifacts its methods need.

Text embeddings, CF embeddings and RQ-KMeans ids are built once per benchmark and reused when their
manifest names the same dataset fingerprint; methods that need item text are refused by name on
datasets without it.

Example:
    >>> context = prepare_artifacts(load_benchmark_config("configs/bench-ml100k.yaml"))
    >>> context.data.num_items
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError
from recsys.evaluation.benchmark_config import BenchmarkConfig
from recsys.evaluation.methods import MethodContext


def _manifest_fingerprint(path: Path, *keys: str) -> str | None:
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return None
    value: Any = json.loads(manifest.read_text())
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, str) else None


#: Method kinds that read item text, and why (interaction-only datasets refuse them by name).
TEXT_KINDS = {
    "tiger": "its semantic ids are RQ-KMeans codes of the items' text embeddings",
    "text": "it ranks items by the cosine of their text embeddings",
    "setrec": "its semantic tokens are made from the items' text embeddings (model.token_set: cf needs no text)",
}


def setrec_token_set(config: BenchmarkConfig, method) -> str:
    """``model.token_set`` of a setrec method: its overrides over ``setrec.overrides`` over the base config."""
    from recsys.config import config_from_values
    from recsys.training.setrec_config import TrainJobConfig, load_train_config

    overrides = {**config.setrec.overrides, **method.overrides}
    if config.setrec.config is not None:
        return load_train_config(config.setrec.config, overrides).model.token_set
    return config_from_values(TrainJobConfig, config.setrec.base or {}, overrides, validate=False,
                              where=f"{method.name}.overrides").model.token_set


def refuse_text_methods(config: BenchmarkConfig, data, log=print) -> dict[str, str]:
    """Remove the methods that need item text from ``config`` when some item has none; return them with the reason.

    Interaction-only datasets (no item file, or items without any text) still run every
    method that does not need text (popularity, SASRec, the CF-only set-identifier model
    ``model.token_set: cf``); the others are refused by name here, before any training starts.
    Raises ConfigError when no method is left.
    """
    from recsys.pipelines.prepared import items_without_text

    without_text = items_without_text(data.items)
    if not without_text:
        return {}
    cf_align = (config.sasrec if config.cf is None else config.cf).get("align", "none")
    refused = {m.name: f"needs item text: {TEXT_KINDS[m.kind]}" for m in config.methods
               if m.kind in TEXT_KINDS and not (m.kind == "setrec" and setrec_token_set(config, m) == "cf")}
    refused |= {m.name: f"needs item text: its CF tokenizer's RLMRec alignment (align: {cf_align}) reads the items' text embeddings"
                for m in config.methods if m.kind == "setrec" and m.name not in refused and cf_align != "none"}
    refused |= {m.name: "needs item text: its RLMRec alignment (align != none) reads the items' text embeddings"
                for m in config.methods
                if m.kind == "sasrec" and m.overrides.get("align", config.sasrec.get("align", "none")) != "none"}
    if not refused:
        return {}
    config.methods = [m for m in config.methods if m.name not in refused]
    why = f"{without_text:,} of {data.num_items:,} items have no text"
    if not config.methods:
        raise ConfigError(f"every method needs item text and {why}: " + "; ".join(f"{k} {v}" for k, v in refused.items()))
    log(f"refused before training ({why}): " + "; ".join(f"{name} ({reason})" for name, reason in refused.items()))
    return {name: f"{reason}; {why}" for name, reason in refused.items()}


def prepare_artifacts(config: BenchmarkConfig, log=print) -> MethodContext:
    """Prepare the dataset and build the tokenizer artifacts the listed methods need.

    Artifacts already in ``work_dir`` are reused when their manifest names the same
    dataset fingerprint; the text embeddings also come from the embedding cache.
    """
    import torch

    from recsys.config import config_from_values
    from recsys.pipelines.prepare import PrepareConfig, prepare
    from recsys.pipelines.prepared import PreparedDataset, items_without_text

    work = Path(config.work_dir)
    data_dir = work / "data"
    spec = config.data
    prepare(PrepareConfig(source=spec.source, out=str(data_dir), format=spec.format, kcore=spec.kcore,
                          split=spec.split, catalogue_only=spec.catalogue_only))
    data = PreparedDataset.load(data_dir)
    log(f"data: {data.num_users} users, {data.num_items} items, fingerprint {data.fingerprint}")
    refused = refuse_text_methods(config, data, log)
    kinds = {m.kind for m in config.methods}
    aligned = [m.name for m in config.methods if m.kind == "sasrec"
               and m.overrides.get("align", config.sasrec.get("align", "none")) != "none"]
    setrec_config = config.setrec.config
    if setrec_config is None and config.setrec.base is not None:
        import yaml

        setrec_config = str(work / "setrec-base.yaml")
        Path(setrec_config).write_text(yaml.safe_dump(config.setrec.base, sort_keys=False))
    context = MethodContext(data=data, work_dir=work, sasrec=dict(config.sasrec), tiger=dict(config.tiger),
                            setrec_config=setrec_config, setrec_overrides=dict(config.setrec.overrides),
                            exclude_history=config.evaluation.exclude_history, refused=refused,
                            rere=dict(config.rere), methods={m.name: m for m in config.methods})
    # RLMRec SASRec methods read the text embeddings too; without text only CF-only setrec methods are left here
    if (kinds & {"tiger", "setrec", "text"} or aligned) and not items_without_text(data.items):
        from recsys.tokenizers.semantic import SemanticConfig, build_text_embeddings, load_text_embeddings
        from recsys.tokenizers.text_encoder import TextEncoderConfig

        semantic_dir = work / "semantic"
        if _manifest_fingerprint(semantic_dir, "dataset", "fingerprint") != data.fingerprint:
            encoder = config_from_values(TextEncoderConfig, dict(config.text_encoder), where="text_encoder")
            _, stats = build_text_embeddings(data_dir, semantic_dir, SemanticConfig(encoder=encoder, progress=False))
            log(f"text embeddings: {stats.encoded} encoded, {stats.cache_hits} from the cache")
        context.semantic_dir = semantic_dir
        if "tiger" in kinds:
            from recsys.tokenizers.semantic_ids import build_semantic_ids

            ids = config.semantic_ids
            built = build_semantic_ids(load_text_embeddings(semantic_dir, data.num_items), levels=ids.levels,
                                       codes=ids.codes, seed=ids.seed, niter=ids.niter)
            context.semantic_ids = torch.as_tensor(built.codes)
            log(f"semantic ids: {tuple(built.codes.shape)}, collision rate {built.stats['collision_rate']:.3f}")
    if "setrec" in kinds:
        from recsys.tokenizers.cf import train_cf_embeddings

        cf_dir = work / "cf"
        if _manifest_fingerprint(cf_dir, "dataset", "fingerprint") != data.fingerprint and \
                _manifest_fingerprint(cf_dir, "dataset_fingerprint") != data.fingerprint:
            from recsys.models.sasrec import SASRecConfig

            cf_values = dict(config.sasrec if config.cf is None else config.cf)
            cf_config = config_from_values(SASRecConfig, {"seed": 0, **cf_values} if config.cf is None else cf_values,
                                           where="cf")
            train_cf_embeddings(data_dir, cf_dir, cf_config, log_to_mlflow=False,  # cf.align (RLMRec) reads the texts
                                semantic_dir=context.semantic_dir if cf_config.align != "none" else None)
            log(f"CF embeddings written to {cf_dir}")
        context.cf_dir = cf_dir
    return context
