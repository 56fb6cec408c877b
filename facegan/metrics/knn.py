"""Nearest-neighbour distances between feature sets, in blocks so 10k x 10k never sits in memory at once.

    radii_N = kth_neighbour_distance(feats_NF, k=3)                 # k-NN radius of each row, self excluded
    inside_M = within_any_ball(query_MF, centres_NF, radii_N)      # is each query inside some ball?
    dist_M = nearest_distance(query_MF, ref_NF)                     # distance to the closest reference row

Distances are Euclidean, computed in float32 blocks of `chunk_size` query rows (a 1024 x 10k block
is 40 MB). Matrix-multiply distances lose a little precision for identical rows, so they are
clamped at zero and compared with a tolerance where exact ties matter.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _blocks(n: int, chunk_size: int) -> range:
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    return range(0, n, chunk_size)


def _cdist(a: Tensor, b: Tensor) -> Tensor:
    return torch.cdist(a, b).clamp_min_(0.0)


def kth_neighbour_distance(feats_NF: Tensor, *, k: int, chunk_size: int = 1024) -> Tensor:
    """Distance (N,) from each row to its k-th nearest other row of the same set."""
    n = feats_NF.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k: expected 1 <= k < number of rows ({n}), got {k}")
    feats = feats_NF.detach().cpu().float()
    out = torch.empty(n)
    for i in _blocks(n, chunk_size):
        d = _cdist(feats[i:i + chunk_size], feats)
        # k + 1 smallest: a row's own distance (zero) is among them, so the last one is the k-th other.
        rows = torch.arange(d.shape[0])
        d[rows, rows + i] = -1.0   # force the row itself first, even if rounding made it positive
        out[i:i + chunk_size] = d.topk(k + 1, dim=1, largest=False).values[:, -1]
    return out


def within_any_ball(query_MF: Tensor, centres_NF: Tensor, radii_N: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """Bool (M,): whether each query row lies within radii_N[j] of some centre row j."""
    query = query_MF.detach().cpu().float()
    centres = centres_NF.detach().cpu().float()
    radii = radii_N.detach().cpu().float()
    # Slack for matmul-based rounding: a copy of a centre must count as inside its ball.
    tol = 1e-4 * (1.0 + radii.max()) if radii.numel() else 0.0
    out = torch.empty(query.shape[0], dtype=torch.bool)
    for i in _blocks(query.shape[0], chunk_size):
        out[i:i + chunk_size] = (_cdist(query[i:i + chunk_size], centres) <= radii[None] + tol).any(dim=1)
    return out


def nearest_distance(query_MF: Tensor, ref_NF: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """Distance (M,) from each query row to its nearest reference row."""
    query = query_MF.detach().cpu().float()
    ref = ref_NF.detach().cpu().float()
    out = torch.empty(query.shape[0])
    for i in _blocks(query.shape[0], chunk_size):
        out[i:i + chunk_size] = _cdist(query[i:i + chunk_size], ref).min(dim=1).values
    return out
