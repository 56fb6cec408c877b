"""DCGAN training phases (BCE, non-saturating G loss) and the paper's weight-init policy.

The options are the tricks the student papers switch on: one-sided label smoothing, label
flipping, and Gaussian instance noise on D's input (fixed or linearly annealed). The loop owns
the optimizers (Adam 2e-4, beta1 0.5 by default; G and D learning rates set apart there):

    steps = make_steps(label_smoothing=0.1, d_noise_power=1 / 15, d_noise_anneal_kimg=500)
    carry = {}                                        # what d_step hands to g_step within one step
    for name in steps.phases:                         # "d_step", then "g_step"
        loss, scalars = getattr(steps, name)(G=G, D=D, ..., kimg=kimg, generator=gen, carry=carry)
        opt[name].zero_grad(set_to_none=True); loss.backward(); opt[name].step()

G runs once per step: d_step draws the fakes with G's graph kept, feeds D `fake.detach()`, and
g_step scores the same fakes with the updated D (as pytorch/examples' DCGAN does). Running G
again on a fresh z in g_step cost ~7% of the step on CPU.

Tests: .venv/bin/python -m pytest tests/test_dcgan.py -q
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from facegan.config import ConfigError
from facegan.losses import bce_logits, d_accuracy, d_targets, instance_noise

# No import of facegan.models here: models/__init__ imports this module to fill FAMILIES.


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN paper init, in place: conv weights ~ N(0, 0.02), batch-norm scales ~ N(1, 0.02),
    biases 0. Draws from torch's global RNG, which the loop seeds."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _number(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(kw_only=True)
class DCGANOptions:
    """The DCGAN family's GAN options (`gan:` in a run config)."""

    label_smoothing: float = 0.0      # real target = 1 - s, in [0, 0.5)
    label_flip: float = 0.0           # gamma: per-sample chance to swap real/fake targets in the D step, [0, 0.5)
    d_noise_power: float = 0.0        # variance of D's input noise (papers: 1/15, 1/20), >= 0
    d_noise_anneal_kimg: float = 0.0  # > 0: power falls linearly to 0 over this many kimg; 0: fixed

    def __post_init__(self):
        for name in ("label_smoothing", "label_flip"):
            value = _number(name, getattr(self, name))
            # At 0.5 the targets carry no information about real vs fake.
            if not 0.0 <= value < 0.5:
                raise ConfigError(f"{name} must be in [0, 0.5), got {value!r}")
            setattr(self, name, value)
        for name in ("d_noise_power", "d_noise_anneal_kimg"):
            value = _number(name, getattr(self, name))
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value!r}")
            setattr(self, name, value)


class DCGANSteps:
    """The DCGAN phases. Each returns (loss to backward, scalars): the scalars are detached 0-dim
    tensors, left on the device so the loop can reduce them at ticks without a sync per step."""

    phases = ("d_step", "g_step")

    def __init__(self, options: DCGANOptions):
        self.options = options

    def d_noise_std(self, kimg: float) -> float:
        """Std of D's input noise after `kimg` thousand images: sqrt of the (annealed) power."""
        power = self.options.d_noise_power
        anneal = self.options.d_noise_anneal_kimg
        if anneal > 0:
            power *= max(0.0, 1.0 - kimg / anneal)
        return math.sqrt(power)

    def d_step(self, *, G: nn.Module, D: nn.Module, real_BCHW: Tensor, z_BZ: Tensor, kimg: float,
               generator: torch.Generator | None = None,
               carry: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """D loss: BCE on reals (smoothed, flipped targets) plus BCE on fakes.

        D sees the fakes detached, so this loss does not reach G. If `carry` is given, the fakes
        (with G's graph) are left in carry["fake_BCHW"] for g_step; otherwise G runs without grad.
        """
        opts = self.options
        if carry is None:
            with torch.no_grad():
                fake_BCHW = G(z_BZ)
        else:
            fake_BCHW = G(z_BZ)
            carry["fake_BCHW"] = fake_BCHW
        std = self.d_noise_std(kimg)
        # Reals and fakes go through D separately: with batch norm in D a mixed batch would
        # share statistics, which is not the DCGAN recipe.
        real_logits_B = D(instance_noise(real_BCHW, std=std, generator=generator))
        fake_logits_B = D(instance_noise(fake_BCHW.detach(), std=std, generator=generator))
        real_target_B = d_targets(real_logits_B, real=True, smoothing=opts.label_smoothing,
                                  flip=opts.label_flip, generator=generator)
        fake_target_B = d_targets(fake_logits_B, real=False, smoothing=opts.label_smoothing,
                                  flip=opts.label_flip, generator=generator)
        loss_real = bce_logits(real_logits_B, real_target_B)
        loss_fake = bce_logits(fake_logits_B, fake_target_B)
        loss = loss_real + loss_fake
        real_logits_B, fake_logits_B = real_logits_B.detach(), fake_logits_B.detach()
        scalars = {
            "loss/d": loss.detach(),
            "loss/d_real": loss_real.detach(),
            "loss/d_fake": loss_fake.detach(),
            "D(x)": torch.sigmoid(real_logits_B).mean(),
            "D(G(z))": torch.sigmoid(fake_logits_B).mean(),
            "acc/d_real": d_accuracy(real_logits_B, real=True),
            "acc/d_fake": d_accuracy(fake_logits_B, real=False),
        }
        return loss, scalars

    def g_step(self, *, G: nn.Module, D: nn.Module, z_BZ: Tensor, kimg: float,
               generator: torch.Generator | None = None,
               carry: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Non-saturating G loss: BCE of D(G(z)) against 1 (no smoothing, no flips).

        Reuses d_step's fakes from `carry` when present (same z, G's graph kept), else runs G.
        Backward also fills D's .grad; the loop zeroes D's grads before its own step.
        """
        fake_BCHW = carry.pop("fake_BCHW") if carry and "fake_BCHW" in carry else G(z_BZ)
        fake_logits_B = D(instance_noise(fake_BCHW, std=self.d_noise_std(kimg), generator=generator))
        loss = bce_logits(fake_logits_B, 1.0)
        scalars = {
            "loss/g": loss.detach(),
            "D(G(z))_g": torch.sigmoid(fake_logits_B.detach()).mean(),
        }
        return loss, scalars


def make_steps(**options) -> DCGANSteps:
    """DCGANSteps from keyword options; an unknown option is a TypeError, a bad value a ConfigError."""
    return DCGANSteps(DCGANOptions(**options))
