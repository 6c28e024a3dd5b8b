"""RLMRec alignment in SASRec: the InfoNCE, the user profiles, both variants train CF towards text, align 'none' needs no text."""

from __future__ import annotations

import pytest
import torch

from recsys.errors import ConfigError
from recsys.models.rlmrec import CFTextAlignment, infonce
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.training.sasrec import SASRecModule, WindowBatches, aligned_sasrec_loss, sasrec_loss


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = dict(hidden_size=16, num_layers=1, num_heads=2, inner_size=32, max_len=6, dropout=0.0, attn_dropout=0.0)
NUM_ITEMS = 30


def batch():
    torch.manual_seed(0)
    sequences = [torch.randint(0, NUM_ITEMS, (n,)).tolist() for n in (3, 5, 8, 11)]
    collate = WindowBatches(sequences, max_len=6, stride=3)
    return collate(list(range(len(collate))))


def test_infonce_prefers_matching_rows():
    x = torch.randn(8, 5)
    assert infonce(x, x, 0.1) < infonce(x, x.roll(1, 0), 0.1)
    assert infonce(x[:0], x[:0], 0.1) == 0


def test_user_profile_is_the_mean_text_of_the_items_read_so_far():
    text = torch.randn(NUM_ITEMS, 7)
    align = CFTextAlignment(text, 16, "con", 0.2)
    histories = torch.tensor([[-1, -1, 3, 4, 5], [1, 2, 3, 4, 5]])
    profiles = align.user_profiles(histories)
    torch.testing.assert_close(profiles[0, 3], (text[3] + text[4]) / 2)
    torch.testing.assert_close(profiles[1, 4], text[1:6].mean(0))
    torch.testing.assert_close(profiles[0, 2], text[3])


@pytest.mark.parametrize("mode", ["con", "gen"])
def test_alignment_makes_each_item_found_from_its_text(mode):
    """Trained on the alignment, an item's CF embedding and its text find each other across the views."""
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(NUM_ITEMS, 12), dim=1)
    model = SASRec(NUM_ITEMS, SASRecConfig(**SMALL))
    align = CFTextAlignment(text, 16, mode, 0.2, mask_ratio=0.3)
    histories, targets = batch()
    items = torch.unique(torch.cat([histories.flatten(), targets.flatten()]))
    items = items[items >= 0]

    def matched() -> float:
        with torch.no_grad():
            cf = model.item_embeddings()[items]
            if mode == "con":
                a, b = cf, align.project(text[items])
            else:
                a, b = align.reconstruct(cf), text[items]
            sims = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
        return float((sims.argmax(1) == torch.arange(len(items))).float().mean())

    before = matched()
    optimizer = torch.optim.Adam([*model.parameters(), *align.parameters()], lr=1e-2)
    for _ in range(150):
        _, _, loss = aligned_sasrec_loss(model, align, histories, targets, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before < 0.3 and matched() > 0.9


def test_con_cross_entropy_part_is_plain_sasrec_loss():
    torch.manual_seed(0)
    model = SASRec(NUM_ITEMS, SASRecConfig(**SMALL))
    align = CFTextAlignment(torch.randn(NUM_ITEMS, 12), 16, "con", 0.2)
    histories, targets = batch()
    total, ce, part = aligned_sasrec_loss(model, align, histories, targets, 0.5)
    torch.testing.assert_close(ce, sasrec_loss(model, histories, targets))
    torch.testing.assert_close(total, ce + 0.5 * part)
    total.backward()
    assert model.item_embedding.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in align.project.parameters())


def test_gen_masks_only_real_positions_in_training():
    align = CFTextAlignment(torch.randn(NUM_ITEMS, 12), 16, "gen", 0.2, mask_ratio=0.5)
    histories = torch.tensor([[-1, -1, 3, 4, 5, 6]] * 50)
    masked = align.input_mask(histories)
    assert masked[:, :2].sum() == 0 and masked[:, 2:].any()
    align.eval()
    assert align.input_mask(histories) is None
    model = SASRec(NUM_ITEMS, SASRecConfig(**SMALL)).eval()
    full = torch.zeros_like(histories, dtype=torch.bool)
    full[:, 3] = True
    with torch.no_grad():
        plain, hidden = model(histories), model(histories, full, align.mask_embedding)
    torch.testing.assert_close(plain[:, :3], hidden[:, :3])  # causal: positions before the mask unchanged
    assert not torch.allclose(plain[:, 3:], hidden[:, 3:])


def test_align_needs_text_only_when_on():
    SASRecModule(NUM_ITEMS, SASRecConfig(**SMALL))  # align none: no text needed
    with pytest.raises(ConfigError, match="align"):
        SASRecModule(NUM_ITEMS, SASRecConfig(**SMALL, align="con"))
    with pytest.raises(ConfigError, match="align"):
        SASRecConfig(align="contrastive")
    with pytest.raises(ConfigError, match="align_temperature"):
        SASRecConfig(align_temperature=0.0)
    module = SASRecModule(NUM_ITEMS, SASRecConfig(**SMALL, align="gen"), torch.randn(NUM_ITEMS, 12))
    assert module.alignment is not None and "alignment" not in {k.split(".")[0] for k in module.model.state_dict()}
