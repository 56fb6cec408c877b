"""The model families a run can name (`model.family` in a config), as an explicit registry.

    spec = FAMILIES["dcgan"]
    nets = spec.build(resolution=64, z_dim=100)        # {"G": G, "D": D}
    for net in nets.values():
        spec.init_weights(net)
    steps = spec.make_steps(label_smoothing=0.1)       # phases for the loop to run

Attribute classifiers (facegan.classify trains them) have their own registry, CLASSIFIERS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from facegan.models.classifier import CLASSIFIERS
from facegan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from facegan.steps import dcgan as dcgan_steps


@dataclass(frozen=True)
class FamilySpec:
    """What the loop needs to train one family: how to build its nets, its phases and its init."""

    name: str
    build: Callable[..., dict[str, nn.Module]]
    make_steps: Callable[..., Any]
    init_weights: Callable[[nn.Module], None]


def build_dcgan(*, resolution: int = 64, z_dim: int = 100, base_channels: int = 64,
                g_batchnorm: bool = True, d_batchnorm: bool = True, d_dropout: float = 0.0,
                channels: int = 3) -> dict[str, nn.Module]:
    """A DCGAN generator/discriminator pair for `resolution` (a power of two >= 16)."""
    return {
        "G": DCGANGenerator(resolution=resolution, z_dim=z_dim, base_channels=base_channels,
                            channels=channels, batchnorm=g_batchnorm),
        "D": DCGANDiscriminator(resolution=resolution, base_channels=base_channels,
                                channels=channels, batchnorm=d_batchnorm, dropout=d_dropout),
    }


FAMILIES: dict[str, FamilySpec] = {
    "dcgan": FamilySpec(name="dcgan", build=build_dcgan, make_steps=dcgan_steps.make_steps,
                        init_weights=dcgan_steps.dcgan_init_),
}


__all__ = ["CLASSIFIERS", "FAMILIES", "FamilySpec", "build_dcgan"]
