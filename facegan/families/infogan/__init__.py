"""InfoGAN (Chen et al. 2016) with the seed-002 report's extensions: latent codes in G's input,
a Q head on D's trunk recovering them, optional noise recovery and Gaussian noise on D's input.

    facegan train configs/infogan_celeba64.yaml
    facegan sweep sweeps/infogan_grid.yaml          # the report's grid

G's input is the latent [z, c_cat, c_cont] (`codes.LatentLayout`): z ~ N(0, I) of `model.z_dim`,
one categorical code of `model.cat_dim` categories (one-hot; 0: none), `model.cont_dim` continuous
codes ~ U(-1, 1). D is DCGAN's trunk with two heads: the real/fake logit and Q, which predicts the
codes (categorical logits and the continuous codes' means). The info loss

    L_info = cat_weight * CE(Q_cat(x_G), c_cat) + cont_weight * 1/2 sum_j (Q_cont,j(x_G) - c_cont,j)^2
             [+ noise_recovery * mean_j (Q_z,j(x_G) - z_j)^2]

is the negative of InfoGAN's variational lower bound on I(c; G(z, c)) up to the constant H(c)
(continuous codes: a Gaussian of fixed unit variance, so its NLL is half the squared error).
Both phases add `info_weight` (lambda) x L_info: the D phase on the detached fakes (trains Q and
the shared trunk), the G phase on the same fakes (trains G to make its codes recoverable):
L_D = BCE terms + lambda L_info, L_G = -log D(x_G) + lambda L_info, as in the InfoGAN paper and its
reference code. Q is thus used and trained in both phases (DDP never meets an unused parameter).

Extension 1 (`gan.noise_recovery` > 0): a third head recovers z with a mean squared error, added to
L_info with that coefficient (the report's 0.1); at 0 the head does not exist.
Extension 2 (`gan.d_noise_power`, `gan.d_noise_anneal_kimg`): DCGAN's Gaussian noise on D's input
(real and fake, both phases, Q sees it too): its power is the noise variance relative to the
[-1, 1] image range, i.e. std = sqrt(power) in image units (the report's 1/15 and 1/20), fixed or
falling linearly to 0 over `d_noise_anneal_kimg`.
Extension 3 (a latent predictor trained after the GAN) is the `predictor` family.

Metrics (phase scalars, per step in losses.jsonl, per tick in W&B and sweeps): `mi/cat_acc` is how
often Q's argmax recovers the categorical code of a fresh fake (before Q trains on it; chance is
1/cat_dim), `mi/cont_r2` the continuous codes' R^2 against their prior variance 1/3, `mi/cont_mse`,
`mi/cat_nats` the lower bound H(c) - CE in nats, `mi/z_mse` (noise recovery). Each tick also writes
code traversal grids (`samples/traverse_c<j>-*.png`: rows = categories, columns = c_j from -1 to 1,
z and the other codes fixed).
"""

from __future__ import annotations

from dataclasses import dataclass

from facegan.config import ConfigError, require
from facegan.families.base import DataInfo, GanModelConfig, Phase, finite_number
from facegan.families.dcgan import DCGAN, DCGAN_CURVES, DCGAN_METRICS, DCGANOptions

MAX_CAT_DIM = 256
MAX_CONT_DIM = 64
MAX_NET_PARAMS = 150_000_000    # per net (G, D): refused before anything is allocated
INFO_METRICS = ("loss/info", "loss/g_info", "mi/cat_acc", "mi/cat_nats", "mi/cont_mse", "mi/cont_r2", "mi/z_mse")
INFO_CURVES = (("mi/cat_acc", "mi/cont_r2"),)


def dcgan_trunk_params(resolution: int, base_channels: int, channels: int = 3) -> int:
    """Parameters of DCGAN's discriminator trunk, about (4x4 convs doubling the channels), without torch."""
    total, in_ch = 0, channels
    for i in range(resolution.bit_length() - 1 - 2):
        out_ch = base_channels * 2 ** i
        total += 16 * in_ch * out_ch + 2 * out_ch
        in_ch = out_ch
    return total


@dataclass(kw_only=True)
class InfoGANModelConfig(GanModelConfig):
    """`model:` of the infogan family: DCGAN's nets with latent codes and a Q head."""

    family: str = "infogan"
    z_dim: int = 128                  # incompressible noise z (the report's latent size: 64 at 32 px, 128 at 64 px)
    cat_dim: int = 10                 # categories of the one categorical code (the report: 8 or 10); 0: none
    cont_dim: int = 2                 # continuous codes, each U(-1, 1); 0: none
    q_hidden: int = 128               # width of the Q (and noise-recovery) head's hidden layer

    def __post_init__(self) -> None:
        super().__post_init__()
        check_codes(self, what="an InfoGAN")
        # G mirrors D's trunk; its first layer maps the latent to the widest channels (4x4).
        top = self.base_channels * 2 ** (self.resolution.bit_length() - 4)
        size = dcgan_trunk_params(self.resolution, self.base_channels) + 16 * top * (
            self.z_dim + self.cat_dim + self.cont_dim + 2 * self.q_hidden)
        require(size <= MAX_NET_PARAMS,
                f"model.base_channels, model.resolution, model.z_dim: {self.base_channels} at {self.resolution} px "
                f"gives nets of about {size / 1e6:.0f}M parameters, more than {MAX_NET_PARAMS / 1e6:.0f}M: lower them")


def check_codes(m: object, *, what: str) -> None:
    """The code fields of `m` (InfoGAN's and InfoBEGAN's model: sections): cat_dim, cont_dim, q_hidden."""
    require(0 <= m.cat_dim <= MAX_CAT_DIM and m.cat_dim != 1,
            f"model.cat_dim: expected 0 (no categorical code) or 2..{MAX_CAT_DIM}, got {m.cat_dim}")
    require(0 <= m.cont_dim <= MAX_CONT_DIM, f"model.cont_dim: expected 0..{MAX_CONT_DIM}, got {m.cont_dim}")
    require(m.cat_dim + m.cont_dim >= 1, f"model.cat_dim, model.cont_dim: {what} needs at least one code (both are 0)")
    require(1 <= m.q_hidden <= 4096, f"model.q_hidden: expected 1..4096, got {m.q_hidden}")


@dataclass(kw_only=True)
class InfoLossOptions:
    """The info loss's weights, each a float >= 0: mixed into InfoGAN's and InfoBEGAN's `gan:`
    sections (first among the bases, so its checks run after the other base's)."""

    info_weight: float = 1.0          # lambda on L_info in both phases (InfoGAN: 1)
    cat_weight: float = 1.0           # weight of the categorical cross-entropy inside L_info
    cont_weight: float = 1.0          # weight of the continuous codes' Gaussian NLL (1/2 squared error) inside L_info
    noise_recovery: float = 0.0       # extension 1: weight of z's recovery MSE inside L_info (the report: 0.1); 0: no head

    def __post_init__(self) -> None:
        checks = getattr(super(), "__post_init__", None)
        if checks is not None:
            checks()
        for name in ("info_weight", "cat_weight", "cont_weight", "noise_recovery"):
            value = finite_number(name, getattr(self, name))
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value!r}")
            setattr(self, name, value)


@dataclass(kw_only=True)
class InfoGANOptions(InfoLossOptions, DCGANOptions):
    """`gan:` of the infogan family: DCGAN's tricks (d_noise_power is extension 2) plus the info loss."""


class InfoGAN(DCGAN):
    name = "infogan"
    model_options = InfoGANModelConfig
    gan_options = InfoGANOptions
    discriminator = "D"
    latent_codes = True
    metrics = DCGAN_METRICS + INFO_METRICS
    curves = DCGAN_CURVES + INFO_CURVES
    shape_keys = DCGAN.shape_keys + ("cat_dim", "cont_dim", "q_hidden")
    smoke = {"model": {"resolution": 32, "z_dim": 16, "base_channels": 8, "cat_dim": 4, "cont_dim": 2, "q_hidden": 16},
             "gan": {"noise_recovery": 0.1, "d_noise_power": 0.05}}

    def phases(self, cfg) -> list[Phase]:
        return [Phase("d", opt="D"), Phase("g", opt="G", uses_data=False)]

    def build_nets(self, cfg, data: DataInfo):
        from facegan.families.dcgan.nets import DCGANGenerator, dcgan_init_
        from facegan.families.infogan.codes import LatentLayout
        from facegan.families.infogan.nets import InfoGANDiscriminator

        m = cfg.model
        layout = LatentLayout(z_dim=m.z_dim, cat_dim=m.cat_dim, cont_dim=m.cont_dim)
        nets = {"G": DCGANGenerator(resolution=m.resolution, z_dim=layout.dim, base_channels=m.base_channels,
                                    batchnorm=m.g_batchnorm),
                "D": InfoGANDiscriminator(resolution=m.resolution, base_channels=m.base_channels,
                                          batchnorm=m.d_batchnorm, dropout=m.d_dropout, code_dim=layout.code_dim,
                                          q_hidden=m.q_hidden, z_dim=m.z_dim if cfg.gan.noise_recovery > 0 else 0)}
        for net in nets.values():
            dcgan_init_(net)
        return nets

    def build_steps(self, cfg, data: DataInfo):
        from facegan.families.infogan.steps import InfoGANSteps

        return InfoGANSteps(cfg, data)


FAMILY = InfoGAN()
