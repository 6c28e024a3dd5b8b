"""TIGER baseline: the trie, constrained beam search (valid items only, exact with a full beam), training."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch

from recsys.errors import ConfigError
from recsys.models.tiger import CodeTrie, Tiger, TigerConfig, pad_left
from recsys.pipelines.prepared import PreparedDataset

SMALL = dict(d_model=16, num_heads=2, d_ff=32, num_layers=1, num_decoder_layers=1, dropout=0.0)


def sparse_codes(num_items: int = 30, seed: int = 0) -> torch.Tensor:
    """Unique 3-digit codes drawn from a 6x6x4 space, so most code paths are invalid."""
    gen = torch.Generator().manual_seed(seed)
    space = torch.tensor([[a, b, c] for a in range(6) for b in range(6) for c in range(4)])
    return space[torch.randperm(len(space), generator=gen)[:num_items]]


def make_model(num_items: int = 30, beam: int = 20, seed: int = 0) -> Tiger:
    torch.manual_seed(seed)
    return Tiger(sparse_codes(num_items, seed), TigerConfig(beam_size=beam, **SMALL)).eval()


def test_trie_children_and_leaves():
    codes = torch.tensor([[0, 1, 0], [0, 1, 1], [2, 0, 0]])
    trie = CodeTrie(codes)
    assert trie.sizes == [3, 2, 2]
    assert (trie.children[0][0] >= 0).tolist() == [True, False, True]
    node = trie.children[0][0, 0]
    assert (trie.children[1][node] >= 0).tolist() == [False, True]
    leaf = trie.children[2][trie.children[1][node, 1], 1]
    assert trie.leaf_item[leaf].item() == 1
    with pytest.raises(ConfigError, match="share a code"):
        CodeTrie(torch.tensor([[0, 1], [0, 1]]))


def test_beam_search_returns_only_valid_distinct_items():
    model = make_model(num_items=30, beam=20)
    histories = [[1, 2, 3], [4], list(range(25))]
    items, scores = model.beam_search(histories)
    assert items.shape == (3, 20)
    assert ((items >= 0) & (items < 30)).all()
    for row in items:
        assert len(set(row.tolist())) == 20
    assert (scores[:, 1:] <= scores[:, :-1] + 1e-6).all()
    exact = model.sequence_scores(histories)
    assert torch.allclose(scores, exact.gather(1, items), atol=1e-5)


def test_full_width_beam_is_the_exact_ranking_and_cache_matches_reference():
    model = make_model(num_items=30, beam=30, seed=1)
    histories = [[5, 9], [0, 1, 2, 3], [29]]
    items, scores = model.beam_search(histories, beam_size=30)
    exact = model.sequence_scores(histories)
    assert torch.equal(items, exact.argsort(dim=1, descending=True))
    ref_items, ref_scores = model.beam_search(histories, beam_size=30, use_cache=False)
    assert torch.equal(items, ref_items) and torch.allclose(scores, ref_scores, atol=1e-5)
    # a beam wider than the catalogue pads with -1 / -inf instead of inventing items
    wide, wide_scores = model.beam_search(histories, beam_size=35)
    assert (wide[:, 30:] == -1).all() and torch.isinf(wide_scores[:, 30:]).all()


def test_excluded_items_never_returned_and_rank_bounds():
    model = make_model(num_items=30, beam=20, seed=2)
    full, _ = model.beam_search([[1, 2]], beam_size=30)
    banned = full[0, :5].tolist()
    items = model.rank([[1, 2]], k=10, exclude=[banned])
    assert not set(items[0].tolist()) & set(banned)
    # with a full-width beam, exclusion removes the banned items and keeps the others' order and scores
    kept, kept_scores = model.beam_search([[1, 2]], beam_size=30, exclude=[banned])
    assert kept[0, :25].tolist() == [i for i in full[0].tolist() if i not in banned]
    assert torch.allclose(kept_scores[0, :25], model.sequence_scores([[1, 2]])[0, kept[0, :25]], atol=1e-5)
    with pytest.raises(ConfigError, match="beam"):
        model.rank([[1]], k=21)


def test_left_padding_changes_nothing():
    model = make_model()
    lists = [[3, 4, 5], [7]]
    a, _ = model.encode_histories(lists)
    padded = torch.cat([torch.full((2, 2), -1), pad_left(lists, 20)], dim=1)
    b, _ = model.encode_histories(padded)
    assert torch.equal(a, b[:, -a.shape[1]:])
    assert torch.allclose(model.sequence_scores(lists)[1], model.sequence_scores([[7]])[0], atol=1e-5)


def _sequential_dataset(root: Path, num_users: int = 40, num_items: int = 12) -> PreparedDataset:
    """Users walk the catalogue in order (item i then i+1), a pattern a model can learn."""
    rows = []
    for user in range(num_users):
        start = user % num_items
        seq = [(start + step) % num_items for step in range(8)]
        for pos, item in enumerate(seq):
            split = "train" if pos < 6 else ("valid" if pos == 6 else "test")
            rows.append((user, item, pos, split))
    interactions = pl.DataFrame(rows, schema={"user_idx": pl.Int32, "item_idx": pl.Int32, "ts": pl.Int64, "split": pl.String}, orient="row")
    items = pl.DataFrame({"item_idx": pl.Series(range(num_items), dtype=pl.Int32), "item_id": [str(i) for i in range(num_items)],
                          "text": [f"item {i}" for i in range(num_items)], "is_cold": [False] * num_items})
    users = pl.DataFrame({"user_idx": pl.Series(range(num_users), dtype=pl.Int32), "user_id": [str(u) for u in range(num_users)]})
    return PreparedDataset(root, interactions, items, users, {"fingerprint": "tiny"})


@pytest.mark.slow
def test_training_learns_and_roundtrips(tmp_path):
    from recsys.training.tiger import evaluate_tiger, fit_tiger, load_tiger

    data = _sequential_dataset(tmp_path)
    codes = torch.tensor([[i // 4, i % 4] for i in range(12)])
    # the last item determines the next one; three items of history are plenty (and every history length is trained on)
    config = TigerConfig(beam_size=10, max_history=3, max_epochs=10, patience=10, batch_size=64, lr=1e-2, **SMALL)
    ks = (1, 10)  # recall@10 of a 12-item catalogue is high for any model (untrained: ~0.8); hit@1 and MRR are not
    torch.manual_seed(config.seed)
    untrained = Tiger(codes, config).eval()
    before = {split: evaluate_tiger(untrained, data.eval_examples(split), ks=ks) for split in ("valid", "test")}
    result = fit_tiger(data, codes, config, out_dir=tmp_path / "tiger", log_to_mlflow=False)
    loaded = load_tiger(tmp_path / "tiger")
    after = {"valid": evaluate_tiger(result.model, data.eval_examples("valid"), ks=ks),
             "test": evaluate_tiger(loaded, data.eval_examples("test"), ks=ks)}
    for split in ("valid", "test"):
        assert after[split]["recall@1"] > 0.9, (split, before[split], after[split])
        assert after[split]["recall@1"] > before[split]["recall@1"] + 0.5, (split, before[split], after[split])
        assert after[split]["mrr@10"] > before[split]["mrr@10"] + 0.5, (split, before[split], after[split])
    assert result.valid_metrics["recall@10"] == pytest.approx(evaluate_tiger(result.model, data.eval_examples("valid"))["recall@10"])
    assert torch.equal(loaded.beam_search([[1, 2]])[0], result.model.beam_search([[1, 2]])[0])
