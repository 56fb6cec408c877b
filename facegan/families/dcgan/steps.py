"""DCGAN training phases (BCE, non-saturating G loss) with the papers' tricks.

Two phases per step, run by the loop from `facegan.families.dcgan.DCGAN.phases`:

    d(ctx):  z for the step; D loss on the fresh real batch and on G(z) (D sees the fakes detached;
             the fakes, with G's graph, go to ctx.carry for g)
    g(ctx):  non-saturating G loss on the same fakes scored by the updated D

G runs once per step (as pytorch/examples' DCGAN does); running G again on a fresh z in g cost
~7% of the step on CPU. `d_step`/`g_step` are the same losses as plain functions of G, D and z
(for tests and for the families built on DCGAN's phases).

Tests: .venv/bin/python -m pytest tests/test_dcgan.py -q
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from facegan.families.base import DataInfo
from facegan.families.steps import StepContext, Steps
from facegan.losses import bce_logits, d_accuracy, d_targets, instance_noise, r1_penalty


class DCGANSteps(Steps):
    """The DCGAN phases. Each returns (loss to backward, scalars): the scalars are detached 0-dim
    tensors, left on the device so the loop can reduce them at ticks without a sync per step."""

    def __init__(self, cfg, data: DataInfo | None = None):
        super().__init__(cfg, data or DataInfo())

    # --- the phases the loop runs
    def d(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        ctx.carry["z"] = z_BZ = self.latent(ctx.batch_size, generator=ctx.generator, device=ctx.device)
        return self.d_step(G=ctx.nets["G"], D=ctx.nets["D"], real_BCHW=ctx.real, z_BZ=z_BZ, kimg=ctx.kimg,
                           generator=ctx.generator, carry=ctx.carry, r1=self.options.r1_weight(ctx.step))

    def g(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        return self.g_step(G=ctx.nets["G"], D=ctx.nets["D"], z_BZ=ctx.carry["z"], kimg=ctx.kimg,
                           generator=ctx.generator, carry=ctx.carry)

    def tick_metrics(self, kimg: float) -> dict[str, float]:
        return {"d_noise_std": self.d_noise_std(kimg)}

    def d_noise_std(self, kimg: float) -> float:
        """Std of D's input noise after `kimg` thousand images: sqrt of the (annealed) power."""
        power = self.options.d_noise_power
        anneal = self.options.d_noise_anneal_kimg
        if anneal > 0:
            power *= max(0.0, 1.0 - kimg / anneal)
        return math.sqrt(power)

    def d_step(self, *, G: nn.Module, D: nn.Module, real_BCHW: Tensor, z_BZ: Tensor, kimg: float,
               generator: torch.Generator | None = None, carry: dict[str, Tensor] | None = None,
               r1: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
        """D loss: BCE on reals (smoothed, flipped targets) plus BCE on fakes, plus `r1` x the R1
        penalty on the reals where r1 > 0 (gan.r1_gamma: the weight is R1Options.r1_weight).

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
        real_in = real_BCHW.detach().requires_grad_(True) if r1 else real_BCHW
        real_logits_B = D(instance_noise(real_in, std=std, generator=generator))
        fake_logits_B = D(instance_noise(fake_BCHW.detach(), std=std, generator=generator))
        real_target_B = d_targets(real_logits_B, real=True, smoothing=opts.label_smoothing,
                                  flip=opts.label_flip, generator=generator)
        fake_target_B = d_targets(fake_logits_B, real=False, smoothing=opts.label_smoothing,
                                  flip=opts.label_flip, generator=generator)
        loss_real = bce_logits(real_logits_B, real_target_B)
        loss_fake = bce_logits(fake_logits_B, fake_target_B)
        loss = loss_real + loss_fake
        extra = {}
        if r1:
            extra["loss/r1"] = penalty = r1 * r1_penalty(real_logits_B, real_in).mean()
            loss = loss + penalty
        real_logits_B, fake_logits_B = real_logits_B.detach(), fake_logits_B.detach()
        scalars = {
            "loss/d": loss.detach(),
            "loss/d_real": loss_real.detach(),
            "loss/d_fake": loss_fake.detach(),
            "D(x)": torch.sigmoid(real_logits_B).mean(),
            "D(G(z))": torch.sigmoid(fake_logits_B).mean(),
            "acc/d_real": d_accuracy(real_logits_B, real=True),
            "acc/d_fake": d_accuracy(fake_logits_B, real=False),
            **{k: v.detach() for k, v in extra.items()},
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
