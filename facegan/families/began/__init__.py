"""BEGAN (Berthelot, Schumm & Metz 2017): an autoencoder discriminator and a proportional control
of the balance between D and G.

    facegan train configs/began_celeba64.yaml

With the autoencoder's pixel-wise L1 loss L(v) = mean |v - D(v)|:

    L_D = L(x) - k_t L(G(z))          L_G = L(G(z))
    k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1)
    M = L(x) + |gamma L(x) - L(G(z))|          (the convergence measure)

gamma (`gan.gamma`, 0.5) is the diversity ratio E[L(G(z))] / E[L(x)] the control holds; lambda_k
(`gan.lambda_k`) 0.001, k_0 = `gan.k_init` (0). k_t and M use the D phase's L(x) and L(G(z)),
averaged over ranks (`mean_over_ranks`), so every rank holds the same k_t; k_t is training state:
checkpointed and restored exactly. With `gan.lr_patience_kimg` > 0 both rates are multiplied by
`gan.lr_decay` whenever M, averaged over windows of `gan.m_window_kimg`, has not improved (by the
relative margin `gan.m_min_delta`) for that many kimg (the paper decays the rate "when the
measure stalls"; the decay state is family state too).

Nets (nets.py): the paper's architecture with `base_channels` = n: 3x3 convs with ELU, two per
scale, stride-2 convs to go down (channels n, 2n, 3n, ...), fully connected to and from an
`h_dim` embedding at 8x8, nearest-neighbour upsampling in the decoder; G has the decoder's
architecture (plus tanh), z ~ U(-1, 1) of `z_dim`. Phases: steps.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from facegan.config import ConfigError, require
from facegan.families.base import DataInfo, Family, Phase, TwoTimescaleOptim, finite_number

MAX_NET_PARAMS = 150_000_000    # per encoder / decoder: refused before anything is allocated
BEGAN_METRICS = ("loss/d", "loss/d_real", "loss/d_fake", "loss/g", "began/k", "began/M", "began/balance",
                 "began/lr_factor")
BEGAN_CURVES = (("loss/d_real", "loss/d_fake", "loss/g"), ("began/k",), ("began/M",))


def began_octaves(resolution: int) -> int:
    return resolution.bit_length() - 1 - 3


def encoder_params(*, resolution: int, base_channels: int, h_dim: int, channels: int = 3) -> int:
    """Parameters of BEGAN's encoder (facegan.families.began.nets.BEGANEncoder), without torch."""
    n, octaves = base_channels, began_octaves(resolution)
    total = 9 * channels * n + n
    for i in range(octaves):
        ch, nxt = n * (i + 1), n * (i + 2)
        total += 2 * (9 * ch * ch + ch) + 9 * ch * nxt + nxt
    ch = n * (octaves + 1)
    return total + 2 * (9 * ch * ch + ch) + 64 * ch * h_dim + h_dim


def decoder_params(*, resolution: int, base_channels: int, in_dim: int, channels: int = 3) -> int:
    """Parameters of BEGAN's decoder (and G), without torch."""
    n, octaves = base_channels, began_octaves(resolution)
    return in_dim * 64 * n + 64 * n + (octaves + 1) * 2 * (9 * n * n + n) + 9 * n * channels + channels


def check_began_size(m: object, *, in_dim: int) -> None:
    """ConfigError (naming the fields) when an encoder or decoder would exceed MAX_NET_PARAMS."""
    enc = encoder_params(resolution=m.resolution, base_channels=m.base_channels, h_dim=m.h_dim)
    dec = decoder_params(resolution=m.resolution, base_channels=m.base_channels, in_dim=max(in_dim, m.h_dim))
    biggest = max(enc, dec)
    require(biggest <= MAX_NET_PARAMS,
            f"model.base_channels, model.h_dim, model.resolution: {m.base_channels}, {m.h_dim} and {m.resolution} "
            f"give a net of {biggest / 1e6:.0f}M parameters, more than {MAX_NET_PARAMS / 1e6:.0f}M: lower them")


@dataclass(kw_only=True)
class BEGANModelConfig:
    """`model:` of the began family (square images, a power of two)."""

    family: str = "began"
    resolution: int = 64
    z_dim: int = 64                   # the paper's N_z
    h_dim: int = 64                   # D's embedding (the paper's N_h)
    base_channels: int = 64           # n: channels of the first scale (the paper: 64 or 128)

    def __post_init__(self) -> None:
        r = self.resolution
        require(isinstance(r, int) and not isinstance(r, bool) and 16 <= r <= 1024 and r & (r - 1) == 0,
                f"model.resolution: expected a power of two in 16..1024 (32, 64, 128), got {r}")
        require(1 <= self.z_dim <= 4096, f"model.z_dim: expected 1..4096, got {self.z_dim}")
        require(1 <= self.h_dim <= 4096, f"model.h_dim: expected 1..4096, got {self.h_dim}")
        require(1 <= self.base_channels <= 512, f"model.base_channels: expected 1..512, got {self.base_channels}")
        check_began_size(self, in_dim=self.z_dim)

    @property
    def size(self) -> tuple[int, int]:
        return (self.resolution, self.resolution)


@dataclass(kw_only=True)
class BEGANOptim(TwoTimescaleOptim):
    """Adam for G and D: the paper's 1e-4 (beta1 0.5 as the reference implementations)."""

    g_lr: float = 1e-4
    d_lr: float = 1e-4


@dataclass(kw_only=True)
class BEGANOptions:
    """`gan:` of the began family: the equilibrium control and the rate decay."""

    gamma: float = 0.5                # diversity ratio, (0, 1]
    lambda_k: float = 0.001           # k's learning rate, >= 0
    k_init: float = 0.0               # k_0, [0, 1]
    lr_patience_kimg: float = 0.0     # > 0: decay both rates when M has not improved for this many kimg; 0: never
    lr_decay: float = 0.5             # factor per decay, (0, 1]
    lr_min_factor: float = 1e-3       # the rates never fall below this fraction of the configured ones, (0, 1]
    m_window_kimg: float = 2.0        # M is averaged over windows of this many kimg before it is compared, > 0
    m_min_delta: float = 0.0          # relative improvement of the window mean that counts, [0, 1)

    def __post_init__(self) -> None:
        for name in ("gamma", "lambda_k", "k_init", "lr_patience_kimg", "lr_decay", "lr_min_factor",
                     "m_window_kimg", "m_min_delta"):
            setattr(self, name, finite_number(name, getattr(self, name)))
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma!r}")
        if self.lambda_k < 0:
            raise ConfigError(f"lambda_k must be >= 0, got {self.lambda_k!r}")
        if not 0 <= self.k_init <= 1:
            raise ConfigError(f"k_init must be in [0, 1], got {self.k_init!r}")
        if self.lr_patience_kimg < 0:
            raise ConfigError(f"lr_patience_kimg must be >= 0 (0: no decay), got {self.lr_patience_kimg!r}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if not 0 < self.lr_min_factor <= 1:
            raise ConfigError(f"lr_min_factor must be in (0, 1], got {self.lr_min_factor!r}")
        if self.m_window_kimg <= 0:
            raise ConfigError(f"m_window_kimg must be > 0, got {self.m_window_kimg!r}")
        if not 0 <= self.m_min_delta < 1:
            raise ConfigError(f"m_min_delta must be in [0, 1), got {self.m_min_delta!r}")


class BEGAN(Family):
    name = "began"
    model_options = BEGANModelConfig
    optim_options = BEGANOptim
    gan_options = BEGANOptions
    metrics = BEGAN_METRICS
    curves = BEGAN_CURVES
    shape_keys = ("resolution", "z_dim", "h_dim", "base_channels")
    # D reconstructs what it sees: the phases send reals and fakes through ctx.augment and compare
    # D's output with the augmented input, so no net is wrapped.
    augment_kinds = ("none", "diffaugment")
    augment_nets = ()
    augment_note = "its D is an autoencoder, so ADA's heuristic E[sign D(x_real)] means nothing"
    smoke = {"model": {"resolution": 32, "z_dim": 16, "h_dim": 16, "base_channels": 8},
             "gan": {"lr_patience_kimg": 0.016, "m_window_kimg": 0.008}}

    def phases(self, cfg) -> list[Phase]:
        return [Phase("d", opt="D"), Phase("g", opt="G", uses_data=False)]

    def optimizers(self, cfg):
        return {"G": cfg.optim.spec("G", "g_lr"), "D": cfg.optim.spec("D", "d_lr")}

    def build_nets(self, cfg, data: DataInfo):
        from facegan.families.began.nets import build_began

        m = cfg.model
        return build_began(resolution=m.resolution, z_dim=m.z_dim, h_dim=m.h_dim, base_channels=m.base_channels)

    def build_steps(self, cfg, data: DataInfo):
        from facegan.families.began.steps import BEGANSteps

        return BEGANSteps(cfg, data)


FAMILY = BEGAN()
