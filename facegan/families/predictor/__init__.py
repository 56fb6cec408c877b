"""The latent predictor (the seed-002 report's extension 3): a network with D's architecture that
maps an image to the GAN's whole latent [z, c], trained after the GAN against its frozen generator.

    facegan predictor train --checkpoint runs/infogan_celeba64 [--set gan.switch_kimg=100] [--no-ray]
    facegan train configs/predictor_celeba64.yaml --set gan.generator=runs/infogan_celeba64
    P = load_predictor("runs/infogan_celeba64/predictor")   # facegan.families.predictor.load
    latent_BL = P(img_BCHW)                                  # images in [-1, 1] -> the GAN's latent layout

Nets: "P" (trained) and "G", the GAN's generator (its EMA weights) loaded through
facegan.families.loading from `gan.generator` and frozen; the predictor's checkpoint holds both, and
its meta records the GAN checkpoint it belongs to (meta["predictor"]). One phase, `p`, per step:
latents from the GAN's own sampling (`Steps.latent`, codes included), images x_G = G(latent), then

    before gan.switch_kimg:  L = MSE(P(x_G), latent)                                  (latent loss)
    after:                   L = d(G(P(x)), x) + latent_weight * MSE(P(x_G), latent)  (image loss)

where x is x_G, the real batch, or both (`gan.image_source`) and d is 1 - SSIM, 1 - MS-SSIM (with
as many scales as the image size allows) or the MSE (`gan.image_loss`); the gradient flows through
the frozen G into P ("fine-tuned with the generator's weights"). The real stream is read every step
either way (kimg counts predictor training images).

P's architecture (`model.arch`): `dcgan` is DCGAN's discriminator with the latent as its output
(the conv trunk, then a 4x4 conv to latent_dim); `began` is BEGAN's encoder with the latent as its
embedding; `auto` (default) takes the GAN's D: began for the began/infobegan families, dcgan otherwise.
`gan.generator: untrained:<family>` trains against a freshly initialised generator of that family
(its smoke-size config at this resolution): the whole path without a trained GAN (tests, timing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from facegan.config import TrainConfig, require
from facegan.families.base import DataInfo, Family, OneAdam, OptimizerSpec, Phase, finite_number
from facegan.families.began import encoder_params
from facegan.families.infogan import dcgan_trunk_params

ARCHS = ("auto", "dcgan", "began")
MAX_TRUNK_PARAMS = 150_000_000  # P's convolutions (either architecture): refused before anything is allocated
UNTRAINED = "untrained:"
BEGAN_LIKE = ("began", "infobegan")
PREDICTOR_METRICS = ("loss/p", "loss/latent", "loss/image", "pred/cat_acc", "pred/cont_mse",
                     "eval/latent_mse", "eval/image_mse", "eval/cat_acc")
PREDICTOR_CURVES = (("loss/latent", "loss/image"), ("pred/cat_acc",))


def resolve_arch(arch: str, gan_family: str) -> str:
    """`model.arch` with auto resolved against the GAN's family name."""
    if arch != "auto":
        return arch
    return "began" if gan_family in BEGAN_LIKE else "dcgan"


@dataclass(kw_only=True)
class PredictorModelConfig:
    """`model:` of the predictor family. `resolution` must be the GAN's (and the shards')."""

    family: str = "predictor"
    resolution: int = 64
    arch: Literal["auto", "dcgan", "began"] = "auto"
    base_channels: int = 64           # width of P's first conv (as D's base_channels)
    batchnorm: bool = True            # dcgan arch: batch norm after every conv but the first (as DCGAN's D)

    def __post_init__(self) -> None:
        r = self.resolution
        require(isinstance(r, int) and not isinstance(r, bool) and 16 <= r <= 1024 and r & (r - 1) == 0,
                f"model.resolution: expected a power of two in 16..1024 (the GAN's), got {r}")
        require(self.arch in ARCHS, f"model.arch: expected one of {list(ARCHS)}, got {self.arch!r}")
        require(1 <= self.base_channels <= 512, f"model.base_channels: expected 1..512, got {self.base_channels}")
        trunk = max(dcgan_trunk_params(self.resolution, self.base_channels),
                    encoder_params(resolution=self.resolution, base_channels=self.base_channels, h_dim=1))
        require(trunk <= MAX_TRUNK_PARAMS,
                f"model.base_channels, model.resolution: {self.base_channels} at {self.resolution} px gives "
                f"{trunk / 1e6:.0f}M parameters, more than {MAX_TRUNK_PARAMS / 1e6:.0f}M: lower them")

    @property
    def size(self) -> tuple[int, int]:
        return (self.resolution, self.resolution)


@dataclass(kw_only=True)
class PredictorOptim(OneAdam):
    """`optim:` of the predictor: one Adam for P (OneAdam's defaults: 2e-4, betas 0.5/0.999)."""


@dataclass(kw_only=True)
class PredictorOptions:
    """`gan:` of the predictor: the frozen generator and the loss schedule."""

    generator: str = ""               # the GAN: a checkpoint or run folder (made absolute here), or untrained:<family>
    switch_kimg: float = 50.0         # latent loss before this many kimg, image loss after (0: image loss from the start)
    image_loss: Literal["mse", "ssim", "ms_ssim"] = "mse"
    image_source: Literal["generated", "real", "both"] = "generated"   # images the image loss reconstructs
    latent_weight: float = 0.0        # weight of the latent loss kept beside the image loss after the switch

    def __post_init__(self) -> None:
        require(bool(self.generator), "gan.generator: expected the GAN's checkpoint or run folder (facegan train ...), "
                                      f"or {UNTRAINED}<family>")
        if self.generator.startswith(UNTRAINED):
            require(bool(self.generator[len(UNTRAINED):]), f"gan.generator: expected {UNTRAINED}<family>, got "
                                                           f"{self.generator!r}")
        elif "://" not in self.generator:
            # Workers and trials run in other directories.
            self.generator = str(Path(self.generator).expanduser().resolve())
        for name in ("switch_kimg", "latent_weight"):
            value = finite_number(f"gan.{name}", getattr(self, name))
            require(value >= 0, f"gan.{name}: expected >= 0, got {value}")
            setattr(self, name, value)
        require(self.image_loss in ("mse", "ssim", "ms_ssim"),
                f"gan.image_loss: expected mse, ssim or ms_ssim, got {self.image_loss!r}")
        require(self.image_source in ("generated", "real", "both"),
                f"gan.image_source: expected generated, real or both, got {self.image_source!r}")


class Predictor(Family):
    name = "predictor"
    model_options = PredictorModelConfig
    optim_options = PredictorOptim
    gan_options = PredictorOptions
    train_options = TrainConfig
    generator = "G"                   # the GAN's, frozen: sampling a predictor run samples its GAN
    ema = "G"                         # (a frozen net's EMA is itself)
    metrics = PREDICTOR_METRICS
    curves = PREDICTOR_CURVES
    shape_keys = ("resolution", "arch", "base_channels", "batchnorm")
    smoke = {"model": {"resolution": 32, "base_channels": 8},
             "gan": {"generator": "untrained:infogan", "switch_kimg": 0.024, "image_source": "both",
                     "latent_weight": 0.1}}

    def phases(self, cfg) -> list[Phase]:
        return [Phase("p", opt="P")]

    def optimizers(self, cfg) -> dict[str, OptimizerSpec]:
        o = cfg.optim
        return {"P": OptimizerSpec(nets=("P",), lr=o.lr, betas=(o.beta1, o.beta2))}

    def build_nets(self, cfg, data: DataInfo):
        from facegan.families.predictor.load import build_predictor, load_gan

        gan = load_gan(cfg.gan.generator, resolution=cfg.model.resolution, shards=cfg.data.shards)
        P = build_predictor(cfg.model, arch=resolve_arch(cfg.model.arch, gan.family.name), latent_dim=gan.latent_dim)
        return {"P": P, "G": gan.G.requires_grad_(False).eval()}

    def build_steps(self, cfg, data: DataInfo):
        from facegan.families.predictor.steps import PredictorSteps

        return PredictorSteps(cfg, data)


FAMILY = Predictor()
