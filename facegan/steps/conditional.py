"""Conditional DCGAN phases: G(z ⊕ a), projection D(x, a); the baseline beside the overlay family.

The attribute rows are the real batch's labels (the loop passes `attrs_BA` to families with
`uses_attrs`): D scores the reals with their own labels, and the fakes are drawn for the same
label rows, so the label distribution G is asked for is the data's. Losses and tricks (label
smoothing and flipping, instance noise) are DCGAN's: the phases are DCGANSteps' with G and D
bound to the batch's attributes.

    steps = make_steps(label_flip=0.05)
    carry = {}
    loss_d, _ = steps.d_step(G=G, D=D, real_BCHW=real, z_BZ=z, kimg=0, attrs_BA=attrs, carry=carry)
    loss_g, _ = steps.g_step(G=G, D=D, z_BZ=z, kimg=0, attrs_BA=attrs, carry=carry)
    faces = steps.generate(G, z, attrs)

Tests: .venv/bin/python -m pytest tests/test_control.py -q
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from facegan.steps.dcgan import DCGANOptions, DCGANSteps, dcgan_init_


def conditional_init_(module: nn.Module) -> None:
    """DCGAN's init, plus N(0, 0.02) for the projection embedding (and any other linear layer)."""
    dcgan_init_(module)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@dataclass(kw_only=True)
class ConditionalOptions(DCGANOptions):
    """The conditional family's GAN options (`gan:` in a run config): DCGAN's tricks."""


def _bound(net: nn.Module, attrs_BA: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda x: net(x, attrs_BA)


class ConditionalSteps(DCGANSteps):
    """DCGAN phases with G and D conditioned on the batch's attribute rows."""

    uses_attrs = True

    def generate(self, G: nn.Module, z_BZ: Tensor, attrs_BA: Tensor) -> Tensor:
        """Faces for noise z_BZ and attribute rows attrs_BA (0/1, or rates in between)."""
        return G(z_BZ, attrs_BA.to(z_BZ.dtype))

    @staticmethod
    def _attrs(attrs_BA: Tensor | None) -> Tensor:
        if attrs_BA is None:
            raise ValueError("the conditional family needs the batch's attrs_BA (the loop passes them to "
                             "families with uses_attrs)")
        return attrs_BA.float()

    def d_step(self, *, G: nn.Module, D: nn.Module, real_BCHW: Tensor, z_BZ: Tensor, kimg: float,
               generator: torch.Generator | None = None, carry: dict[str, Tensor] | None = None,
               attrs_BA: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        a = self._attrs(attrs_BA)
        return super().d_step(G=_bound(G, a), D=_bound(D, a), real_BCHW=real_BCHW, z_BZ=z_BZ, kimg=kimg,
                              generator=generator, carry=carry)

    def g_step(self, *, G: nn.Module, D: nn.Module, z_BZ: Tensor, kimg: float,
               generator: torch.Generator | None = None, carry: dict[str, Tensor] | None = None,
               attrs_BA: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        a = self._attrs(attrs_BA)
        return super().g_step(G=_bound(G, a), D=_bound(D, a), z_BZ=z_BZ, kimg=kimg, generator=generator,
                              carry=carry)


def make_steps(**options) -> ConditionalSteps:
    """ConditionalSteps from keyword options; an unknown option is a TypeError, a bad value a ConfigError."""
    return ConditionalSteps(ConditionalOptions(**options))
