"""Fréchet distance between Gaussian fits of two feature sets (FID with Inception features).

    fid = fid_from_features(real_NF=real, fake_NF=fake)   # ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^1/2)

Works on feature matrices, not images, so features can be extracted on many Ray workers and the
statistic computed once on the concatenated matrices. The arithmetic is torchmetrics'
FrechetInceptionDistance (float64 sums and covariances, the trace of the matrix square root from
the eigenvalues of S_r S_f), fed features through a pass-through feature module.

    .venv/bin/python -m pytest tests/test_metrics.py -q -k fid
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from facegan.metrics.registry import MetricInputs, register_metric


class _Passthrough(nn.Module):
    """The "feature network" of a metric that is given features: returns them unchanged."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, feats_NF: Tensor) -> Tensor:
        return feats_NF


def check_features(*, real_NF: Tensor, fake_NF: Tensor, min_rows: int = 2) -> None:
    """ValueError unless both are (N, F) matrices of the same width with at least `min_rows` rows."""
    for name, feats in (("real", real_NF), ("fake", fake_NF)):
        if feats.ndim != 2:
            raise ValueError(f"{name} features: expected an (N, F) matrix, got shape {tuple(feats.shape)}")
        if feats.shape[0] < min_rows:
            raise ValueError(f"{name} features: need at least {min_rows} rows, got {feats.shape[0]}")
        if not torch.isfinite(feats).all():
            raise ValueError(f"{name} features: contain NaN or inf")
    if real_NF.shape[1] != fake_NF.shape[1]:
        raise ValueError(f"real and fake features differ in width: {real_NF.shape[1]} vs {fake_NF.shape[1]}")


def fid_from_features(*, real_NF: Tensor, fake_NF: Tensor) -> float:
    """Fréchet distance between the Gaussians fitted (float64, unbiased covariance) to two feature sets."""
    check_features(real_NF=real_NF, fake_NF=fake_NF)
    # No cross-process sync: inside a Ray worker torch.distributed may be initialised, and a
    # metric computed on one rank would otherwise wait forever for the others to join.
    metric = FrechetInceptionDistance(feature=_Passthrough(real_NF.shape[1]), sync_on_compute=False)
    metric.update(real_NF.detach().cpu().double(), real=True)
    metric.update(fake_NF.detach().cpu().double(), real=False)
    # Rounding can leave a distance of identical sets a hair below zero.
    return max(0.0, float(metric.compute()))


@register_metric("fid", needs=("real_eval_feats", "fake_feats"), feature_based=True)
def _fid(inputs: MetricInputs) -> dict[str, float]:
    assert inputs.real_eval_feats is not None and inputs.fake_feats is not None
    return {"fid": fid_from_features(real_NF=inputs.real_eval_feats, fake_NF=inputs.fake_feats)}
