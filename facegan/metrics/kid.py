"""Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel, over random subsets.

    mean, std = kid_from_features(real_NF=real, fake_NF=fake, subsets=100, subset_size=1000, seed=0)

k(x, y) = (x.y / F + 1)^3 (Bińkowski et al. 2018). Each subset's MMD^2 is torchmetrics' unbiased
estimate (`poly_mmd`: diagonal terms left out of the within-set means), so its expectation is
exactly zero when both sets come from one distribution and small sets give unbiased, if noisy,
values. Subsets are drawn from a seeded generator, not the global RNG, so a score is reproducible
and computing it does not shift the random stream of whatever runs next.

    .venv/bin/python -m pytest tests/test_metrics.py -q -k kid
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.image.kid import poly_mmd

from facegan.metrics.fid import check_features
from facegan.metrics.registry import MetricInputs, register_metric


def kid_from_features(*, real_NF: Tensor, fake_NF: Tensor, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """(mean, std) over `subsets` random subsets of `subset_size` rows from each set (float64)."""
    check_features(real_NF=real_NF, fake_NF=fake_NF)
    if subsets < 1:
        raise ValueError(f"subsets: expected a positive integer, got {subsets}")
    if not 2 <= subset_size <= min(real_NF.shape[0], fake_NF.shape[0]):
        raise ValueError(f"subset_size: expected 2 <= subset_size <= the smaller set "
                         f"({min(real_NF.shape[0], fake_NF.shape[0])} rows), got {subset_size}")
    real = real_NF.detach().cpu().double()
    fake = fake_NF.detach().cpu().double()
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        r = real[torch.randperm(real.shape[0], generator=gen)[:subset_size]]
        f = fake[torch.randperm(fake.shape[0], generator=gen)[:subset_size]]
        scores.append(poly_mmd(r, f, degree=3, gamma=None, coef=1.0))
    values = torch.stack(scores)
    # Population std over subsets, as torchmetrics and torch-fidelity report it.
    return float(values.mean()), float(values.std(unbiased=False))


@register_metric("kid", needs=("real_eval_feats", "fake_feats"), feature_based=True)
def _kid(inputs: MetricInputs) -> dict[str, float]:
    assert inputs.real_eval_feats is not None and inputs.fake_feats is not None
    opt = inputs.options
    size = min(opt.kid_subset_size, inputs.real_eval_feats.shape[0], inputs.fake_feats.shape[0])
    mean, std = kid_from_features(real_NF=inputs.real_eval_feats, fake_NF=inputs.fake_feats,
                                  subsets=opt.kid_subsets, subset_size=size, seed=opt.seed)
    return {"kid": mean, "kid_std": std}
