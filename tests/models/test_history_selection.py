"""Long-history selection (DARE's search stage, issue 17): the rule, its fast path, the config, the
training windows (no leak), the bundle round trip, and the torch engine and evaluation applying it."""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recsys.errors import ArtifactError, ConfigError
from recsys.models.history_selection import (
    HistoryConfig,
    HistorySelector,
    attention_table,
    model_selector,
    select_reference,
    top_k_positions,
)

DARE = HistoryConfig("dare", 2)


def hand_table() -> torch.Tensor:
    """Items 0..9 in 2-d: items 7 and 8 (the recent block below) average to (1, 0)."""
    table = torch.zeros(10, 2)
    table[7], table[8] = torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])
    table[1], table[2], table[3] = torch.tensor([4.0, 0.0]), torch.tensor([0.0, 9.0]), torch.tensor([1.0, 0.0])
    table[4], table[5], table[6] = torch.tensor([5.0, 0.0]), torch.tensor([-3.0, 0.0]), torch.tensor([2.0, 0.0])
    return table


# --------------------------------------------------------------------------- the rule


def test_keeps_the_top_k_by_inner_product_with_the_recent_mean_in_time_order():
    table = hand_table()
    history = [1, 2, 3, 4, 5, 6, 7, 8]
    # recent block [7, 8] -> q = (1, 0); scores 1:4, 2:0, 3:1, 4:5, 5:-3, 6:2 -> top 2 = {4, 1}, kept as 1, 4
    q = table[[7, 8]].mean(0)
    scores = {j: float(table[j] @ q) for j in history[:-2]}
    assert sorted(scores, key=scores.get)[-2:] == [1, 4]
    assert HistorySelector(table, 4, DARE)([history]) == [[1, 4, 7, 8]]
    assert select_reference(history, table, 4, DARE) == [1, 4, 7, 8]
    # K = 3 adds item 6 (score 2) between them in time
    assert HistorySelector(table, 5, HistoryConfig("dare", 3))([history]) == [[1, 4, 6, 7, 8]]


def test_ties_go_to_the_more_recent_candidate():
    table = torch.zeros(10, 2)
    table[7] = table[8] = torch.tensor([1.0, 0.0])
    assert HistorySelector(table, 4, DARE)([[1, 2, 3, 4, 5, 6, 7, 8]]) == [[5, 6, 7, 8]]  # all candidates score 0
    table[1] = torch.tensor([5.0, 0.0])
    table[3] = table[5] = table[6] = torch.tensor([2.0, 0.0])
    assert HistorySelector(table, 4, DARE)([[1, 2, 3, 4, 5, 6, 7, 8]]) == [[1, 6, 7, 8]]
    assert HistorySelector(table, 5, HistoryConfig("dare", 3))([[1, 2, 3, 4, 5, 6, 7, 8]]) == [[1, 5, 6, 7, 8]]
    np.testing.assert_array_equal(top_k_positions(np.array([1.0, 3.0, 1.0, 2.0, 1.0]), 3), [1, 3, 4])


def test_repeated_items_are_candidates_at_every_occurrence():
    table = hand_table()
    assert HistorySelector(table, 4, DARE)([[4, 2, 4, 2, 7, 8]]) == [[4, 4, 7, 8]]
    # the same item also in the recent block stays there and may be selected from the older part too:
    # q = a4 + a7 = (6, 1); candidates 2: 9, 4: 30, 5: -18, 3: 6
    assert HistorySelector(table, 4, DARE)([[2, 4, 5, 3, 4, 7]]) == [[2, 4, 4, 7]] == [select_reference([2, 4, 5, 3, 4, 7], table, 4, DARE)]


def test_short_histories_and_recent_selection_are_plain_truncation():
    table = hand_table()
    selector = HistorySelector(table, 4, DARE)
    assert selector([[1], [1, 2, 3, 4], []]) == [[1], [1, 2, 3, 4], []]
    recent = HistorySelector(table, 4, HistoryConfig("recent"))
    assert recent([[1, 2, 3, 4, 5, 6, 7, 8], [3, 2]]) == [[5, 6, 7, 8], [3, 2]]
    assert HistorySelector(None, 4)([list(range(100))]) == [[96, 97, 98, 99]]
    assert select_reference(list(range(10)), None, 4, HistoryConfig()) == [6, 7, 8, 9]


def test_items_outside_the_table_count_as_zero_vectors():
    table = hand_table()  # 10 rows; item 12 was added to the service after training
    selector = HistorySelector(table, 4, DARE)
    # 12 in the recent block adds nothing to the query; as a candidate it scores 0 (3 scores 1, 5 scores -3)
    assert selector([[3, 12, 5, 7, 8]]) == [[3, 12, 7, 8]] == [select_reference([3, 12, 5, 7, 8], table, 4, DARE)]
    assert selector([[4, 3, 1, 7, 12]]) == [[4, 1, 7, 12]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_path_equals_the_reference_on_random_data(dtype):
    rng = np.random.default_rng(0)
    for trial in range(60):
        num_items = int(rng.integers(5, 400))
        if dtype == torch.float32:  # small integers: exact arithmetic, many ties
            table = torch.from_numpy(rng.integers(-2, 3, size=(num_items, int(rng.integers(1, 6)))).astype(np.float32))
        else:
            table = torch.from_numpy(rng.standard_normal((num_items, int(rng.integers(1, 9)))))
        max_len = int(rng.integers(2, 30))
        config = HistoryConfig("dare", int(rng.integers(1, max_len)))
        selector = HistorySelector(table, max_len, config)
        # lengths around max_len and far beyond, items beyond the table (added later) now and then
        histories = [rng.integers(0, num_items + (3 if trial % 4 == 0 else 0), int(n)).tolist()
                     for n in rng.integers(0, 3 * max_len + 600 * (trial % 3 == 0), size=8)]
        got = selector(histories)
        assert got == [select_reference(h, table, max_len, config) for h in histories]
        assert all(len(g) == min(len(h), max_len) for g, h in zip(got, histories))


def test_a_10000_item_history_is_selected_in_well_under_a_few_milliseconds():
    rng = np.random.default_rng(1)
    for num_items in (2_000, 50_000):  # table scored whole, or candidate rows gathered
        selector = HistorySelector(torch.randn(num_items, 64), 200, HistoryConfig("dare", 50))
        history = rng.integers(0, num_items, 10_000).tolist()
        selector([history])
        times = []
        for _ in range(15):
            start = time.perf_counter()
            selector([history])
            times.append(time.perf_counter() - start)
        # about 0.5 ms here; a Python loop over the items would take tens of milliseconds
        assert statistics.median(times) < 0.01, times


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="history.search_k"):
        HistoryConfig("dare", 0).validate(10)
    with pytest.raises(ConfigError, match="history.search_k"):
        HistoryConfig("dare", 10).validate(10)
    with pytest.raises(ConfigError, match="history.search_k"):
        HistoryConfig("recent", -1).validate(10)
    with pytest.raises(ConfigError, match="history.selection"):
        HistoryConfig("nearest", 1).validate(10)
    with pytest.raises(ConfigError, match="history.search_k"):
        HistorySelector(hand_table(), 3, HistoryConfig("dare", 3))
    with pytest.raises(ConfigError, match="attention table"):
        HistorySelector(None, 5, HistoryConfig("dare", 2))
    HistoryConfig("dare", 9).validate(10)
    HistoryConfig("recent", 0).validate(1)


def test_training_config_takes_history_as_dotted_overrides_and_refuses_bad_values():
    from recsys.training.setrec_config import config_from_dict

    cfg = config_from_dict({"max_len": 20}, {"history.selection": "dare", "history.search_k": 5})
    assert cfg.history == HistoryConfig("dare", 5) and cfg.to_dict()["history"] == {"selection": "dare", "search_k": 5}
    assert config_from_dict({}).history == HistoryConfig()
    with pytest.raises(ConfigError, match=r"history\.search_k: must satisfy 1 <= search_k < max_len \(20\)"):
        config_from_dict({"max_len": 20}, {"history.selection": "dare", "history.search_k": 20})
    with pytest.raises(ConfigError, match="history.search_k"):
        config_from_dict({"max_len": 20, "history": {"selection": "dare"}})
    with pytest.raises(ConfigError, match="window_stride"):
        config_from_dict({"max_len": 20, "window_stride": 15}, {"history.selection": "dare", "history.search_k": 5})
    with pytest.raises(ConfigError, match="history.search_k"):  # all_prefix needs two recent items
        config_from_dict({"max_len": 20}, {"history.selection": "dare", "history.search_k": 19})
    config_from_dict({"max_len": 20, "train_mode": "one_prefix"}, {"history.selection": "dare", "history.search_k": 19})


def test_attention_table_falls_back_to_the_cf_embeddings():
    embeddings, attention = torch.randn(4, 8), torch.randn(4, 3)
    shared = SimpleNamespace(embeddings=embeddings)  # a CF artifact without the field (older code) ...
    table, source = attention_table(shared)
    assert table is embeddings and source == "embeddings"
    table, source = attention_table(SimpleNamespace(embeddings=embeddings, attention=None))  # ... or with None
    assert table is embeddings and source == "embeddings"
    table, source = attention_table(SimpleNamespace(embeddings=embeddings, attention=attention))
    assert table is attention and source == "attention_embeddings"


# --------------------------------------------------------------------------- training data


def sequences_with_unique_items(lengths):
    """Users' sequences whose items are their flat positions: an item id says when it happened."""
    out, offset = [], 0
    for n in lengths:
        out.append(list(range(offset, offset + n)))
        offset += n
    return out


LENGTHS = [1, 2, 5, 9, 10, 11, 23, 40, 77]


def window_selector(seed: int = 0, max_len: int = 8, k: int = 3) -> HistorySelector:
    total = sum(LENGTHS)
    table = torch.from_numpy(np.random.default_rng(seed).integers(-2, 3, size=(total, 3)).astype(np.float32))
    return HistorySelector(table, max_len, HistoryConfig("dare", k))


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_dare_windows_never_read_the_target_or_later_items(stride):
    from recsys.training.setrec_data import SelectedWindowBatches

    max_len, k = 8, 3
    selector = window_selector(max_len=max_len, k=k)
    batches = SelectedWindowBatches(sequences_with_unique_items(LENGTHS), max_len, stride, selector)
    histories, targets = batches(list(range(len(batches))))
    assert histories.shape[1] == max_len
    scored = targets >= 0
    assert int(scored.sum()) == batches.num_targets == sum(n - 1 for n in LENGTHS)  # every target once
    assert sorted(targets[scored].tolist()) == sorted(set(targets[scored].tolist()))
    for row in range(histories.shape[0]):
        for col in torch.nonzero(scored[row]).flatten().tolist():
            read = histories[row, : col + 1]
            read = read[read >= 0]
            # the prefix of a scored target holds only items before it, and its own input is the item just before
            assert int(read.max()) == int(targets[row, col]) - 1
            assert len(set(read.tolist())) == len(read)
        if batches.later[row]:
            first_target = int(targets[row][scored[row]].min())
            selected = histories[row, :k]
            assert int(selected.max()) < int(batches.starts[row]) and torch.all(selected[1:] > selected[:-1])
            context = batches.items[int(batches.starts[row]) : first_target - 1]
            assert 1 <= len(context) and all(targets[row, k : k + len(context)] == -1)
            # the search is the rule with the context part as the recent block
            candidates = batches.items[int(batches.origins[row]) : int(batches.starts[row])].tolist()
            expected = select_reference(candidates + context.tolist(), selector.attention, k + len(context), HistoryConfig("dare", k))
            assert selected.tolist() == expected[:k]


def test_dare_windows_do_not_depend_on_the_future():
    from recsys.training.setrec_data import SelectedWindowBatches

    selector = window_selector(seed=3)
    sequences = sequences_with_unique_items(LENGTHS)
    batches = SelectedWindowBatches(sequences, 8, 2, selector)
    histories, targets = batches(list(range(len(batches))))
    for row in np.flatnonzero(batches.later):
        first = int(batches.firsts[row])  # flat position of the window's first scored target
        changed = SelectedWindowBatches(sequences, 8, 2, selector)
        changed.items = batches.items.copy()
        changed.items[first:] = np.random.default_rng(int(row)).permutation(changed.items[first:])
        again, _ = changed([int(row)])
        assert again[0, : int((targets[row] == -1).sum())].tolist() == histories[row, : int((targets[row] == -1).sum())].tolist()


def test_first_windows_are_unchanged_and_recent_uses_the_old_windows():
    from recsys.training.sasrec import WindowBatches
    from recsys.training.setrec_data import SelectedWindowBatches

    sequences = sequences_with_unique_items(LENGTHS)
    dare = SelectedWindowBatches(sequences, 8, 2, window_selector())
    plain = WindowBatches(sequences, 8, 8)
    offsets = {s[0] for s in sequences if len(s) >= 2}  # a user's first window starts at their first item
    first_dare = [i for i in range(len(dare)) if not dare.later[i]]
    first_plain = [i for i in range(len(plain)) if int(plain.starts[i]) in offsets]
    assert [int(dare.starts[i]) for i in first_dare] == sorted(offsets) and len(first_plain) == len(offsets)
    got, want = dare(first_dare), plain(first_plain)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_data_module_applies_the_selector_to_every_split(tmp_path):
    from recsys.pipelines.prepared import EvalExamples
    from recsys.training.sasrec import PrefixBatches, WindowBatches
    from recsys.training.setrec_data import EvalSets, SelectedPrefixBatches, SelectedWindowBatches, SetRecDataModule

    sequences = sequences_with_unique_items(LENGTHS)
    selector = window_selector()
    data = SimpleNamespace(train_sequences=lambda: sequences, root=tmp_path,
                           eval_examples=lambda split: EvalExamples([0, 1], [sequences[-1], sequences[2]], [[1], [2]]))
    module = SetRecDataModule(data, 8, 4, selector=selector)
    assert isinstance(module.train, SelectedWindowBatches)
    # stride 0 under dare is R // 2 = (8 - 3) // 2 = 2 new targets per later window
    later = np.flatnonzero(module.train.later)
    assert max(int(module.train.ends[i] - module.train.firsts[i] + 1) for i in later) == 2
    assert isinstance(SetRecDataModule(data, 8, 4).train, WindowBatches)
    assert type(SetRecDataModule(data, 8, 4, train_mode="one_prefix").train) is PrefixBatches
    batch = module.valid([0, 1])
    assert batch["histories"].tolist() == [select_reference(sequences[-1], selector.attention, 8, selector.config), [-1, -1, -1] + sequences[2]]
    assert batch["seen"][0].tolist() == sequences[-1]
    recent = EvalSets(data.eval_examples("valid"), 8)([0])["histories"][0].tolist()
    assert recent == sequences[-1][-8:]
    # one_prefix: every sample's history is the rule applied to its full prefix
    prefixes = SetRecDataModule(data, 8, 4, train_mode="one_prefix", selector=selector).train
    assert isinstance(prefixes, SelectedPrefixBatches)
    histories, targets = prefixes(list(range(len(prefixes))))
    for row, target in enumerate(targets.tolist()):
        history = histories[row][histories[row] >= 0].tolist()
        start = next(s[0] for s in sequences if s and s[0] <= target <= s[-1])
        assert history == select_reference(list(range(start, target)), selector.attention, 8, selector.config)
        assert max(history) < target


def test_dare_window_stride_default_and_range():
    from recsys.training.setrec_data import dare_window_stride

    assert dare_window_stride(50, 0, 10) == 20 and dare_window_stride(50, 5, 10) == 5
    for stride in (40, 41):
        with pytest.raises(ConfigError, match="window_stride"):
            dare_window_stride(50, stride, 10)
    with pytest.raises(ConfigError, match="window_stride"):
        dare_window_stride(10, 0, 9)  # R = 1 leaves no context


# --------------------------------------------------------------------------- bundle, evaluation, torch engine


def dare_bundle(tmp_path, k: int = 2):
    from recsys.bundle import load_bundle
    from tests.models.test_bundle import save
    from tests.models.test_setrec import NUM_ITEMS, make_model

    model = make_model("qwen")
    table = torch.randn(NUM_ITEMS, 4, generator=torch.Generator().manual_seed(5))
    selector = HistorySelector(table, 5, HistoryConfig("dare", k), "attention_embeddings")
    path = save_with_history(model, tmp_path / "bundle", selector)
    return model, selector, path, load_bundle(path)


def save_with_history(model, path, selector):
    from recsys.bundle import save_bundle
    from tests.models.test_bundle import items_frame

    return save_bundle(model, path, beta=0.25, max_len=5, items=items_frame(), dataset_fingerprint="abc123",
                       config={"model": model.config.to_dict()}, history=selector)


def test_bundle_round_trip_keeps_the_rule_and_the_table(tmp_path):
    from recsys.bundle import read_manifest

    _, selector, path, loaded = dare_bundle(tmp_path)
    info = loaded.bundle
    assert info.history == HistoryConfig("dare", 2) and info.attention_source == "attention_embeddings"
    torch.testing.assert_close(info.attention, selector.attention, rtol=0, atol=0)
    assert read_manifest(path)["history"] == {"selection": "dare", "search_k": 2, "attention_source": "attention_embeddings",
                                              "attention_dim": 4}
    history = np.random.default_rng(0).integers(0, 30, 100).tolist()
    assert info.history_selector()([history]) == selector([history]) == model_selector(loaded, 5)([history])
    # the same model read with recent selection (a table is kept for either rule)
    assert info.history_selector(config=HistoryConfig())([history]) == [history[-5:]]


def test_old_bundles_load_as_recent_and_broken_history_is_refused(tmp_path):
    from recsys.bundle import load_bundle
    from tests.models.test_bundle import edit_manifest, save
    from tests.models.test_setrec import make_model

    path = save(make_model("qwen"), tmp_path / "old")
    edit_manifest(path, lambda m: m.pop("history"))  # what bundles written before issue 17 hold
    loaded = load_bundle(path)
    assert loaded.bundle.history == HistoryConfig() and loaded.bundle.attention is None
    assert loaded.bundle.history_selector()([list(range(12))]) == [list(range(7, 12))]
    assert model_selector(SimpleNamespace(), 3)([[1, 2, 3, 4]]) == [[2, 3, 4]]  # a model without a bundle

    _, _, path, _ = dare_bundle(tmp_path)
    edit_manifest(path, lambda m: (m["files"].pop("history.safetensors"), (path / "history.safetensors").unlink()))
    with pytest.raises(ArtifactError, match="no history.safetensors"):
        load_bundle(path)
    _, _, path, _ = dare_bundle(tmp_path)
    edit_manifest(path, lambda m: m["history"].update(search_k=5))
    with pytest.raises(ArtifactError, match="history.search_k"):
        load_bundle(path)
    _, _, path, _ = dare_bundle(tmp_path)
    edit_manifest(path, lambda m: m["history"].update(attention_dim=3))
    with pytest.raises(ArtifactError, match="history.safetensors"):
        load_bundle(path)


def long_history_that_selects_differently(selector, length: int = 2000) -> list[int]:
    rng = np.random.default_rng(7)
    history = rng.integers(0, selector.attention.shape[0], length).tolist()
    assert selector([history])[0] != history[-selector.max_len:]
    return history


def test_torch_engine_reads_the_selected_history(tmp_path):
    from recsys.models.setrec import pad_histories
    from recsys.serving.engines import TorchEngine

    _, selector, _, loaded = dare_bundle(tmp_path)
    history = long_history_that_selects_differently(selector)
    selected = selector([history])[0]
    engine = TorchEngine(loaded, loaded.bundle.beta, loaded.bundle.max_len)
    assert engine.selector.config == HistoryConfig("dare", 2)
    got = engine.query_vectors([history, history[:3]])
    with torch.no_grad():
        want = loaded.query_vectors(pad_histories([selected, history[:3]], 5), loaded.bundle.beta).numpy()
        truncated = loaded.query_vectors(pad_histories([history], 5), loaded.bundle.beta).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert np.abs(got[0] - truncated[0]).max() > 1e-3
    reference = TorchEngine(loaded, loaded.bundle.beta, 5, cached_tokens=False)  # model.query_vectors path
    np.testing.assert_allclose(reference.query_vectors([history]), got[:1], atol=1e-5, rtol=1e-5)


def test_evaluation_scores_the_selected_history(tmp_path):
    from recsys.evaluation.methods import bundle_recommender
    from recsys.models.setrec import pad_histories

    _, selector, _, loaded = dare_bundle(tmp_path)
    history = long_history_that_selects_differently(selector)
    scores = bundle_recommender("setrec", loaded).score([history])
    with torch.no_grad():
        want = loaded.score_all(pad_histories(selector([history]), 5), loaded.bundle.beta)
    torch.testing.assert_close(scores, want, atol=1e-5, rtol=1e-5)
