"""The "favorite face" report's family: a DCGAN whose noise is the alpha/beta attribute overlay.

    facegan train configs/overlay_celeba64.yaml
    facegan blend me.jpg friend.png --checkpoint runs/overlay_celeba64 --out blend.png

G is DCGAN's generator on a 4*A-dimensional noise (160 for CelebA's 40 attributes) built by
`noise.overlay_noise` from a standard-normal r and attribute scores o; D is DCGAN's, unconditioned.
During training o comes from a frozen attribute classifier applied to the real batch (`attr_source:
classifier`, the report's method) or from the batch's labels (`attr_source: labels`). Nets come from
the dcgan family (square) or the conditional family with no attributes ([height, width] sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from facegan.config import ConfigError
from facegan.families.base import DataInfo, GanModelConfig, Phase
from facegan.families.dcgan import DCGAN, DCGANOptions

DEFAULT_ALPHA = 0.6
DEFAULT_BETA = 0.8
NUM_BLOCKS = 4
ATTR_SOURCES = ("classifier", "labels")


def check_weight(name: str, value: object) -> float:
    """`value` as a float in [0, 1], or ConfigError naming `name` and the range."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass(kw_only=True)
class OverlayModelConfig(GanModelConfig):
    family: str = "overlay"
    z_dim: int = 160                  # 4 x the number of attributes
    non_square = True


@dataclass(kw_only=True)
class OverlayOptions(DCGANOptions):
    """The overlay family's GAN options (`gan:` in a run config): DCGAN's tricks plus the overlay."""

    alpha: float = DEFAULT_ALPHA      # weight of r in blocks 1-2 (1 - alpha on the attributes), [0, 1]
    beta: float = DEFAULT_BETA        # weight of r in blocks 3-4, [0, 1]
    attr_source: Literal["classifier", "labels"] = "classifier"   # where o comes from during training
    classifier: str = ""              # classifier checkpoint or run folder; required for attr_source classifier

    def __post_init__(self):
        super().__post_init__()
        self.alpha = check_weight("alpha", self.alpha)
        self.beta = check_weight("beta", self.beta)
        if self.attr_source not in ATTR_SOURCES:
            raise ConfigError(f"attr_source must be one of {list(ATTR_SOURCES)}, got {self.attr_source!r}")
        if self.attr_source == "classifier" and not self.classifier:
            raise ConfigError("classifier: required when attr_source is 'classifier' (a checkpoint or run folder "
                              "written by `facegan classifier train`); or set attr_source: labels")


class Overlay(DCGAN):
    name = "overlay"
    model_options = OverlayModelConfig
    gan_options = OverlayOptions
    needs_labels = True
    takes_attrs = True
    metrics = DCGAN.metrics + ("overlay/o_mean",)
    smoke = {"model": {"resolution": 32, "z_dim": 160, "base_channels": 4}, "gan": {"attr_source": "labels"}}
    # benchmarks/bench_precision.py, 1 kimg on the CelebA sample: bf16's fid_face was beyond the fp32
    # seed spread twice (0.653 vs 0.637 / 0.628 with 200 samples, 0.651 vs 0.635 / 0.624 with 500).
    cpu_bf16 = False
    cpu_bf16_note = ("its fid_face in bf16 was worse than fp32's seed-to-seed spread in "
                     "benchmarks/bench_precision.py on real faces; train.precision=bf16 forces it")

    def phases(self, cfg) -> list[Phase]:
        return [Phase("d", opt="D"), Phase("g", opt="G", uses_data=False)]

    def build_nets(self, cfg, data: DataInfo):
        from facegan.families.conditional.nets import build_conditional
        from facegan.families.dcgan.nets import build_dcgan, dcgan_init_

        m = cfg.model
        num_attrs = len(data.attr_names)
        if m.z_dim != NUM_BLOCKS * num_attrs:
            raise ConfigError(f"model.z_dim: the overlay family needs 4 x the number of attributes "
                              f"({NUM_BLOCKS * num_attrs} for {num_attrs}), got {m.z_dim}")
        kw = dict(z_dim=m.z_dim, base_channels=m.base_channels, g_batchnorm=m.g_batchnorm,
                  d_batchnorm=m.d_batchnorm, d_dropout=m.d_dropout)
        nets = (build_dcgan(resolution=m.resolution, **kw) if isinstance(m.resolution, int)
                else build_conditional(resolution=m.size, num_attrs=0, **kw))
        for net in nets.values():
            dcgan_init_(net)
        return nets

    def build_steps(self, cfg, data: DataInfo):
        from facegan.families.overlay.steps import OverlaySteps

        return OverlaySteps(cfg, data)


FAMILY = Overlay()
