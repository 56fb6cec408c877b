"""SNGAN (Miyato et al. 2018) as Mimicry trains it on CelebA 64x64: ResNet G and D, spectral norm in
D, the hinge loss, n_dis = 5 D steps per G step, Adam 2e-4 with betas (0, 0.9), batch 64 (Mimicry's
FID 5.71 at 100k G steps, 50k samples, is the anchor). The family to pick for the best faces.

    facegan train configs/sngan_celeba64.yaml
    facegan train configs/sngan_celeba64.yaml --set augment.kind=diffaugment   # few thousand faces

Phases per step: `d` n_dis times, each on a fresh real batch and fresh fakes, then `g` once on fresh
z (steps.py); nets in nets.py. Images seen count every D batch: with n_dis 5 a step draws 5 real
batches. D's scores are hinge logits (> 0 reads as real), so d_accuracy and ADA's r_t apply.
"""

from __future__ import annotations

from dataclasses import dataclass

from facegan.config import require
from facegan.families.base import DataInfo, Family, OptimizerSpec, Phase, TwoTimescaleOptim, int_in_range

MAX_NET_PARAMS = 150_000_000    # per net: refused before anything is allocated
MAX_N_DIS = 100
SNGAN_METRICS = ("loss/d", "loss/d_real", "loss/d_fake", "loss/g", "D(x)", "D(G(z))", "D(G(z))_g",
                 "acc/d_real", "acc/d_fake")
SNGAN_CURVES = (("loss/d", "loss/g"), ("D(x)", "D(G(z))"))


def sngan_params(*, resolution: int, z_dim: int, width: int, channels: int = 3) -> tuple[int, int]:
    """(G's, D's) weights at these sizes (biases and norms left out), computed without building them."""
    n = resolution.bit_length() - 3
    ws = [width >> i for i in range(n + 1)]                  # width, width/2, ..., width >> n
    g = z_dim * 16 * width + sum(9 * a * b + 9 * b * b + a * b for a, b in zip(ws, ws[1:])) + 9 * ws[-1] * channels
    rev = ws[::-1]
    d = 9 * channels * rev[0] + 9 * rev[0] * rev[0] + channels * rev[0]
    d += sum(9 * a * a + 9 * a * b + a * b for a, b in zip(rev, rev[1:])) + width
    return g, d


@dataclass(kw_only=True)
class SNGANModelConfig:
    """`model:` of the sngan family (square images, a power of two)."""

    family: str = "sngan"
    resolution: int = 64
    z_dim: int = 128
    width: int = 1024                 # G's stem and D's last channels (Mimicry's ngf = ndf); halved per block

    def __post_init__(self) -> None:
        r = self.resolution
        require(isinstance(r, int) and not isinstance(r, bool) and 16 <= r <= 512 and r & (r - 1) == 0,
                f"model.resolution: expected a power of two in 16..512 (32, 64, 128), got {r}")
        require(1 <= self.z_dim <= 4096, f"model.z_dim: expected 1..4096, got {self.z_dim}")
        n = r.bit_length() - 3
        require(1 <= self.width <= 8192 and self.width % 2 ** n == 0,
                f"model.width: expected a multiple of {2 ** n} in {2 ** n}..8192 at resolution {r} (it is halved "
                f"{n} times), got {self.width}")
        biggest = max(sngan_params(resolution=r, z_dim=self.z_dim, width=self.width))
        require(biggest <= MAX_NET_PARAMS,
                f"model.width: {self.width} at resolution {r} gives a net of about {biggest / 1e6:.0f}M parameters, "
                f"more than {MAX_NET_PARAMS / 1e6:.0f}M: lower it")

    @property
    def size(self) -> tuple[int, int]:
        return (self.resolution, self.resolution)


@dataclass(kw_only=True)
class SNGANOptim(TwoTimescaleOptim):
    """Adam for G and D: the paper's (and Mimicry's) 2e-4 with betas (0, 0.9)."""

    g_lr: float = 2e-4
    d_lr: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.9


@dataclass(kw_only=True)
class SNGANOptions:
    """`gan:` of the sngan family."""

    n_dis: int = 5                    # D steps (each on a fresh real batch) per G step, 1..100

    def __post_init__(self) -> None:
        int_in_range("gan.n_dis", self.n_dis, 1, MAX_N_DIS)


class SNGAN(Family):
    name = "sngan"
    model_options = SNGANModelConfig
    optim_options = SNGANOptim
    gan_options = SNGANOptions
    discriminator = "D"
    metrics = SNGAN_METRICS
    curves = SNGAN_CURVES
    shape_keys = ("resolution", "z_dim", "width")
    augment_kinds = ("none", "diffaugment", "ada")
    # One D step per G step keeps the registry-wide test at its 3 steps of 16 images.
    smoke = {"model": {"resolution": 32, "z_dim": 16, "width": 32}, "gan": {"n_dis": 1}}

    def phases(self, cfg) -> list[Phase]:
        return [Phase("d", opt="D", repeat=cfg.gan.n_dis), Phase("g", opt="G", uses_data=False)]

    def optimizers(self, cfg) -> dict[str, OptimizerSpec]:
        return {"G": cfg.optim.spec("G", "g_lr"), "D": cfg.optim.spec("D", "d_lr")}

    def build_nets(self, cfg, data: DataInfo):
        from facegan.families.sngan.nets import build_sngan

        m = cfg.model
        return build_sngan(resolution=m.resolution, z_dim=m.z_dim, width=m.width)

    def build_steps(self, cfg, data: DataInfo):
        from facegan.families.sngan.steps import SNGANSteps

        return SNGANSteps(cfg, data)


FAMILY = SNGAN()
