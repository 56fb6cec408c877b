"""DCGAN (Radford, Metz & Chintala 2015) with the student papers' tricks: BCE, one-sided label
smoothing, label flipping and Gaussian instance noise on D's input.

    facegan train configs/dcgan_celeba64.yaml

Phases per step: `d` (a fresh real batch; G draws the fakes with its graph kept) then `g` (the same
fakes scored by the updated D), as pytorch/examples' DCGAN. Nets: nets.py; phases: steps.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from facegan.config import ConfigError
from facegan.families.base import DataInfo, Family, OptimizerSpec, Phase, R1Options, check_r1_precision, finite_number

DCGAN_METRICS = ("loss/d", "loss/d_real", "loss/d_fake", "loss/g", "D(x)", "D(G(z))", "D(G(z))_g",
                 "acc/d_real", "acc/d_fake", "d_noise_std", "loss/r1")
GAN_AUGMENT_KINDS = ("none", "diffaugment", "ada")
DCGAN_CURVES = (("loss/d", "loss/g"), ("D(x)", "D(G(z))"))


@dataclass(kw_only=True)
class DCGANOptions(R1Options):
    """The DCGAN family's GAN options (`gan:` in a run config), R1 included (r1_gamma, r1_interval)."""

    label_smoothing: float = 0.0      # real target = 1 - s, in [0, 0.5)
    label_flip: float = 0.0           # gamma: per-sample chance to swap real/fake targets in the D step, [0, 0.5)
    # Gaussian noise on D's input in the D and G phases: its variance, relative to the [-1, 1] image
    # range (std = sqrt(power); the papers' 1/15 and 1/20), >= 0
    d_noise_power: float = 0.0
    d_noise_anneal_kimg: float = 0.0  # > 0: power falls linearly to 0 over this many kimg; 0: fixed

    def __post_init__(self):
        super().__post_init__()
        for name in ("label_smoothing", "label_flip"):
            value = finite_number(name, getattr(self, name))
            # At 0.5 the targets carry no information about real vs fake.
            if not 0.0 <= value < 0.5:
                raise ConfigError(f"{name} must be in [0, 0.5), got {value!r}")
            setattr(self, name, value)
        for name in ("d_noise_power", "d_noise_anneal_kimg"):
            value = finite_number(name, getattr(self, name))
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value!r}")
            setattr(self, name, value)


class DCGAN(Family):
    name = "dcgan"
    gan_options = DCGANOptions
    discriminator = "D"
    metrics = DCGAN_METRICS
    curves = DCGAN_CURVES
    augment_kinds = GAN_AUGMENT_KINDS

    def validate(self, cfg) -> None:
        check_r1_precision(cfg)

    def phases(self, cfg) -> list[Phase]:
        return [Phase("d", opt="D"), Phase("g", opt="G", uses_data=False)]

    def optimizers(self, cfg) -> dict[str, OptimizerSpec]:
        return {"G": cfg.optim.spec("G", "g_lr"), "D": cfg.optim.spec("D", "d_lr")}

    def build_nets(self, cfg, data: DataInfo):
        from facegan.families.dcgan.nets import build_dcgan, dcgan_init_

        m = cfg.model
        nets = build_dcgan(resolution=m.resolution, z_dim=m.z_dim, base_channels=m.base_channels,
                           g_batchnorm=m.g_batchnorm, d_batchnorm=m.d_batchnorm, d_dropout=m.d_dropout)
        for net in nets.values():
            dcgan_init_(net)
        return nets

    def build_steps(self, cfg, data: DataInfo):
        from facegan.families.dcgan.steps import DCGANSteps

        return DCGANSteps(cfg, data)


FAMILY = DCGAN()
