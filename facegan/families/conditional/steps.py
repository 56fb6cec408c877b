"""Conditional DCGAN phases: G(z ⊕ a), projection D(x, a).

The attribute rows are the real batch's labels: D scores the reals with their own labels, and the
fakes are drawn for the same label rows, so the label distribution G is asked for is the data's.
Losses and tricks (label smoothing and flipping, instance noise) are DCGAN's: the phases are
DCGANSteps' with G and D bound to the batch's attributes.

Tests: .venv/bin/python -m pytest tests/test_control.py -q
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from facegan.families.dcgan.steps import DCGANSteps
from facegan.families.steps import StepContext


def _bound(net: nn.Module, attrs_BA: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda x: net(x, attrs_BA)


class ConditionalSteps(DCGANSteps):
    """DCGAN phases with G and D conditioned on the batch's attribute rows."""

    def generate(self, G: nn.Module, latent: Tensor, attrs: Tensor | None = None) -> Tensor:
        """Faces for noise z_BZ and attribute rows attrs_BA (0/1, or rates in between)."""
        if attrs is None:
            raise ValueError("the conditional family's G needs attribute rows")
        return G(latent, attrs.to(latent.dtype))

    def d(self, ctx: StepContext):
        ctx.carry["z"] = z_BZ = self.latent(ctx.batch_size, generator=ctx.generator, device=ctx.device)
        return self.d_step(G=ctx.nets["G"], D=ctx.nets["D"], real_BCHW=ctx.real, z_BZ=z_BZ, kimg=ctx.kimg,
                           generator=ctx.generator, carry=ctx.carry, r1=self.options.r1_weight(ctx.step),
                           attrs_BA=ctx.batch["attrs"])

    def g(self, ctx: StepContext):
        return self.g_step(G=ctx.nets["G"], D=ctx.nets["D"], z_BZ=ctx.carry["z"], kimg=ctx.kimg,
                           generator=ctx.generator, carry=ctx.carry, attrs_BA=ctx.batch["attrs"])

    @staticmethod
    def _attrs(attrs_BA: Tensor | None) -> Tensor:
        if attrs_BA is None:
            raise ValueError("the conditional family needs the batch's attrs_BA (the loop passes them to "
                             "families that need labels)")
        return attrs_BA.float()

    def d_step(self, *, G: nn.Module, D: nn.Module, real_BCHW: Tensor, z_BZ: Tensor, kimg: float,
               generator: torch.Generator | None = None, carry: dict[str, Tensor] | None = None,
               r1: float = 0.0, attrs_BA: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        a = self._attrs(attrs_BA)
        return super().d_step(G=_bound(G, a), D=_bound(D, a), real_BCHW=real_BCHW, z_BZ=z_BZ, kimg=kimg,
                              generator=generator, carry=carry, r1=r1)

    def g_step(self, *, G: nn.Module, D: nn.Module, z_BZ: Tensor, kimg: float,
               generator: torch.Generator | None = None, carry: dict[str, Tensor] | None = None,
               attrs_BA: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        a = self._attrs(attrs_BA)
        return super().g_step(G=_bound(G, a), D=_bound(D, a), z_BZ=z_BZ, kimg=kimg, generator=generator,
                              carry=carry)
