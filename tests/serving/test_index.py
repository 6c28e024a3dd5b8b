"""The FAISS item index: exact ranking equals brute force torch, filters keep k, insertion, ANN kinds and their recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.errors import ArtifactError, ConfigError
from recsys.serving.index import IndexConfig, ItemIndex, exact_topk, gpu_available


def _table(num_items=500, tokens=5, d=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_items, tokens, d, generator=generator)


def _queries(batch, tokens=5, d=16, beta=0.3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, tokens, d, generator=generator)
    weights = torch.tensor([1 - beta] + [beta] * (tokens - 1)).view(1, -1, 1)
    return (h * weights).flatten(1)


def test_exact_ranking_equals_torch_score_all():
    table = _table()
    index = ItemIndex.from_table(table, IndexConfig(use_gpu="no"))
    beta = 0.3
    generator = torch.Generator().manual_seed(1)
    h = torch.randn(8, 5, 16, generator=generator)
    # The model's scoring rule, dimension by dimension: (1-beta) s_0 + beta * sum_k s_k.
    per_dim = torch.einsum("bkd,ikd->bki", h, table)
    scores = (1 - beta) * per_dim[:, 0] + beta * per_dim[:, 1:].sum(1)
    expected = torch.topk(scores, 20, dim=1)
    weights = torch.tensor([1 - beta] + [beta] * 4).view(1, -1, 1)
    result = index.search((h * weights).flatten(1).numpy(), k=20)
    for row in range(8):
        assert result.ids[row].tolist() == expected.indices[row].tolist()
        np.testing.assert_allclose(result.scores[row], expected.values[row].numpy(), rtol=1e-5, atol=1e-4)


def test_search_equals_reference_with_filters():
    table = _table()
    index = ItemIndex.from_table(table, IndexConfig(use_gpu="no"))
    queries = _queries(6).numpy()
    rng = np.random.default_rng(0)
    exclude = [set(rng.choice(500, size=n, replace=False).tolist()) for n in (0, 1, 10, 50, 200, 499)]
    candidates = [None, None, rng.choice(500, 30, replace=False).tolist(), None, None, None]
    got = index.search(queries, k=10, exclude=exclude, candidates=candidates)
    ref = exact_topk(index.vectors, queries, k=10, exclude=exclude, candidates=candidates)
    for row in range(6):
        assert got.ids[row].tolist() == ref.ids[row].tolist()
        assert not set(got.ids[row].tolist()) & exclude[row]
    # 499 of 500 items excluded: the one item left, not k.
    assert len(got.ids[5]) == 1
    # Candidate list: only candidates come back.
    assert set(got.ids[2].tolist()) <= set(candidates[2])


def test_filters_never_return_fewer_than_k_when_available():
    table = _table(num_items=300)
    index = ItemIndex.from_table(table, IndexConfig(use_gpu="no"))
    queries = _queries(1).numpy()
    top = index.search(queries, k=300).ids[0]
    # Exclude the 250 best items: the 50 left must all come back for k=50.
    result = index.search(queries, k=50, exclude=[set(top[:250].tolist())])
    assert sorted(result.ids[0].tolist()) == sorted(top[250:].tolist())
    # k larger than the catalogue: everything, once.
    assert len(index.search(queries, k=1000).ids[0]) == 300


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_fall_back_to_exact_when_short(kind):
    table = _table(num_items=2000)
    config = IndexConfig(kind=kind, nlist=64, nprobe=1, ef_search=8, hnsw_m=8, use_gpu="no", overfetch=1.0)
    index = ItemIndex.from_table(table, config)
    queries = _queries(4).numpy()
    exclude = [set(range(0, 2000, 2))] * 4  # half the catalogue
    got = index.search(queries, k=200, exclude=exclude)
    for row in range(4):
        assert len(got.ids[row]) == 200
        assert not set(got.ids[row].tolist()) & exclude[row]
    # One probed list of ~31 items cannot hold 200 non-excluded items: the exact fallback ran.
    if kind == "ivf":
        assert got.fallbacks == 4
        ref = exact_topk(index.vectors, queries, 200, exclude)
        assert [r.tolist() for r in got.ids] == [r.tolist() for r in ref.ids]


def _clustered_table(num_items=3000, tokens=5, d=16, clusters=200, noise=1.0, seed=0):
    """Item vectors around 200 centres (token tables are clustered, not uniform noise)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, tokens * d, generator=generator)
    members = torch.randint(0, clusters, (num_items,), generator=generator)
    return (centres[members] + noise * torch.randn(num_items, tokens * d, generator=generator)).view(num_items, tokens, d)


def _near_item_queries(table, batch=100, seed=1):
    generator = torch.Generator().manual_seed(seed)
    flat = table.flatten(1)
    picks = torch.randint(0, flat.shape[0], (batch,), generator=generator)
    return (flat[picks] + 0.5 * torch.randn(batch, flat.shape[1], generator=generator)).numpy()


def _recall_against_exact(table, queries, k=10, **settings) -> float:
    """Mean share of exact search's top k that an index built with ``settings`` returns (no overfetch)."""
    exact = exact_topk(table.flatten(1).numpy(), queries, k)
    index = ItemIndex.from_table(table, IndexConfig(use_gpu="no", overfetch=1.0, **settings))
    got = index.search(queries, k=k)
    assert got.fallbacks == 0  # the index answered, not the exact fallback
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(got.ids, exact.ids)]))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_at_default_settings_reach_high_recall_of_exact_search(kind):
    table = _clustered_table()
    # measured on this table: IVF (nlist 219, nprobe 32) 0.997, HNSW (M 32, ef 128) 1.0
    assert _recall_against_exact(table, _near_item_queries(table), kind=kind) >= 0.97


def test_ivf_recall_against_exact_search_grows_with_nprobe_and_is_exact_at_nlist():
    table = _clustered_table()
    queries = _near_item_queries(table)
    recalls = [_recall_against_exact(table, queries, kind="ivf", nlist=32, nprobe=p) for p in (1, 4, 8, 32)]
    # measured: 0.77, 0.88, 0.95, 1.0
    assert recalls[0] < 0.85  # one probed list of 32 is an approximation: nprobe is honoured
    assert recalls == sorted(recalls) and recalls[2] >= 0.9
    assert recalls[-1] == 1.0  # nprobe == nlist visits every list: exact


def test_hnsw_recall_against_exact_search_grows_with_the_search_beam():
    table = _clustered_table()
    queries = _near_item_queries(table)
    narrow = _recall_against_exact(table, queries, kind="hnsw", hnsw_m=4, ef_search=1)  # beam widened to k = 10
    wide = _recall_against_exact(table, queries, kind="hnsw", hnsw_m=4, ef_search=128)
    # measured: 0.85 and 0.99
    assert narrow < 0.92 and wide >= 0.97


def test_added_items_are_retrievable_at_once():
    table = _table(num_items=100)
    index = ItemIndex.from_table(table, IndexConfig(use_gpu="no"))
    query = _queries(1).numpy()
    new_vector = query * 10.0  # scores far above every existing item
    (new_id,) = index.add(new_vector)
    assert new_id == 100 and len(index) == 101
    assert index.search(query, k=1).ids[0].tolist() == [100]
    # Still excluded when asked, and the table view grew.
    assert 100 not in index.search(query, k=5, exclude=[{100}]).ids[0].tolist()
    np.testing.assert_array_equal(index.vectors[100], new_vector[0])
    for _ in range(300):  # growth past the initial capacity keeps earlier rows
        index.add(np.zeros((1, index.dim), np.float32))
    np.testing.assert_array_equal(index.vectors[:100], table.flatten(1).numpy())


def test_save_and_load_round_trip(tmp_path):
    table = _table(num_items=50)
    index = ItemIndex.from_table(table, IndexConfig(use_gpu="no"))
    index.save(tmp_path / "index.faiss")
    loaded = ItemIndex.load(tmp_path / "index.faiss", table.flatten(1).numpy(), IndexConfig(use_gpu="no"))
    queries = _queries(3).numpy()
    assert [r.tolist() for r in loaded.search(queries, k=5).ids] == [r.tolist() for r in index.search(queries, k=5).ids]
    with pytest.raises(ArtifactError, match="holds 50 items"):
        ItemIndex.load(tmp_path / "index.faiss", table[:40].flatten(1).numpy())
    (tmp_path / "bad.faiss").write_bytes(b"not an index")
    with pytest.raises(ArtifactError, match="bad.faiss"):
        ItemIndex.load(tmp_path / "bad.faiss", table.flatten(1).numpy())


def test_bad_arguments_name_the_field():
    index = ItemIndex.from_table(_table(num_items=10), IndexConfig(use_gpu="no"))
    with pytest.raises(ConfigError, match="size 3"):
        index.search(np.zeros((1, 3), np.float32), k=1)
    with pytest.raises(ConfigError, match="k must be"):
        index.search(np.zeros((1, index.dim), np.float32), k=0)
    with pytest.raises(ConfigError, match="index.kind"):
        IndexConfig(kind="lsh")


def test_gpu_setting_matches_the_build():
    table = _table(num_items=20)
    index = ItemIndex.from_table(table, IndexConfig(use_gpu="auto"))
    assert index.on_gpu == gpu_available()
    if not gpu_available():
        with pytest.raises(ConfigError, match="use_gpu=yes"):
            ItemIndex.from_table(table, IndexConfig(use_gpu="yes"))
