"""Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds, k = 3.

    p, r = precision_recall(real_NF=real, fake_NF=fake, k=3)

Each set's manifold is the union of balls around its rows, each ball reaching the row's k-th
nearest neighbour in the same set. Precision is the share of fakes inside the real manifold
(are the samples realistic?); recall the share of reals inside the fake manifold (is the real
variety covered?). The arithmetic is torch-fidelity's `prc_features_to_metric` (the reference
implementation's k-NN radii, its `save_cpu_ram` path: distances in blocks of `chunk_size` rows,
so 10k x 10k never sits in memory at once).

    .venv/bin/python -m pytest tests/test_metrics.py -q -k precision
"""

from __future__ import annotations

from torch import Tensor
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from facegan.metrics.fid import check_features
from facegan.metrics.registry import MetricInputs, register_metric


def precision_recall(*, real_NF: Tensor, fake_NF: Tensor, k: int = 3, chunk_size: int = 1024) -> tuple[float, float]:
    """(precision, recall) of the fake features against the real ones."""
    check_features(real_NF=real_NF, fake_NF=fake_NF, min_rows=k + 1)
    if k < 1:
        raise ValueError(f"k: expected a positive integer, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    # torch-fidelity's convention: features_1 are the generated rows, features_2 the real ones.
    out = prc_features_to_metric(fake_NF.detach().cpu().float(), real_NF.detach().cpu().float(),
                                 prc_neighborhood=k, prc_batch_size=chunk_size, save_cpu_ram=True, verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


@register_metric("precision_recall", needs=("real_eval_feats", "fake_feats"), feature_based=True)
def _precision_recall(inputs: MetricInputs) -> dict[str, float]:
    assert inputs.real_eval_feats is not None and inputs.fake_feats is not None
    p, r = precision_recall(real_NF=inputs.real_eval_feats, fake_NF=inputs.fake_feats, k=inputs.options.pr_k,
                            chunk_size=inputs.options.chunk_size)
    return {"precision": p, "recall": r}
