"""The metric registry and the one entry point the eval command calls.

    scores = compute_metrics(feature_name="inception", real_train_feats=train_NF, real_eval_feats=val_NF,
                             fake_feats=fake_NF, fake_images=fake_BCHW, real_images=val_BCHW)
    # {"fid": ..., "kid": ..., "kid_std": ..., "precision": ..., "recall": ..., "ms_ssim": ..., ...}

Each metric is a function of a MetricInputs returning {result name: float}, registered with the
inputs it needs. Results of feature-based metrics are renamed after the feature network: plain for
Inception (`fid`), suffixed otherwise (`fid_attr`), so a number from another network is never
reported as a comparable FID. Which real set each metric compares against:

* fid, kid, precision/recall: fakes vs `real_eval_feats` (held-out real images);
* memorisation: fakes and `real_eval_feats` vs their nearest neighbours in `real_train_feats`;
* ms_ssim: pairs within `fake_images` (and within `real_images` for the real-data reference);
* d_accuracy: `disc` on `real_images` (held-out) and `fake_images`;
* identity_diversity (face features only): pairs within the fakes and within `real_eval_feats`;
* face_detection: `fake_detected` / `real_detected`, the face detector's per-image flags.

A metric registered with `features=(...)` applies to those feature networks only (identity
diversity means something in a face-recognition space, not in Inception's); its result names
already say so and are not suffixed.

    .venv/bin/python -m pytest tests/test_metrics.py -q
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from torch import Tensor, nn

from facegan.metrics.features import INCEPTION_NAME


@dataclass(frozen=True, kw_only=True)
class MetricOptions:
    """Settings of the metrics; the defaults are the usual published ones where there is one."""

    kid_subsets: int = 100
    kid_subset_size: int = 1000       # clipped to the smaller feature set when that has fewer rows
    pr_k: int = 3                     # k of the k-NN manifolds (Kynkäänniemi et al. 2019)
    chunk_size: int = 1024            # query rows per pairwise-distance block
    ms_ssim_pairs: int = 1000
    ms_ssim_threshold: float = 0.9    # alarm when fakes are this close to identical (1.0)
    ms_ssim_margin: float = 0.1       # ... or this much more alike than real images are
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("kid_subsets", "kid_subset_size", "pr_k", "chunk_size", "ms_ssim_pairs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if not 0.0 < self.ms_ssim_threshold <= 1.0:
            raise ValueError(f"ms_ssim_threshold: expected a value in (0, 1], got {self.ms_ssim_threshold}")
        if not 0.0 <= self.ms_ssim_margin <= 1.0:
            raise ValueError(f"ms_ssim_margin: expected a value in [0, 1], got {self.ms_ssim_margin}")


@dataclass(frozen=True, kw_only=True)
class MetricInputs:
    """Everything a metric may look at; a metric declares which of these it needs."""

    real_train_feats: Tensor | None = None   # (N, F) training images' features
    real_eval_feats: Tensor | None = None    # (N, F) held-out real images' features
    fake_feats: Tensor | None = None         # (N, F) generated images' features
    fake_images: Tensor | None = None        # (N, 3, H, W) generated, uint8 or float [-1, 1]
    real_images: Tensor | None = None        # (N, 3, H, W) held-out real, uint8 or float [-1, 1]
    disc: nn.Module | None = None            # a discriminator: images in [-1, 1] -> one logit each
    fake_detected: Tensor | None = None      # (N,) bool: a face detector found a face in each fake
    real_detected: Tensor | None = None      # (N,) bool: ... in each held-out real image
    options: MetricOptions = MetricOptions()


INPUT_NAMES = tuple(f.name for f in fields(MetricInputs) if f.name != "options")


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: its function, the inputs it needs, and whether it depends on the feature net."""

    name: str
    fn: Callable[[MetricInputs], dict[str, float]]
    needs: tuple[str, ...]
    feature_based: bool
    features: tuple[str, ...] = ()           # () = any feature network; else only these (results unsuffixed)

    def applies_to(self, feature_name: str | None) -> bool:
        return not self.features or feature_name in self.features


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, *, needs: Sequence[str], feature_based: bool, features: Sequence[str] = ()
                    ) -> Callable[[Callable[[MetricInputs], dict[str, float]]], Callable[[MetricInputs], dict[str, float]]]:
    """Decorator adding a metric function to METRICS under `name`."""
    unknown = [n for n in needs if n not in INPUT_NAMES]
    if unknown:
        raise ValueError(f"metric {name!r}: unknown inputs {unknown}; expected some of {list(INPUT_NAMES)}")

    def add(fn: Callable[[MetricInputs], dict[str, float]]) -> Callable[[MetricInputs], dict[str, float]]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = MetricSpec(name=name, fn=fn, needs=tuple(needs), feature_based=feature_based,
                                   features=tuple(features))
        return fn

    return add


def result_name(base: str, *, feature_name: str) -> str:
    """`fid` for Inception features, `fid_<feature_name>` for any other feature network."""
    return base if feature_name == INCEPTION_NAME else f"{base}_{feature_name}"


def compute_metrics(*, names: Sequence[str] | None = None, feature_name: str | None = None,
                    real_train_feats: Tensor | None = None, real_eval_feats: Tensor | None = None,
                    fake_feats: Tensor | None = None, fake_images: Tensor | None = None,
                    real_images: Tensor | None = None, disc: nn.Module | None = None,
                    fake_detected: Tensor | None = None, real_detected: Tensor | None = None,
                    options: MetricOptions | None = None) -> dict[str, float]:
    """Compute the named metrics (default: every metric whose inputs are given) as {result name: float}.

    `feature_name` is the `name` of the FeatureExtractor that made the feature matrices; it is
    required as soon as a feature-based metric runs. Naming a metric whose inputs are missing, or
    one that does not apply to `feature_name`, is a ValueError that says why.
    """
    inputs = MetricInputs(real_train_feats=real_train_feats, real_eval_feats=real_eval_feats,
                          fake_feats=fake_feats, fake_images=fake_images, real_images=real_images, disc=disc,
                          fake_detected=fake_detected, real_detected=real_detected,
                          options=options or MetricOptions())
    given = {n for n in INPUT_NAMES if getattr(inputs, n) is not None}
    if names is None:
        specs = [s for s in METRICS.values() if set(s.needs) <= given and s.applies_to(feature_name)]
    else:
        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {sorted(METRICS)}")
        specs = [METRICS[n] for n in names]
        for spec in specs:
            missing = [n for n in spec.needs if n not in given]
            if missing:
                raise ValueError(f"metric {spec.name!r} needs {', '.join(missing)}")
            if not spec.applies_to(feature_name):
                raise ValueError(f"metric {spec.name!r} applies to {' or '.join(spec.features)} features only, "
                                 f"not {feature_name!r}")
    if any(s.feature_based for s in specs) and not feature_name:
        raise ValueError("feature_name: required for feature-based metrics (the FeatureExtractor's name, "
                         f"e.g. {INCEPTION_NAME!r} or 'attr')")
    results: dict[str, float] = {}
    for spec in specs:
        for key, value in spec.fn(inputs).items():
            suffixed = spec.feature_based and not spec.features
            out = result_name(key, feature_name=feature_name or "") if suffixed else key
            results[out] = float(value)
    return results
