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
from facegan.models.conditional import ConditionalGenerator, ProjectionDiscriminator
from facegan.models.dcgan import DCGANDiscriminator, DCGANGenerator
from facegan.steps import conditional as conditional_steps
from facegan.steps import dcgan as dcgan_steps
from facegan.steps import overlay as overlay_steps


@dataclass(frozen=True)
class FamilySpec:
    """What the loop needs to train one family: how to build its nets, its phases and its init."""

    name: str
    build: Callable[..., dict[str, nn.Module]]
    make_steps: Callable[..., Any]
    init_weights: Callable[[nn.Module], None]
    # The dataclass that a run config's `gan:` mapping is validated into (make_steps(**its fields)).
    options: type = dcgan_steps.DCGANOptions
    uses_attrs: bool = False     # G/D take attribute rows: build(num_attrs=...), the loop passes attrs_BA
    non_square: bool = False     # build() takes a (height, width) resolution


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


def build_overlay(*, resolution: int | tuple[int, int] = 64, z_dim: int = 160, base_channels: int = 64,
                  g_batchnorm: bool = True, d_batchnorm: bool = True, d_dropout: float = 0.0,
                  channels: int = 3, num_attrs: int = 40) -> dict[str, nn.Module]:
    """The overlay family's nets: DCGAN's G on 4 * num_attrs noise and DCGAN's (unconditioned) D.

    A (height, width) resolution (CelebA's native (218, 178)) uses the conditional module's
    non-square G and D with no attributes.
    """
    if z_dim != 4 * num_attrs:
        raise ValueError(f"z_dim must be 4 x the number of attributes for the overlay family "
                         f"({4 * num_attrs} for {num_attrs}), got {z_dim}")
    if isinstance(resolution, int):
        return build_dcgan(resolution=resolution, z_dim=z_dim, base_channels=base_channels, g_batchnorm=g_batchnorm,
                           d_batchnorm=d_batchnorm, d_dropout=d_dropout, channels=channels)
    return build_conditional(resolution=resolution, z_dim=z_dim, base_channels=base_channels, g_batchnorm=g_batchnorm,
                             d_batchnorm=d_batchnorm, d_dropout=d_dropout, channels=channels, num_attrs=0)


def build_conditional(*, resolution: int | tuple[int, int] = 64, z_dim: int = 100, base_channels: int = 64,
                      g_batchnorm: bool = True, d_batchnorm: bool = True, d_dropout: float = 0.0,
                      channels: int = 3, num_attrs: int = 40) -> dict[str, nn.Module]:
    """A conditional G (z ⊕ attributes) and projection D for num_attrs attributes."""
    return {
        "G": ConditionalGenerator(resolution=resolution, z_dim=z_dim, num_attrs=num_attrs,
                                  base_channels=base_channels, channels=channels, batchnorm=g_batchnorm),
        "D": ProjectionDiscriminator(resolution=resolution, num_attrs=num_attrs, base_channels=base_channels,
                                     channels=channels, batchnorm=d_batchnorm, dropout=d_dropout),
    }


FAMILIES: dict[str, FamilySpec] = {
    "dcgan": FamilySpec(name="dcgan", build=build_dcgan, make_steps=dcgan_steps.make_steps,
                        init_weights=dcgan_steps.dcgan_init_),
    # Attribute-controlled faces (issue 5): the report's alpha/beta overlay and a conditional baseline.
    "overlay": FamilySpec(name="overlay", build=build_overlay, make_steps=overlay_steps.make_steps,
                          init_weights=dcgan_steps.dcgan_init_, options=overlay_steps.OverlayOptions,
                          uses_attrs=True, non_square=True),
    "conditional": FamilySpec(name="conditional", build=build_conditional, make_steps=conditional_steps.make_steps,
                              init_weights=conditional_steps.conditional_init_,
                              options=conditional_steps.ConditionalOptions, uses_attrs=True, non_square=True),
}


__all__ = ["CLASSIFIERS", "FAMILIES", "FamilySpec", "build_conditional", "build_dcgan", "build_overlay"]
