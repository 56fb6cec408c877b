"""SNGAN's phases: the hinge loss (Lim & Ye 2017; Miyato et al. 2018), n_dis D steps per G step.

    d(ctx):  fakes G(z) without G's graph; D on [real, fake] in one forward (D has no batch norm,
             so this equals two; spectral norm's power iteration runs once per phase);
             L_D = E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]
    g(ctx):  fresh z; L_G = -E[D(G(z))]

Tests: .venv/bin/python -m pytest tests/test_families.py -q -k sngan
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from facegan.families.base import DataInfo
from facegan.families.steps import StepContext, Steps
from facegan.losses import d_accuracy


def hinge_d_loss(real_B: Tensor, fake_B: Tensor) -> tuple[Tensor, Tensor]:
    """(E[relu(1 - D(x))], E[relu(1 + D(G(z)))]) in float32."""
    return F.relu(1.0 - real_B.float()).mean(), F.relu(1.0 + fake_B.float()).mean()


class SNGANSteps(Steps):
    """The d and g phases; no training state beyond the nets (spectral norm's vectors are buffers)."""

    def __init__(self, cfg, data: DataInfo | None = None):
        super().__init__(cfg, data or DataInfo())

    def d(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        z_BZ = self.latent(ctx.batch_size, generator=ctx.generator, device=ctx.device)
        # No graph through G: under DDP a forward with grad would wait for a backward that never comes.
        with torch.no_grad():
            fake_BCHW = ctx.nets["G"](z_BZ)
        b = ctx.batch_size
        scores = ctx.nets["D"](torch.cat([ctx.real, fake_BCHW.to(ctx.real.dtype)]))
        real_B, fake_B = scores[:b], scores[b:]
        loss_real, loss_fake = hinge_d_loss(real_B, fake_B)
        loss = loss_real + loss_fake
        real_B, fake_B = real_B.detach(), fake_B.detach()
        return loss, {"loss/d": loss.detach(), "loss/d_real": loss_real.detach(), "loss/d_fake": loss_fake.detach(),
                      "D(x)": real_B.float().mean(), "D(G(z))": fake_B.float().mean(),
                      "acc/d_real": d_accuracy(real_B, real=True), "acc/d_fake": d_accuracy(fake_B, real=False)}

    def g(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        z_BZ = self.latent(ctx.batch_size, generator=ctx.generator, device=ctx.device)
        fake_B = ctx.nets["D"](ctx.nets["G"](z_BZ))
        loss = -fake_B.float().mean()
        return loss, {"loss/g": loss.detach(), "D(G(z))_g": fake_B.detach().float().mean()}
