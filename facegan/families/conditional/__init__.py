"""Conditional DCGAN: G(z ⊕ a), projection D(x, a) (Miyato & Koyama 2018); the attribute-controlled
baseline beside the overlay family. Needs attribute labels; takes CelebA's native 218x178 too.

    facegan train configs/conditional_celeba64.yaml
    facegan generate --checkpoint runs/conditional --attrs "Eyeglasses=1,Smiling=1,Male=0"

Phases and tricks are DCGAN's with G and D bound to the batch's attribute rows (steps.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from facegan.families.base import DataInfo, GanModelConfig, Phase
from facegan.families.dcgan import DCGAN, DCGANOptions


@dataclass(kw_only=True)
class ConditionalModelConfig(GanModelConfig):
    family: str = "conditional"
    non_square = True


@dataclass(kw_only=True)
class ConditionalOptions(DCGANOptions):
    """The conditional family's GAN options (`gan:` in a run config): DCGAN's tricks."""


class Conditional(DCGAN):
    name = "conditional"
    model_options = ConditionalModelConfig
    gan_options = ConditionalOptions
    needs_labels = True
    takes_attrs = True

    def phases(self, cfg) -> list[Phase]:
        return [Phase("d", opt="D"), Phase("g", opt="G", uses_data=False)]

    def build_nets(self, cfg, data: DataInfo):
        from facegan.families.conditional.nets import build_conditional, conditional_init_

        m = cfg.model
        nets = build_conditional(resolution=m.resolution if isinstance(m.resolution, int) else m.size,
                                 z_dim=m.z_dim, base_channels=m.base_channels, g_batchnorm=m.g_batchnorm,
                                 d_batchnorm=m.d_batchnorm, d_dropout=m.d_dropout, num_attrs=len(data.attr_names))
        for net in nets.values():
            conditional_init_(net)
        return nets

    def build_steps(self, cfg, data: DataInfo):
        from facegan.families.conditional.steps import ConditionalSteps

        return ConditionalSteps(cfg, data)


FAMILY = Conditional()
