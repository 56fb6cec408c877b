"""The DCGAN report's check: how well does a discriminator tell held-out real images from generated ones?

    acc = discriminator_accuracy(disc=D, real_images=val_BCHW, fake_images=fake_BCHW)
    acc["d_acc_real"], acc["d_acc_fake"]     # share of reals with logit > 0, of fakes with logit <= 0

Near 1.0 on both: D separates them easily (the generator is far from the data, or D overfits);
near 0.5: D cannot tell. Real images must be held out: D has seen the training images.

    .venv/bin/python -m pytest tests/test_metrics.py -q -k discriminator
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facegan.metrics.features import as_float_images
from facegan.metrics.registry import MetricInputs, register_metric


@torch.no_grad()
def _logits(disc: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    device = next(disc.parameters()).device
    out = [disc(as_float_images(images[i:i + batch_size]).to(device)).reshape(-1).float().cpu()
           for i in range(0, images.shape[0], batch_size)]
    logits = torch.cat(out)
    if logits.shape[0] != images.shape[0]:
        raise ValueError(f"disc: expected one logit per image, got {logits.shape[0]} for {images.shape[0]} images")
    return logits


def discriminator_accuracy(*, disc: nn.Module, real_images: Tensor, fake_images: Tensor, batch_size: int = 256
                           ) -> dict[str, float]:
    """{"d_acc_real", "d_acc_fake"}: D's accuracy on each set (logit > 0 means "real"), in eval mode."""
    if real_images.shape[0] == 0 or fake_images.shape[0] == 0:
        raise ValueError("discriminator_accuracy: needs at least one real and one fake image")
    was_training = disc.training
    # Eval mode: batch norm uses its running statistics and dropout is off, so the verdict on an
    # image does not depend on which other images share its batch.
    disc.eval()
    try:
        real = _logits(disc, real_images, batch_size)
        fake = _logits(disc, fake_images, batch_size)
    finally:
        disc.train(was_training)
    return {"d_acc_real": float((real > 0).float().mean()), "d_acc_fake": float((fake <= 0).float().mean())}


@register_metric("d_accuracy", needs=("disc", "real_images", "fake_images"), feature_based=False)
def _d_accuracy(inputs: MetricInputs) -> dict[str, float]:
    assert inputs.disc is not None and inputs.real_images is not None and inputs.fake_images is not None
    return discriminator_accuracy(disc=inputs.disc, real_images=inputs.real_images, fake_images=inputs.fake_images)
