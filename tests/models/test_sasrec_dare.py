"""SASRec with decoupled attention and representation embeddings (DARE, Feng et al., ICLR 2025).

Shapes and parameters, the attention table is used and only for attention, attention weights do
not depend on the representation table, causality and padding invariance as for shared
embeddings, save/load, config validation, RLMRec masking and a tiny fit.
"""

from __future__ import annotations

import pytest
import torch

from recsys.errors import ConfigError
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.training.sasrec import WindowBatches, load_sasrec, sasrec_loss, save_sasrec


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a busy 2-core machine two threads spin-wait on each other (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = dict(hidden_size=16, num_layers=2, num_heads=2, inner_size=32, max_len=6)
HISTORIES = [[3, 7, 9], [12], [1, 2, 3, 4, 5, 6, 7, 8], [20, 21, 22, 23]]
#: The state-dict keys of shared SASRec (1 block): decoupled embeddings must not change them.
SHARED_KEYS = [
    "item_embedding.weight", "position_embedding.weight", "embed_norm.weight", "embed_norm.bias",
    "blocks.0.attention.qkv.weight", "blocks.0.attention.qkv.bias", "blocks.0.attention.out.weight",
    "blocks.0.attention.out.bias", "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.ffn.0.weight",
    "blocks.0.ffn.0.bias", "blocks.0.ffn.2.weight", "blocks.0.ffn.2.bias", "blocks.0.norm2.weight", "blocks.0.norm2.bias",
]


def small_model(num_items: int = 30, **overrides) -> SASRec:
    torch.manual_seed(0)
    return SASRec(num_items, SASRecConfig(**{**SMALL, "embeddings": "decoupled", **overrides})).eval()


def test_shapes_and_parameters():
    model = small_model()
    assert model.config.attention_dim == 8  # hidden_size // 2 by default
    assert model.attention_embedding.weight.shape == (31, 8) and model.attention_position_embedding.weight.shape == (6, 8)
    assert model.attention_embeddings().shape == (30, 8) and model.item_embeddings().shape == (30, 16)
    assert model.blocks[0].attention.qk.weight.shape == (32, 8)  # queries and keys: attention_dim -> 2 * hidden
    assert model.blocks[0].attention.v.weight.shape == (16, 16)
    assert not hasattr(model.blocks[0].attention, "qkv")
    histories = SASRec.pad_histories(HISTORIES, 6)
    with torch.no_grad():
        assert model(histories).shape == (4, 6, 16) and model.score(histories).shape == (4, 30)
        weights = model.attention_probabilities(histories)
    assert len(weights) == 2 and weights[0].shape == (4, 2, 6, 6)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(4, 2, 6))
    assert small_model(attention_size=24).attention_embeddings().shape == (30, 24)  # larger than hidden is allowed
    assert torch.all(model.attention_embedding.weight[0] == 0)  # the padding row


def test_shared_keeps_its_parameters_and_keys():
    torch.manual_seed(0)
    shared = SASRec(30, SASRecConfig(**{**SMALL, "num_layers": 1}))
    assert list(shared.state_dict()) == SHARED_KEYS
    assert shared.config.attention_dim == 0 and shared.attention_embeddings() is not None
    assert torch.equal(shared.attention_embeddings(), shared.item_embeddings())
    assert not any(name.startswith("attention_") for name, _ in shared.named_parameters())
    torch.manual_seed(0)
    explicit = SASRec(30, SASRecConfig(**{**SMALL, "num_layers": 1}, embeddings="shared"))
    assert all(torch.equal(a, b) for a, b in zip(shared.state_dict().values(), explicit.state_dict().values()))


def test_attention_table_is_used():
    """(a) Perturbing only attention-table rows of history items changes the scores."""
    model = small_model()
    histories = SASRec.pad_histories(HISTORIES, 6)
    with torch.no_grad():
        for block in model.blocks:  # sharper attention than at initialisation (near uniform), as after training
            block.attention.qk.weight *= 20
        before = model.score(histories)
        model.attention_embedding.weight[1:14] += torch.randn(13, 8)  # items 0..12
        after = model.score(histories)
    assert not torch.allclose(before[0], after[0], atol=1e-4) and not torch.allclose(before[2], after[2], atol=1e-4)
    torch.testing.assert_close(before[1], after[1])  # one item: it attends to itself with weight 1 whatever the table
    torch.testing.assert_close(before[3], after[3])  # its items (20..23) have untouched attention rows


def test_attention_weights_do_not_depend_on_the_representation_table():
    """(b) Attention weights read the attention table only; outputs still read the representation table."""
    model = small_model()
    histories = SASRec.pad_histories(HISTORIES, 6)
    with torch.no_grad():
        weights, hidden = model.attention_probabilities(histories), model(histories)
        model.item_embedding.weight[1:] = torch.randn(30, 16)  # a different representation table
        changed, hidden2 = model.attention_probabilities(histories), model(histories)
    for a, b in zip(weights, changed):
        assert torch.equal(a, b)
    assert not torch.allclose(hidden, hidden2, atol=1e-4)
    # two items with the same attention row: swapping their representation rows leaves the weights alone
    with torch.no_grad():
        model.attention_embedding.weight[5] = model.attention_embedding.weight[4]  # items 3 and 4
        pair = torch.tensor([[1, 3, 2, 4, 7]])
        swapped = torch.tensor([[1, 4, 2, 3, 7]])
        torch.testing.assert_close(model.attention_probabilities(pair), model.attention_probabilities(swapped))
    # and in the shared model they do depend on it
    shared = SASRec(30, SASRecConfig(**SMALL)).eval()
    with torch.no_grad():
        weights = shared.attention_probabilities(histories)
        shared.item_embedding.weight[1:] = torch.randn(30, 16)
        assert not torch.allclose(weights[0], shared.attention_probabilities(histories)[0])


def test_gradients_of_attention_logits_reach_only_the_attention_table():
    model = small_model()
    histories = SASRec.pad_histories(HISTORIES, 6)
    sum(w.pow(2).sum() for w in model.attention_probabilities(histories)).backward()
    assert model.attention_embedding.weight.grad.abs().sum() > 0
    assert model.item_embedding.weight.grad is None


@pytest.mark.parametrize("embeddings", ["shared", "decoupled"])
def test_causal_and_padding_invariant(embeddings):
    """(c) As with shared embeddings: padding width, later items and prefixes do not change earlier states."""
    model = small_model(embeddings=embeddings)
    narrow = SASRec.pad_histories(HISTORIES, 6)
    wide = torch.cat([torch.full((4, 4), -1), narrow], dim=1)
    a = torch.tensor([[4, 8, 15, 16, 23]])
    b = a.clone()
    b[0, -1] = 29
    window = torch.tensor([[5, 1, 17, 2, 9, 11]])
    with torch.no_grad():
        torch.testing.assert_close(model.score(narrow), model.score(wide))
        ha, hb = model(a), model(b)
        torch.testing.assert_close(ha[:, :-1], hb[:, :-1])
        assert not torch.allclose(ha[:, -1], hb[:, -1])
        hidden = model(window)[0]
        for t in range(window.shape[1]):
            torch.testing.assert_close(hidden[t], model(window[:, : t + 1])[0, -1], atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    """(d) A decoupled model and its config round-trip through save_sasrec / load_sasrec."""
    model = small_model(attention_size=4)
    save_sasrec(model, model.config, tmp_path / "m")
    back, config = load_sasrec(tmp_path / "m")
    assert config == model.config and config.embeddings == "decoupled" and config.attention_size == 4
    assert list(back.state_dict()) == list(model.state_dict())
    histories = SASRec.pad_histories(HISTORIES, 6)
    with torch.no_grad():
        torch.testing.assert_close(back.score(histories), model.score(histories))
    torch.testing.assert_close(back.attention_embeddings(), model.attention_embeddings())


def test_config_validation():
    """(e) attention_size and embeddings are checked, each error naming its key."""
    with pytest.raises(ConfigError, match="^attention_size: must be >= 0"):
        SASRecConfig(embeddings="decoupled", attention_size=-1)
    with pytest.raises(ConfigError, match="^attention_size: only used with embeddings='decoupled'"):
        SASRecConfig(attention_size=8)
    with pytest.raises(ConfigError, match="^attention_size: .*hidden_size=1"):
        SASRecConfig(hidden_size=1, num_heads=1, embeddings="decoupled")
    assert SASRecConfig(hidden_size=1, num_heads=1, embeddings="decoupled", attention_size=2).attention_dim == 2
    with pytest.raises(ConfigError, match="^embeddings: must be 'shared' or 'decoupled'"):
        SASRecConfig(embeddings="separate")
    # the benchmark's sections and method overrides go through config_from_values
    from recsys.config import config_from_values

    config = config_from_values(SASRecConfig, {"hidden_size": 16, "num_heads": 2}, {"embeddings": "decoupled"}, where="cf")
    assert config.embeddings == "decoupled" and config.attention_dim == 8
    with pytest.raises(ConfigError, match="attention_size"):
        config_from_values(SASRecConfig, {"attention_size": 8}, where="sasrec")


def test_rlmrec_masking_hides_masked_items_from_both_tables():
    """RLMRec-Gen's masked inputs: a masked position's attention row is dropped too, and the aligned loss trains."""
    from recsys.training.sasrec import SASRecModule

    model = small_model()
    histories = torch.tensor([[4, 8, 15, 16, 23]])
    masked = torch.tensor([[False, True, False, False, False]])
    mask = torch.randn(16)
    with torch.no_grad():
        before = model(histories, masked, mask)
        model.attention_embedding.weight[9] += 5.0  # item 8, masked
        model.item_embedding.weight[9] += 5.0
        torch.testing.assert_close(model(histories, masked, mask), before)
        assert not torch.allclose(model(histories), before)

    torch.manual_seed(0)
    config = SASRecConfig(**SMALL, embeddings="decoupled", align="gen", align_mask_ratio=0.5)
    module = SASRecModule(30, config, text_embeddings=torch.randn(30, 12)).train()
    windows = WindowBatches([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [8, 9, 10, 11]], 6, 3)
    batch = windows(list(range(len(windows))))
    module.log = lambda *args, **kwargs: None  # no trainer attached
    module.training_step(batch, 0).backward()
    assert module.model.attention_embedding.weight.grad.abs().sum() > 0
    assert module.alignment.mask_embedding.grad is not None


def test_tiny_fit_with_windows(tmp_path):
    """(f) A few epochs of window training learn the sequential pattern; the saved model scores the same."""
    from recsys.pipelines.prepared import PreparedDataset
    from recsys.training.sasrec import fit_sasrec
    from tests.models.test_sasrec import _cycle_dataset, _popularity_test_ndcg

    data = PreparedDataset.load(_cycle_dataset(tmp_path / "cycle"))
    config = SASRecConfig(hidden_size=16, num_layers=1, num_heads=1, inner_size=32, max_len=8, dropout=0.1, attn_dropout=0.1,
                          lr=1e-2, window_batch_size=16, max_epochs=6, patience=6, accelerator="cpu", embeddings="decoupled",
                          train_samples="windows")
    result = fit_sasrec(data, config, log_to_mlflow=False, out_dir=tmp_path / "m")
    assert result.model.attention_embeddings().shape == (40, 8)
    assert result.test_metrics["ndcg@10"] > 0.5 > 0.3 + _popularity_test_ndcg(data)  # about 0.8 after 3 epochs, 0.98 after 8
    back, _ = load_sasrec(tmp_path / "m")
    histories = SASRec.pad_histories([[1, 2, 3]], 8)
    with torch.no_grad():
        torch.testing.assert_close(back.score(histories), result.model.score(histories))
    windows = WindowBatches([[1, 2, 3, 4, 5]], 8, 4)
    assert torch.isfinite(sasrec_loss(result.model, *windows([0])))
