"""RQ-KMeans semantic ids: unique, stable across runs, reference and FAISS paths equal, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.errors import ArtifactError, ConfigError
from recsys.tokenizers.semantic_ids import SemanticIds, build_semantic_ids


def clustered(n: int = 600, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Embeddings around 12 centres, with a few exact duplicates (forced prefix collisions)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim)) * 3
    x = centres[rng.integers(0, 12, n)] + rng.normal(size=(n, dim)) * 0.3
    x[n - 5 :] = x[:5]  # identical embeddings: same prefix, told apart by the extra digit
    return x.astype(np.float32)


def test_ids_unique_and_stable_across_runs():
    x = clustered()
    first = build_semantic_ids(x, levels=2, codes=8, seed=3, niter=10)
    second = build_semantic_ids(x.copy(), levels=2, codes=8, seed=3, niter=10)
    assert first.codes.shape == (600, 3)
    assert torch.unique(first.codes, dim=0).shape[0] == 600
    assert torch.equal(first.codes, second.codes) and torch.equal(first.codebooks, second.codebooks)
    # duplicates share their prefix and differ in the extra digit only
    assert torch.equal(first.codes[:5, :2], first.codes[-5:, :2])
    assert torch.all(first.codes[:5, 2] != first.codes[-5:, 2])
    stats = first.stats
    assert 0 < stats["collision_rate"] < 1 and stats["unique_prefixes"] < 600
    assert len(stats["utilisation_per_level"]) == 2 and all(0 < u <= 1 for u in stats["utilisation_per_level"])
    assert stats["residual_mse_per_level"][1] < stats["residual_mse_per_level"][0] < stats["input_mse"]
    other_seed = build_semantic_ids(x, levels=2, codes=8, seed=4, niter=10)
    assert torch.unique(other_seed.codes, dim=0).shape[0] == 600


def test_faiss_fast_path_matches_numpy_reference():
    pytest.importorskip("faiss")
    x = clustered(400, 12, seed=1)
    ref = build_semantic_ids(x, levels=3, codes=16, seed=0, niter=8, backend="numpy")
    fast = build_semantic_ids(x, levels=3, codes=16, seed=0, niter=8, backend="faiss")
    agree = (ref.codes[:, :3] == fast.codes[:, :3]).all(dim=1).float().mean().item()
    assert agree > 0.99, agree
    np.testing.assert_allclose(ref.codebooks.numpy(), fast.codebooks.numpy(), atol=1e-3)


def test_save_load_round_trip_and_new_items(tmp_path):
    x = clustered(200, 8)
    ids = build_semantic_ids(x, levels=2, codes=8, seed=0, niter=5, backend="numpy")
    ids.save(tmp_path / "ids")
    back = SemanticIds.load(tmp_path / "ids")
    assert torch.equal(back.codes, ids.codes) and back.config == ids.config
    # an embedding already in the catalogue gets its item's prefix
    assert torch.equal(back.assign_prefix(x[:10]), ids.codes[:10, :2])
    with pytest.raises(ConfigError, match=r"\(n, 8\)"):
        back.assign_prefix(np.zeros((2, 7), dtype=np.float32))
    blob = bytearray((tmp_path / "ids" / "semantic_ids.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "ids" / "semantic_ids.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="corrupt"):
        SemanticIds.load(tmp_path / "ids")


def test_more_codes_than_items_are_capped_and_reported():
    ids = build_semantic_ids(clustered(20, 4), levels=2, codes=256, seed=0, niter=3, backend="numpy")
    assert ids.stats["codes"] == 20 and ids.stats["codes_capped"]
    assert torch.unique(ids.codes, dim=0).shape[0] == 20


@pytest.mark.parametrize(
    "x, kwargs, message",
    [
        (np.zeros((0, 4), dtype=np.float32), {}, "non-empty"),
        (np.zeros(10, dtype=np.float32), {}, "non-empty"),
        (np.full((10, 4), np.nan, dtype=np.float32), {}, "NaN"),
        (np.ones((10, 4), dtype=np.float32), {"levels": 0}, "levels"),
        (np.ones((10, 4), dtype=np.float32), {"backend": "gpu-magic"}, "backend"),
    ],
)
def test_bad_inputs(x, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_semantic_ids(x, **kwargs)
