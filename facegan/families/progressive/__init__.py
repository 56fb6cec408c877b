"""Seed 004's family: Kärkkäinen's GAN "between DCGAN and StyleGAN", trained on UTKFace.

    facegan shards build shards/utkface200.yaml --root $UTKFACE --out data/utkface200
    facegan train configs/progressive_utkface200.yaml --set data.shards=data/utkface200

- latent: z (100-d) on a hollow sphere of radius sqrt(z_dim) (`gan.latent: sphere`; `normal` for a
  plain Gaussian);
- generator: z gives a base x base "image" (a linear map) and an *injected* tensor, concatenated to
  every block's input: z projected to `width - 2` channels at every pixel plus x and y coordinate
  channels in [-1, 1], so a block's first conv takes exactly 2 x width channels (previous output
  plus injected). Blocks: bilinear 2x upsample, then two 3x3 convs (2w -> w, w -> w), LeakyReLU and
  pixel norm. Every layer has `width` channels; only the 1x1 toRGB (G) and fromRGB (D) convs have
  biases. The discriminator mirrors it (two convs then 2x average pooling per block, a linear logit);
- progressive growing (ProGAN): images come out at base * 2^level; training starts with the two
  smallest layers (level 1: base*2) and fades each next level in over `gan.fade_kimg` after
  `gan.stable_kimg` of stable training. The stage is a function of kimg (`Steps.stage`), the nets
  hold their level and fade alpha as buffers (so EMA copies and checkpoints know them), blocks not
  in use are frozen, and Adam's moments are cleared at each new stage;
- noise-controlled D training: Gaussian noise of std eps on real and fake images in the D phase
  only; eps follows the gap between D's mean rating (sigmoid) of reals and of fakes, all-reduced
  over ranks, towards `gan.noise_target`;
- diversity learning: an extra gradient on G's output over all pairs of a batch,
  sign(d) * 0.05 * (1.05 / (d^2 + 0.05) - 1) for d = x_i - x_j, pushing values closer than 1 apart;
- a training video: a fixed batch of latents (never trained on) rendered at every tick into
  `video/frame-*.png` under the run folder, written to `video.mp4` (PyAV's libx264) at the end.

Phases per step: `d` (fresh real batch, downsampled to the current resolution and blended during a
fade) then `g` (the same fakes, no noise, diversity gradient). Nets: nets.py; phases: steps.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from facegan.config import TrainConfig, require
from facegan.families.base import (DataInfo, Family, OptimizerSpec, Phase, R1Options, TwoTimescaleOptim,
                                   check_r1_precision, finite_number)

MAX_SIDE = 1024
MAX_FIRST_LAYER = 2**26             # weights of G's z -> first "image" map (256 MiB in fp32)
MAX_VIDEO_PIXELS = 64 * 256 * 256   # samples x pixels in one video frame
LATENTS = ("sphere", "normal")


def num_levels(resolution: int, base_size: int) -> int:
    """K with base_size * 2**K == resolution (K >= 1), or 0 when there is none."""
    k, size = 0, base_size
    while size < resolution:
        size, k = size * 2, k + 1
    return k if size == resolution else 0


@dataclass(kw_only=True)
class ProgressiveModelConfig:
    """`model:` of the progressive family. resolution = base_size * 2**K with K >= 1 (200 = 25 * 2**3)."""

    family: str = "progressive"
    resolution: int = 200
    base_size: int = 25              # the first layer's size
    width: int = 128                 # channels of every layer (the injected tensor has this many too)
    z_dim: int = 100

    def __post_init__(self) -> None:
        for name in ("resolution", "base_size", "width", "z_dim"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool),
                    f"model.{name}: expected an integer, got {value!r}")
        require(2 <= self.base_size <= MAX_SIDE // 2, f"model.base_size: expected 2..{MAX_SIDE // 2}, got {self.base_size}")
        require(4 <= self.resolution <= MAX_SIDE and num_levels(self.resolution, self.base_size) >= 1,
                f"model.resolution: expected base_size * 2**k (k >= 1) up to {MAX_SIDE}, got {self.resolution} "
                f"with base_size {self.base_size}")
        # width - 2 latent channels plus x and y make the injected tensor as wide as a layer.
        require(3 <= self.width <= 512, f"model.width: expected 3..512, got {self.width}")
        require(1 <= self.z_dim <= 4096, f"model.z_dim: expected 1..4096, got {self.z_dim}")
        first = self.z_dim * self.width * self.base_size ** 2
        require(first <= MAX_FIRST_LAYER,
                f"model.base_size: the first layer's map from z (z_dim x width x base_size^2) would have {first:,} "
                f"weights, more than {MAX_FIRST_LAYER:,}; lower model.base_size, model.width or model.z_dim")

    @property
    def size(self) -> tuple[int, int]:
        return (self.resolution, self.resolution)

    @property
    def num_levels(self) -> int:
        return num_levels(self.resolution, self.base_size)


@dataclass(kw_only=True)
class ProgressiveOptions(R1Options):
    """The progressive family's GAN options (`gan:` in a run config), R1 included (r1_gamma, r1_interval)."""

    latent: Literal["sphere", "normal"] = "sphere"   # z on the sphere of radius sqrt(z_dim), or N(0, I)
    stable_kimg: float = 60.0         # images per stable phase (the first level and every level after its fade), > 0
    fade_kimg: float = 60.0           # images per fade-in of a new level, >= 0 (0: switch at once)
    adaptive_noise: bool = True       # eps follows D's rating gap; false: eps stays noise_init
    noise_init: float = 0.0           # eps at the start, in [0, noise_max]
    noise_target: float = 0.3         # wanted gap between D's mean rating of reals and of fakes, in [0, 1)
    noise_speed: float = 1.0          # eps change per kimg per unit of (gap - target), >= 0
    noise_max: float = 1.0            # eps never exceeds this, >= 0
    diversity: bool = True            # the pairwise diversity gradient on G's output
    diversity_weight: float = 0.3     # its weight (diversity.py: scaled per sample and per image size), >= 0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.latent in LATENTS, f"gan.latent: expected one of {list(LATENTS)}, got {self.latent!r}")
        for name in ("stable_kimg", "fade_kimg", "noise_init", "noise_target", "noise_speed", "noise_max",
                     "diversity_weight"):
            value = finite_number(f"gan.{name}", getattr(self, name))
            require(value >= 0, f"gan.{name}: expected >= 0, got {value}")
            setattr(self, name, value)
        require(self.stable_kimg > 0, f"gan.stable_kimg: expected > 0, got {self.stable_kimg}")
        require(self.noise_target < 1, f"gan.noise_target: expected a rating gap in [0, 1), got {self.noise_target}")
        require(self.noise_init <= self.noise_max,
                f"gan.noise_init: expected <= gan.noise_max ({self.noise_max}), got {self.noise_init}")


@dataclass(kw_only=True)
class ProgressiveTrainConfig(TrainConfig):
    """A progressive run's `train:`: a GAN's, plus the training video."""

    video: bool = True                # render video_samples fixed latents at every tick; video.mp4 at the end
    video_samples: int = 32
    video_fps: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        require(1 <= self.video_samples <= 256, f"train.video_samples: expected 1..256, got {self.video_samples}")
        require(1 <= self.video_fps <= 120, f"train.video_fps: expected 1..120, got {self.video_fps}")


PROGRESSIVE_METRICS = ("loss/d", "loss/g", "D(x)", "D(G(z))", "D(G(z))_g", "acc/d_real", "acc/d_fake",
                       "noise/eps", "noise/gap", "div/pair_dist", "progressive/alpha", "progressive/resolution",
                       "loss/r1")


class Progressive(Family):
    name = "progressive"
    model_options = ProgressiveModelConfig
    optim_options = TwoTimescaleOptim
    gan_options = ProgressiveOptions
    train_options = ProgressiveTrainConfig
    discriminator = "D"
    reset_optimizers_on_stage = True
    augment_kinds = ("none", "diffaugment", "ada")
    metrics = PROGRESSIVE_METRICS
    curves = (("loss/d", "loss/g"), ("D(x)", "D(G(z))"), ("noise/eps", "noise/gap"), ("progressive/alpha",))
    shape_keys = ("resolution", "base_size", "width", "z_dim")
    # 32 = 8 * 2**2: starts at 16x16, fades 32x32 in. The family test's run (6 steps of 8 images,
    # resumed after 3) resumes mid-fade (alpha 0.5 at 0.024 kimg); its 2-rank DDP run (3 steps of 16)
    # grows at its second step.
    smoke = {"model": {"resolution": 32, "base_size": 8, "width": 8, "z_dim": 16},
             "gan": {"stable_kimg": 0.008, "fade_kimg": 0.032, "noise_speed": 20.0, "diversity_weight": 0.5},
             "train": {"video_samples": 4}}

    def phases(self, cfg) -> list[Phase]:
        return [Phase("d", opt="D"), Phase("g", opt="G", uses_data=False)]

    def optimizers(self, cfg) -> dict[str, OptimizerSpec]:
        return {"G": cfg.optim.spec("G", "g_lr"), "D": cfg.optim.spec("D", "d_lr")}

    def validate(self, cfg) -> None:
        check_r1_precision(cfg)
        pixels = cfg.train.video_samples * cfg.model.resolution ** 2
        require(not cfg.train.video or pixels <= MAX_VIDEO_PIXELS,
                f"train.video_samples: {cfg.train.video_samples} samples of {cfg.model.resolution}x"
                f"{cfg.model.resolution} make a {pixels:,}-pixel frame, more than {MAX_VIDEO_PIXELS:,}")

    def build_nets(self, cfg, data: DataInfo):
        from facegan.families.progressive.nets import build_progressive

        m = cfg.model
        return build_progressive(resolution=m.resolution, base_size=m.base_size, width=m.width, z_dim=m.z_dim)

    def build_steps(self, cfg, data: DataInfo):
        from facegan.families.progressive.steps import ProgressiveSteps

        return ProgressiveSteps(cfg, data)


FAMILY = Progressive()
