"""Nearest-neighbour distances between feature sets, in blocks so 10k x 10k never sits in memory at once.

    dist_M = nearest_distance(query_MF, ref_NF)                     # distance to the closest reference row

(Precision/recall's k-NN balls are torch-fidelity's: facegan.metrics.precision_recall.)

Distances are Euclidean, computed in float32 blocks of `chunk_size` query rows (a 1024 x 10k block
is 40 MB). Matrix-multiply distances lose a little precision for identical rows, so they are
clamped at zero.
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


def nearest_distance(query_MF: Tensor, ref_NF: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """Distance (M,) from each query row to its nearest reference row."""
    query = query_MF.detach().cpu().float()
    ref = ref_NF.detach().cpu().float()
    out = torch.empty(query.shape[0])
    for i in _blocks(query.shape[0], chunk_size):
        out[i:i + chunk_size] = _cdist(query[i:i + chunk_size], ref).min(dim=1).values
    return out
