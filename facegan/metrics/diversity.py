"""Sample diversity: mean MS-SSIM over random pairs of images (lower = more diverse), with a collapse alarm.

    d = ms_ssim_diversity(fake_images=fake_BCHW, real_images=val_BCHW, num_pairs=1000, seed=0)
    d["ms_ssim"], d["ms_ssim_real"], d["ms_ssim_alarm"]    # alarm is 1.0 or 0.0

Identical images score 1.0; a collapsed generator approaches it. The alarm goes off when the
fakes' mean MS-SSIM exceeds `threshold` or, when real images are given, exceeds the real images'
own mean MS-SSIM by more than `margin` (AC-GAN's test: samples less diverse than the data).

Small images: standard MS-SSIM (11x11 Gaussian, sigma 1.5, five scales) needs about 176 px; each
scale halves the image, and the coarsest must still hold the 11 px window. `ms_ssim_settings`
keeps the standard window and drops the coarsest scales until it fits (64 px: 3 scales, 32 px: 2,
16 px: 1, i.e. plain SSIM), renormalising the remaining standard scale weights to sum to one.
Below 11 px the window shrinks to the image. Scores are only comparable at equal resolution.
Negative contrast-structure terms are clipped at zero (torchmetrics' normalize="relu"): unrelated
images would otherwise raise a negative number to a fractional power.

    .venv/bin/python -m pytest tests/test_metrics.py -q -k ms_ssim
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from facegan.metrics.features import as_float_images
from facegan.metrics.registry import MetricInputs, register_metric

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)   # Wang et al. 2003, finest scale first
KERNEL_SIZE = 11
SIGMA = 1.5


def ms_ssim_settings(*, height: int, width: int) -> tuple[int, float, tuple[float, ...]]:
    """(kernel_size, sigma, betas) of MS-SSIM for images of this size; see the module docstring."""
    side = min(height, width)
    if side < 3:
        raise ValueError(f"MS-SSIM needs images of at least 3x3 pixels, got {height}x{width}")
    kernel = min(KERNEL_SIZE, side if side % 2 else side - 1)
    sigma = SIGMA * kernel / KERNEL_SIZE
    for scales in range(len(MS_SSIM_BETAS), 0, -1):
        # The window must fit the coarsest scale; torchmetrics also checks its own (stricter at 4 scales) bound.
        if side // 2 ** (scales - 1) >= kernel and side // max(1, scales - 1) ** 2 > kernel - 1 \
                and side >= 2 ** scales:
            betas = MS_SSIM_BETAS[:scales]
            total = sum(betas)
            return kernel, sigma, tuple(b / total for b in betas)
    raise AssertionError(f"no MS-SSIM setting for {height}x{width}")  # one scale always fits


def pairwise_ms_ssim(*, images: Tensor, num_pairs: int, seed: int = 0, batch_size: int = 256) -> float:
    """Mean MS-SSIM over `num_pairs` random pairs of distinct images (indices i != j) of one set."""
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"MS-SSIM diversity needs at least 2 images, got {n}")
    if num_pairs < 1:
        raise ValueError(f"num_pairs: expected a positive integer, got {num_pairs}")
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(n, (num_pairs,), generator=gen)
    # An offset in [1, n) makes the second index always differ from the first.
    second = (first + torch.randint(1, n, (num_pairs,), generator=gen)) % n
    kernel, sigma, betas = ms_ssim_settings(height=images.shape[2], width=images.shape[3])
    total = 0.0
    for i in range(0, num_pairs, batch_size):
        a = as_float_images(images[first[i:i + batch_size]])
        b = as_float_images(images[second[i:i + batch_size]])
        scores = multiscale_structural_similarity_index_measure(
            a, b, gaussian_kernel=True, sigma=sigma, kernel_size=kernel, reduction="none", data_range=2.0,
            betas=betas, normalize="relu")
        total += float(scores.sum())
    return total / num_pairs


def collapse_alarm(*, ms_ssim: float, real_ms_ssim: float | None = None, threshold: float = 0.9,
                   margin: float = 0.1) -> bool:
    """True when fakes are nearly identical (>= threshold) or clearly less diverse than real images."""
    return ms_ssim >= threshold or (real_ms_ssim is not None and ms_ssim > real_ms_ssim + margin)


def ms_ssim_diversity(*, fake_images: Tensor, real_images: Tensor | None = None, num_pairs: int = 1000,
                      seed: int = 0, threshold: float = 0.9, margin: float = 0.1) -> dict[str, float]:
    """{"ms_ssim", "ms_ssim_alarm"} and, with real images, "ms_ssim_real" (same pairs count and seed)."""
    fake = pairwise_ms_ssim(images=fake_images, num_pairs=num_pairs, seed=seed)
    out = {"ms_ssim": fake}
    real = None
    if real_images is not None:
        real = pairwise_ms_ssim(images=real_images, num_pairs=num_pairs, seed=seed)
        out["ms_ssim_real"] = real
    out["ms_ssim_alarm"] = float(collapse_alarm(ms_ssim=fake, real_ms_ssim=real, threshold=threshold, margin=margin))
    return out


@register_metric("ms_ssim", needs=("fake_images",), feature_based=False)
def _ms_ssim(inputs: MetricInputs) -> dict[str, float]:
    assert inputs.fake_images is not None
    opt = inputs.options
    return ms_ssim_diversity(fake_images=inputs.fake_images, real_images=inputs.real_images,
                             num_pairs=opt.ms_ssim_pairs, seed=opt.seed, threshold=opt.ms_ssim_threshold,
                             margin=opt.ms_ssim_margin)
