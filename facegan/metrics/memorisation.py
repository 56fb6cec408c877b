"""Memorisation: are generated images closer to training images than unseen real images are?

    m = memorisation(train_NF=train, heldout_NF=val, fake_NF=fake)
    m["ratio"]   # median fake->train NN distance / median held-out->train NN distance

A generator that copies training images puts its samples much nearer the training set than
held-out real faces are, so a ratio well below 1 flags memorisation; around 1 or above is what an
honest generator gives. Distances are Euclidean in the feature space of the extractor used.

    .venv/bin/python -m pytest tests/test_metrics.py -q -k memoris
"""

from __future__ import annotations

import torch
from torch import Tensor

from facegan.metrics.fid import check_features
from facegan.metrics.knn import nearest_distance
from facegan.metrics.registry import MetricInputs, register_metric


def memorisation(*, train_NF: Tensor, heldout_NF: Tensor, fake_NF: Tensor, chunk_size: int = 1024
                 ) -> dict[str, float]:
    """Median nearest-training-image distances of fakes and of held-out reals, and their ratio."""
    check_features(real_NF=train_NF, fake_NF=fake_NF, min_rows=1)
    check_features(real_NF=train_NF, fake_NF=heldout_NF, min_rows=1)
    fake_med = float(torch.median(nearest_distance(fake_NF, train_NF, chunk_size=chunk_size)))
    heldout_med = float(torch.median(nearest_distance(heldout_NF, train_NF, chunk_size=chunk_size)))
    ratio = fake_med / heldout_med if heldout_med > 0 else float("nan")
    return {"fake_nn_median": fake_med, "heldout_nn_median": heldout_med, "ratio": ratio}


@register_metric("memorisation", needs=("real_train_feats", "real_eval_feats", "fake_feats"), feature_based=True)
def _memorisation(inputs: MetricInputs) -> dict[str, float]:
    assert inputs.real_train_feats is not None and inputs.real_eval_feats is not None
    assert inputs.fake_feats is not None
    m = memorisation(train_NF=inputs.real_train_feats, heldout_NF=inputs.real_eval_feats,
                     fake_NF=inputs.fake_feats, chunk_size=inputs.options.chunk_size)
    return {f"memorisation_{k}": v for k, v in m.items()}
