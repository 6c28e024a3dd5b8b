"""Text encoder and embedding cache: parity with sentence-transformers, cache hits, bad texts."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.errors import ConfigError, DataFormatError
from recsys.tokenizers.text_encoder import (
    EmbeddingCache,
    TextEncoder,
    TextEncoderConfig,
    embed_texts,
    text_key,
)

TEXTS = ["cordless drill 18V", "half inch staples", "nitrile gloves, large", "a much longer text " * 20]


def test_matches_sentence_transformers_reference(fresh_minilm):
    import sentence_transformers as st  # a dev dependency: missing is an error, not a skip
    reference = st.SentenceTransformer(str(fresh_minilm.path), device="cpu").encode(TEXTS, convert_to_numpy=True)
    ours = fresh_minilm.encode_batch(TEXTS)
    assert ours.shape == (4, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_cache_hits_skip_the_encoder(fresh_minilm, cache_dir):
    cache = EmbeddingCache(cache_dir, fresh_minilm.fingerprint, fresh_minilm.dim)
    first, stats = embed_texts(TEXTS, fresh_minilm, cache, progress=False)
    assert (stats.encoded, stats.cache_hits) == (4, 0)
    assert fresh_minilm.texts_encoded == 4

    fresh_minilm.calls = fresh_minilm.texts_encoded = 0
    reopened = EmbeddingCache(cache_dir, fresh_minilm.fingerprint, fresh_minilm.dim)  # read back from disk
    second, stats = embed_texts(TEXTS, fresh_minilm, reopened, progress=False)
    assert fresh_minilm.calls == 0 and stats.cache_hits == 4 and stats.encoded == 0
    np.testing.assert_array_equal(first, second)

    changed = TEXTS[:3] + ["a changed text"]
    third, stats = embed_texts(changed, fresh_minilm, reopened, progress=False)
    assert fresh_minilm.texts_encoded == 1 and stats.encoded == 1 and stats.cache_hits == 3
    np.testing.assert_array_equal(third[:3], first[:3])


def test_identical_texts_embedded_once_and_identical(fresh_minilm):
    vectors, stats = embed_texts(["same text", "other", "same text"], fresh_minilm, None, progress=False)
    assert stats.unique_texts == 2 and fresh_minilm.texts_encoded == 2
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])


def test_batching_does_not_change_vectors(fresh_minilm, monkeypatch):
    big, _ = embed_texts(TEXTS, fresh_minilm, None, progress=False)
    assert fresh_minilm.calls == 1
    monkeypatch.setattr(fresh_minilm.config, "batch_size", 1)
    one, _ = embed_texts(TEXTS, fresh_minilm, None, progress=False)
    assert fresh_minilm.calls == 1 + 4
    np.testing.assert_allclose(one, big, atol=1e-5)


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_empty_or_missing_text_is_a_clear_error(fresh_minilm, bad):
    with pytest.raises(DataFormatError, match=r"row 1 \(id 'B'\)") as info:
        embed_texts(["fine", bad, "fine too"], fresh_minilm, None, progress=False, ids=["A", "B", "C"], where="items.parquet")
    assert "items.parquet" in str(info.value)
    assert fresh_minilm.calls == 0


def test_interrupted_run_keeps_finished_batches(cache_dir, tiny_bert_dir):
    class Failing(TextEncoder):
        def encode_batch(self, texts):
            if self.calls == 2:
                raise KeyboardInterrupt
            return super().encode_batch(texts)

    encoder = Failing(TextEncoderConfig(path=str(tiny_bert_dir), batch_size=1))
    cache = EmbeddingCache(cache_dir, encoder.fingerprint, encoder.dim)
    with pytest.raises(KeyboardInterrupt):
        embed_texts(TEXTS, encoder, cache, progress=False)
    assert len(EmbeddingCache(cache_dir, encoder.fingerprint, encoder.dim)) == 2


def test_compaction_keeps_every_vector(cache_dir):
    cache = EmbeddingCache(cache_dir, "fp", 3, max_shards=2)
    for i in range(5):
        cache.put([f"k{i}"], np.full((1, 3), i, np.float32))
    assert len(list(cache.dir.glob("shard-*.parquet"))) <= 2
    reread = EmbeddingCache(cache_dir, "fp", 3)
    got = reread.get([f"k{i}" for i in range(5)])
    assert [float(got[f"k{i}"][0]) for i in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="3-d vectors, expected 4"):
        EmbeddingCache(cache_dir, "fp", 4).get(["k0"])


def test_plain_hugging_face_folder_and_separate_fingerprints(tiny_bert_dir, fresh_minilm, cache_dir):
    tiny = TextEncoder(TextEncoderConfig(path=str(tiny_bert_dir)))
    assert tiny.dim == 32 and tiny.pooling == "mean" and tiny.normalize
    assert tiny.fingerprint != fresh_minilm.fingerprint
    vectors, _ = embed_texts(TEXTS, tiny, EmbeddingCache(cache_dir, tiny.fingerprint, tiny.dim), progress=False)
    assert vectors.shape == (4, 32)
    # The MiniLM cache is a different folder: nothing from the tiny model is reused.
    _, stats = embed_texts(TEXTS, fresh_minilm, EmbeddingCache(cache_dir, fresh_minilm.fingerprint, 384), progress=False)
    assert stats.cache_hits == 0


def test_bad_encoder_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        TextEncoder(TextEncoderConfig(path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        TextEncoder(TextEncoderConfig(path=str(tmp_path / "empty")))


def test_text_key_is_sha256_of_utf8():
    import hashlib

    assert text_key("é") == hashlib.sha256("é".encode()).hexdigest()
