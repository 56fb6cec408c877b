"""Pure tensor functions for GAN losses and the label/input tricks that go with them.

Nothing here touches a module, an optimizer or global state: each function maps tensors (and
plain numbers) to tensors, so it can be checked against a hand computation or a
torch.nn.functional reference. Randomness comes only from an explicit `generator`, which is
what lets the loop make runs exactly reproducible.

    loss_d = bce_logits(real_logits_B, d_targets(real_logits_B, real=True, smoothing=0.1)) \
           + bce_logits(fake_logits_B, 0.0)

Families add their own sections below (wgan-gp penalty, BEGAN, InfoGAN, KL, diversity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# --- randomness


def _rand_like(x: Tensor, *, normal: bool, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) or standard normal noise shaped like `x`, on x's device and dtype.

    Drawn on the generator's own device, then moved: a CPU generator with CUDA inputs still gives
    the same numbers as on CPU (at the cost of a copy), instead of failing.
    """
    device = generator.device if generator is not None else x.device
    draw = torch.randn if normal else torch.rand
    out = draw(x.shape, generator=generator, device=device, dtype=x.dtype)
    return out.to(x.device)


# --- BCE (DCGAN and friends)


def bce_logits(logits: Tensor, target: Tensor | float) -> Tensor:
    """Mean binary cross-entropy of raw logits against targets in [0, 1] (soft targets allowed).

    Same value and gradient as F.binary_cross_entropy_with_logits, written out as
    softplus(l) - t*l, which is stable for large |l| (softplus is linear beyond 20).
    """
    return (F.softplus(logits) - target * logits).mean()


def d_accuracy(logits: Tensor, *, real: bool) -> Tensor:
    """Fraction of samples the discriminator classifies right: logit > 0 for reals, < 0 for fakes."""
    right = logits > 0 if real else logits < 0
    return right.to(logits.dtype).mean()


def d_targets(logits: Tensor, *, real: bool, smoothing: float = 0.0, flip: float = 0.0,
              generator: torch.Generator | None = None) -> Tensor:
    """Discriminator targets shaped like `logits`, with one-sided smoothing and label flipping.

    The "real" label is 1 - smoothing and the "fake" label is 0 (Salimans et al. 2016: smoothing
    the fake side would reward the generator for staying put). With probability `flip` each
    sample independently gets the other label; a flipped fake therefore gets 1 - smoothing.
    """
    real_value = 1.0 - smoothing
    labels_real = torch.full_like(logits, 1.0 if real else 0.0, dtype=torch.bool)
    if flip > 0:
        labels_real ^= _rand_like(logits, normal=False, generator=generator) < flip
    return torch.where(labels_real, real_value, 0.0).to(logits.dtype)


def instance_noise(img: Tensor, *, std: float, generator: torch.Generator | None = None) -> Tensor:
    """img + N(0, std^2) (Sønderby et al. 2016): blurs real and fake so D cannot separate them
    perfectly early on. std == 0 returns `img` itself and draws nothing from the generator."""
    if std == 0:
        return img
    return img + std * _rand_like(img, normal=True, generator=generator)


# --- R1 (non-saturating families)


def r1_penalty(logits_B: Tensor, real_BCHW: Tensor) -> Tensor:
    """||grad_x sum_i D(x_i)||^2 per sample (Mescheder et al. 2018), with the graph kept so the
    loop's one backward trains D on it. `real_BCHW` is the leaf D's forward started from (made
    with requires_grad_); the gradient is with respect to it only, so under DDP no parameter's
    gradient is touched until that backward (the WGAN-GP critic's rule, docs/families.md).
    Summed in float32 (bf16 autocast)."""
    (grad,) = torch.autograd.grad(logits_B.float().sum(), real_BCHW, create_graph=True)
    return grad.float().flatten(1).square().sum(1)
