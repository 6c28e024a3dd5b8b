"""Text-embedding artifact of a prepared dataset, ``recsys tokenize semantic``, AE pre-training."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from recsys.cli import main
from recsys.errors import ArtifactError, ConfigError, DataFormatError
from recsys.tokenizers.semantic import (
    AutoencoderPretrainConfig,
    SemanticAutoencoder,
    SemanticConfig,
    build_text_embeddings,
    load_text_embeddings,
    pretrain_autoencoder,
)
from recsys.tokenizers.text_encoder import TextEncoderConfig


def _config(cache_dir, **kwargs) -> SemanticConfig:
    return SemanticConfig(encoder=TextEncoderConfig(), cache_dir=str(cache_dir), progress=False, **kwargs)


def test_build_and_load(prepared_dir, tmp_path, cache_dir, fresh_minilm):
    out, stats = build_text_embeddings(prepared_dir, tmp_path / "sem", _config(cache_dir), encoder=fresh_minilm)
    embeddings = load_text_embeddings(out, num_items=8)
    assert embeddings.shape == (8, 384) and embeddings.dtype == torch.float32
    assert stats.unique_texts == 7 and stats.encoded == 7  # items 0 and 6 share their text
    torch.testing.assert_close(embeddings[0], embeddings[6], rtol=0, atol=0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoder"]["fingerprint"] == fresh_minilm.fingerprint
    assert manifest["dataset"]["fingerprint"] == json.loads((prepared_dir / "manifest.json").read_text())["fingerprint"]
    assert manifest["counts"]["duplicate_texts"] == 1

    # A re-run reads every text from the cache and writes the same embeddings.
    fresh_minilm.calls = 0
    _, again = build_text_embeddings(prepared_dir, tmp_path / "sem", _config(cache_dir), encoder=fresh_minilm)
    assert fresh_minilm.calls == 0 and again.cache_hits == 7
    torch.testing.assert_close(load_text_embeddings(out), embeddings, rtol=0, atol=0)


def test_load_checks(prepared_dir, tmp_path, cache_dir, fresh_minilm):
    out, _ = build_text_embeddings(prepared_dir, tmp_path / "sem", _config(cache_dir), encoder=fresh_minilm)
    with pytest.raises(ArtifactError, match="8 rows but the catalogue has 9"):
        load_text_embeddings(out, num_items=9)
    data = bytearray((out / "text_embeddings.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "text_embeddings.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="corrupt"):
        load_text_embeddings(out)
    with pytest.raises(ArtifactError, match="manifest"):
        load_text_embeddings(tmp_path / "missing")


def test_empty_item_text_names_the_item(make_prepared, tmp_path, cache_dir, fresh_minilm):
    data = make_prepared(texts=["fine text", "  ", "another"])
    with pytest.raises(DataFormatError, match=r"items.parquet.*row 1 \(id 'I001'\)"):
        build_text_embeddings(data, tmp_path / "sem", _config(cache_dir), encoder=fresh_minilm)
    assert not (tmp_path / "sem" / "text_embeddings.safetensors").exists()


def test_refuses_a_folder_of_another_artifact(prepared_dir, tmp_path, cache_dir, fresh_minilm):
    other = tmp_path / "cf"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"kind": "cf_embeddings"}))
    with pytest.raises(ArtifactError, match="another artifact"):
        build_text_embeddings(prepared_dir, other, _config(cache_dir), encoder=fresh_minilm)


def test_cli_semantic(prepared_dir, tmp_path, cache_dir, capsys):
    out = tmp_path / "sem-cli"
    code = main(["tokenize", "semantic", "--data", str(prepared_dir), "--out", str(out), "--cache-dir", str(cache_dir), "--no-progress"])
    assert code == 0
    assert load_text_embeddings(out).shape == (8, 384)
    assert "7 encoded" in capsys.readouterr().out
    code = main(["tokenize", "semantic", "--data", str(tmp_path / "nothing"), "--out", str(out)])
    assert code == 2 and "not a prepared dataset" in capsys.readouterr().err


def test_pretraining_lowers_reconstruction_error():
    torch.manual_seed(0)
    basis = torch.randn(6, 48)
    text = torch.nn.functional.normalize(torch.randn(300, 6) @ basis, dim=1)  # rank-6 structure
    ae = SemanticAutoencoder(48, num_tokens=2, token_dim=8, hidden_sizes=(64, 32, 16))
    result = pretrain_autoencoder(text, ae, AutoencoderPretrainConfig(epochs=100, batch_size=100, lr=1e-2, val_fraction=0.2), progress=False)
    assert result.final_mse < 0.2 * result.initial_mse
    assert len(result.train_mse) == 100 and len(result.val_mse) == 100
    assert result.val_mse[-1] < result.val_mse[0]
    with pytest.raises(ConfigError, match="dz=48"):
        pretrain_autoencoder(torch.randn(4, 10), ae, progress=False)
