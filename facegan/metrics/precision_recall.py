"""Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds, k = 3.

    p, r = precision_recall(real_NF=real, fake_NF=fake, k=3)

Each set's manifold is the union of balls around its rows, each ball reaching the row's k-th
nearest neighbour in the same set. Precision is the share of fakes inside the real manifold
(are the samples realistic?); recall the share of reals inside the fake manifold (is the real
variety covered?). torchmetrics has no such metric; distances come in blocks (facegan.metrics.knn).

    .venv/bin/python -m pytest tests/test_metrics.py -q -k precision
"""

from __future__ import annotations

from torch import Tensor

from facegan.metrics.fid import check_features
from facegan.metrics.knn import kth_neighbour_distance, within_any_ball
from facegan.metrics.registry import MetricInputs, register_metric


def precision_recall(*, real_NF: Tensor, fake_NF: Tensor, k: int = 3, chunk_size: int = 1024) -> tuple[float, float]:
    """(precision, recall) of the fake features against the real ones."""
    check_features(real_NF=real_NF, fake_NF=fake_NF, min_rows=k + 1)
    real_radii = kth_neighbour_distance(real_NF, k=k, chunk_size=chunk_size)
    fake_radii = kth_neighbour_distance(fake_NF, k=k, chunk_size=chunk_size)
    precision = within_any_ball(fake_NF, real_NF, real_radii, chunk_size=chunk_size).float().mean()
    recall = within_any_ball(real_NF, fake_NF, fake_radii, chunk_size=chunk_size).float().mean()
    return float(precision), float(recall)


@register_metric("precision_recall", needs=("real_eval_feats", "fake_feats"), feature_based=True)
def _precision_recall(inputs: MetricInputs) -> dict[str, float]:
    assert inputs.real_eval_feats is not None and inputs.fake_feats is not None
    p, r = precision_recall(real_NF=inputs.real_eval_feats, fake_NF=inputs.fake_feats, k=inputs.options.pr_k,
                            chunk_size=inputs.options.chunk_size)
    return {"precision": p, "recall": r}
