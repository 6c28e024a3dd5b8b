"""benchmarks/token_geometry.py: the neighbour overlap it reports is right on hand-made similarities."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "token_geometry.py"


def _module():
    spec = importlib.util.spec_from_file_location("token_geometry", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overlap_is_one_for_the_same_geometry_and_zero_for_disjoint_neighbours():
    overlap = _module().neighbour_overlap
    points = torch.nn.functional.normalize(torch.randn(12, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    same = points @ points.T
    # a monotone rescaling keeps every neighbour list; the self-similarity never counts
    assert torch.equal(overlap(same, 3 * same + 1, k=2), torch.ones(12))
    # two blocks: the reference's neighbours are within a block, the candidate's in the other one
    block = torch.zeros(4, 4)
    block[:2, :2] = block[2:, 2:] = 1.0
    assert torch.equal(overlap(block, 1.0 - block, k=2), torch.full((4,), 0.5))  # 1 shared of 2: the ranks beyond the block
    assert torch.equal(overlap(block, 1.0 - block, k=1), torch.zeros(4))
