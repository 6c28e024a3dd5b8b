"""SASRec: attention paths equal, padding and causality, the fast window path equal to the prefix reference, it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys.errors import ArtifactError, ConfigError
from recsys.models.sasrec import SASRec, SASRecConfig, attention, attention_reference
from recsys.training.sasrec import PrefixBatches, WindowBatches, load_sasrec, sasrec_loss, save_sasrec

@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a busy 2-core machine two threads spin-wait on each other (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = dict(hidden_size=16, num_layers=2, num_heads=2, inner_size=32, max_len=6)


def small_model(num_items: int = 30, **overrides) -> SASRec:
    torch.manual_seed(0)
    return SASRec(num_items, SASRecConfig(**{**SMALL, **overrides})).eval()


def random_sequences(seed: int = 0, lengths=(2, 3, 5, 9, 14, 23)) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 30, n).tolist() for n in lengths]


def test_fused_attention_equals_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8) for _ in range(3))
    allowed = torch.rand(3, 1, 7, 7) > 0.3
    allowed |= torch.eye(7, dtype=torch.bool)
    torch.testing.assert_close(attention(q, k, v, allowed), attention_reference(q, k, v, allowed), atol=1e-5, rtol=1e-5)


def test_padding_width_does_not_change_scores():
    model = small_model()
    histories = [[3, 7, 9], [12], [1, 2, 3, 4, 5, 6, 7, 8]]  # the last one is cut to max_len
    narrow = SASRec.pad_histories(histories, max_len=6)
    wide = torch.cat([torch.full((3, 4), -1), narrow], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.score(narrow), model.score(wide))
        torch.testing.assert_close(model.score(narrow[2:]), model.score(SASRec.pad_histories([[3, 4, 5, 6, 7, 8]], 6)))


def test_causal_later_items_do_not_change_earlier_states():
    model = small_model()
    a = torch.tensor([[4, 8, 15, 16, 23]])
    b = a.clone()
    b[0, -1] = 29
    with torch.no_grad():
        ha, hb = model(a), model(b)
    torch.testing.assert_close(ha[:, :-1], hb[:, :-1])
    assert not torch.allclose(ha[:, -1], hb[:, -1])


def test_every_state_of_a_window_is_the_state_of_its_prefix():
    model = small_model()
    window = torch.tensor([[5, 1, 17, 2, 9, 11]])
    with torch.no_grad():
        hidden = model(window)[0]
        for t in range(window.shape[1]):
            torch.testing.assert_close(hidden[t], model(window[:, : t + 1])[0, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2, 4, 6, 50])
def test_windows_score_every_target_once(stride):
    sequences = random_sequences()
    windows, prefixes = WindowBatches(sequences, 6, stride), PrefixBatches(sequences, 6)
    histories, targets = windows(list(range(len(windows))))
    _, prefix_targets = prefixes(list(range(len(prefixes))))
    scored = targets[targets >= 0]
    assert len(scored) == len(prefixes) == windows.num_targets
    assert sorted(scored.tolist()) == sorted(prefix_targets.tolist())
    # each scored position has at least max_len - stride + 1 history items, or all earlier ones
    real = (histories >= 0).cumsum(dim=1)
    assert int(real[targets >= 0].min()) >= 1


def test_window_fast_path_equals_prefix_reference():
    """Stride 1 reproduces the prefix protocol exactly; longer strides only shorten long histories."""
    model = small_model()
    sequences = random_sequences(1)
    prefixes = PrefixBatches(sequences, 6)
    reference = F.cross_entropy(model.score(prefixes(list(range(len(prefixes))))[0]), prefixes(list(range(len(prefixes))))[1], reduction="none")
    for stride, exact in ((1, True), (3, False)):
        windows = WindowBatches(sequences, 6, stride)
        histories, targets = windows(list(range(len(windows))))
        with torch.no_grad():
            fast = F.cross_entropy(model.logits(model(histories)[targets >= 0]), targets[targets >= 0], reduction="none")
        same = torch.allclose(fast.sort().values, reference.sort().values, atol=1e-5)
        assert same == exact
    # users with at most max_len earlier items: identical in both protocols for any stride
    short = [s for s in sequences if len(s) <= 7]
    p, w = PrefixBatches(short, 6), WindowBatches(short, 6, 3)
    with torch.no_grad():
        torch.testing.assert_close(sasrec_loss(model, *w(list(range(len(w))))), sasrec_loss(model, *p(list(range(len(p))))))


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="num_heads"):
        SASRecConfig(hidden_size=10, num_heads=3)
    with pytest.raises(ConfigError, match="train_samples"):
        SASRecConfig(train_samples="everything")
    with pytest.raises(ConfigError, match="num_items"):
        SASRec(0)


def test_save_load_round_trip(tmp_path):
    model = small_model()
    save_sasrec(model, model.config, tmp_path / "m", extra={"note": 1})
    back, config = load_sasrec(tmp_path / "m")
    assert config == model.config
    histories = SASRec.pad_histories([[1, 2, 3]], 6)
    with torch.no_grad():
        torch.testing.assert_close(back.score(histories), model.score(histories))
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    save_file(state, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "setrec-sasrec-v1"})
    with pytest.raises(ArtifactError, match="retrain"):
        load_sasrec(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_sasrec(tmp_path / "m")


def _cycle_dataset(root, num_users: int = 60, num_items: int = 40, seed: int = 0):
    """Users walk a fixed item cycle (item i is followed by i+1) from random starts; popularity is flat."""
    import hashlib
    import json

    import polars as pl

    rng = np.random.default_rng(seed)
    rows = []
    for user in range(num_users):
        start, length = int(rng.integers(num_items)), int(rng.integers(8, 15))
        for pos in range(length):
            split = "test" if pos == length - 1 else "valid" if pos == length - 2 else "train"
            rows.append((user, (start + pos) % num_items, pos, split))
    root.mkdir(parents=True)
    pl.DataFrame(
        {
            "user_idx": pl.Series([r[0] for r in rows], dtype=pl.Int32),
            "item_idx": pl.Series([r[1] for r in rows], dtype=pl.Int32),
            "ts": pl.Series([r[2] for r in rows], dtype=pl.Int64),
            "split": pl.Series([r[3] for r in rows], dtype=pl.Enum(["train", "valid", "test"])),
        }
    ).write_parquet(root / "interactions.parquet")
    pl.DataFrame({"item_idx": pl.Series(range(num_items), dtype=pl.Int32), "item_id": [f"i{i}" for i in range(num_items)], "text": [f"item {i}" for i in range(num_items)], "is_cold": [False] * num_items}).write_parquet(root / "items.parquet")
    pl.DataFrame({"user_idx": pl.Series(range(num_users), dtype=pl.Int32), "user_id": [f"u{u}" for u in range(num_users)]}).write_parquet(root / "users.parquet")
    (root / "manifest.json").write_text(json.dumps({"fingerprint": hashlib.sha256(b"cycle").hexdigest()[:16]}))
    return root


def _popularity_test_ndcg(data) -> float:
    from recsys.evaluation.metrics import gold_ranks, loo_metrics
    from recsys.models.popularity import Popularity

    examples = data.eval_examples("test")
    scores = Popularity.fit(data).score(examples.histories)
    return loo_metrics(gold_ranks(scores, torch.tensor([g[0] for g in examples.gold])), (10,))["ndcg@10"]


def test_learns_a_sequential_pattern(tmp_path):
    """On data whose next item follows from the last one, a short run gets far past popularity."""
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.training.sasrec import fit_sasrec

    data = PreparedDataset.load(_cycle_dataset(tmp_path / "cycle"))
    config = SASRecConfig(hidden_size=32, num_layers=1, num_heads=1, inner_size=64, max_len=10, dropout=0.1, attn_dropout=0.1,
                          lr=1e-2, window_batch_size=16, max_epochs=8, patience=8, accelerator="cpu")
    result = fit_sasrec(data, config, log_to_mlflow=False)
    assert result.test_metrics["ndcg@10"] > 0.5 > 0.3 + _popularity_test_ndcg(data)
    assert result.valid_metrics["ndcg@10"] > 0.5


@pytest.mark.slow
def test_beats_popularity_on_real_data(amazon_industrial_dir, tmp_path):
    """A short run on Amazon Industrial (3,285 users) beats most-popular on the test split."""
    from recsys.pipelines.prepare import PrepareConfig, prepare
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.training.sasrec import fit_sasrec

    prepare(PrepareConfig(source=str(amazon_industrial_dir), out=str(tmp_path / "ai"), kcore=0))
    data = PreparedDataset.load(tmp_path / "ai")
    config = SASRecConfig(hidden_size=32, num_layers=1, inner_size=64, max_len=12, dropout=0.3, attn_dropout=0.3, lr=3e-3,
                          window_batch_size=128, max_epochs=6, patience=6, accelerator="cpu")
    result = fit_sasrec(data, config, log_to_mlflow=False)
    popularity = _popularity_test_ndcg(data)
    assert result.test_metrics["ndcg@10"] > 1.5 * popularity, (result.test_metrics["ndcg@10"], popularity)
