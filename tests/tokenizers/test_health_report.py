"""The token-table health report against a direct pair-by-pair computation on a hand-made table.

The table has planted near-duplicates (a scaled copy, a slightly moved copy), an opposite item,
an all-zero row, items without CF and added items, so every number of the report has a known
value to match; ``health_report`` computes the mean from a sum of unit vectors and the rest in
blocks, the reference below loops over the pairs.
"""

from __future__ import annotations

import math

import polars as pl
import pytest
import torch

from recsys.models.item_tokens import ItemTokenEncoder

from recsys.tokenizers.identifiers import ItemTokenTable, health_report, item_map

NUM_ITEMS, N, D, THRESHOLD = 40, 2, 4, 0.99
NO_CF, ADDED = (3, 4), 2  # items without CF; the last ADDED items were added from text


def make_table(with_encoder: bool = True) -> ItemTokenTable:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(NUM_ITEMS, N + 1, D, generator=generator)
    tokens[5] = 2.5 * tokens[2]  # cosine 1 with item 2
    tokens[7] = tokens[2] + 1e-3 * torch.randn(N + 1, D, generator=generator)  # cosine ~1 with items 2 and 5
    tokens[9] = -tokens[2]  # cosine -1
    tokens[11] = 0.0  # no direction: cosine 0 with everything
    tokens[21] = tokens[20] + 1e-2 * torch.randn(N + 1, D, generator=generator)
    has_cf = torch.ones(NUM_ITEMS, dtype=torch.bool)
    has_cf[list(NO_CF)] = False
    ids = [f"i{j}" for j in range(NUM_ITEMS)]
    items = pl.concat([item_map(ids[:-ADDED], has_cf[:-ADDED]),
                       item_map(ids[-ADDED:], has_cf[-ADDED:], added=True, start=NUM_ITEMS - ADDED)])
    encoder = None
    if with_encoder:
        torch.manual_seed(1)
        encoder = ItemTokenEncoder(torch.randn(NUM_ITEMS, 6), has_cf, torch.randn(NUM_ITEMS, 10), N, D)
    return ItemTokenTable(tokens, items, encoder=encoder)


def pair_cosines(tokens: torch.Tensor, items: list[int] | None = None) -> dict[tuple[int, int], float]:
    """Cosine of every pair i < j of (a subset of) items, 0 where a row is all zeros; one pair at a time."""
    rows = tokens.flatten(1).double()
    items = list(range(rows.shape[0])) if items is None else items
    out = {}
    for a, i in enumerate(items):
        for j in items[a + 1 :]:
            norm = float(rows[i].norm() * rows[j].norm())
            out[(i, j)] = float(rows[i] @ rows[j]) / norm if norm > 0 else 0.0
    return out


def direct_mse(encoder: ItemTokenEncoder) -> float:
    text = encoder.text_embeddings
    with torch.no_grad():
        _, reconstructed = encoder.autoencoder(text)
    return float(((reconstructed.double() - text.double()) ** 2).mean())


@pytest.mark.parametrize("block", [4096, 7])  # one block, and blocks that split the pairs
def test_health_report_equals_a_direct_computation(block):
    table = make_table()
    report = health_report(table, threshold=THRESHOLD, block=block)
    cosines = pair_cosines(table.tokens)
    values = list(cosines.values())
    near = sorted(pair for pair, value in cosines.items() if value > THRESHOLD)
    assert {(2, 5), (2, 7), (5, 7), (20, 21)} <= set(near)  # what was planted is found by the reference too

    assert (report.num_items, report.tokens_per_item, report.token_dim) == (NUM_ITEMS, N + 1, D)
    assert report.mean_cosine == pytest.approx(sum(values) / len(values), abs=1e-6)
    assert report.max_cosine == pytest.approx(max(values), abs=1e-6)
    assert report.near_duplicate_pairs == len(near)
    assert report.threshold == THRESHOLD
    assert report.pairs_checked == len(values) and not report.sampled
    assert report.items_without_cf == len(NO_CF) and report.added_items == ADDED
    assert report.reconstruction_mse == pytest.approx(direct_mse(table.encoder), rel=1e-5)
    metrics = report.metrics()
    assert metrics["health_mean_cosine"] == pytest.approx(sum(values) / len(values), abs=1e-6)
    assert metrics["health_near_duplicate_pairs"] == len(near)


def test_a_sampled_report_keeps_the_exact_mean_and_checks_only_sampled_pairs():
    table = make_table(with_encoder=False)
    full = pair_cosines(table.tokens)
    report = health_report(table, threshold=THRESHOLD, max_pairwise_items=15, seed=3)
    assert report.sampled and report.pairs_checked == 15 * 14 // 2
    # the mean stays exact over all pairs, whatever the sample
    assert report.mean_cosine == pytest.approx(sum(full.values()) / len(full), abs=1e-6)
    # the max is the cosine of some pair, at most the full max; near-duplicates at most the full count
    assert min(abs(report.max_cosine - value) for value in full.values()) < 1e-6
    assert report.max_cosine <= max(full.values()) + 1e-6
    assert report.near_duplicate_pairs <= sum(value > THRESHOLD for value in full.values())
    # without an encoder there is no reconstruction to report, and MLflow gets no NaN
    assert math.isnan(report.reconstruction_mse) and "health_reconstruction_mse" not in report.metrics()
