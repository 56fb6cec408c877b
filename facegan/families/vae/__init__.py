"""A convolutional variational autoencoder (Kingma & Welling 2014) as a generative family.

    facegan train configs/vae_celeba64.yaml
    facegan train configs/vae_celeba112.yaml        # the CelebA report's setting: 112x112, batch 128, lr 1e-3
    facegan sample --checkpoint runs/vae_celeba64 -n 16 --out vae.png   # decoder on z ~ N(0, I)

Nets: "E" maps an image to (mu, log sigma^2) of q(z|x); "G", the decoder, maps z to Bernoulli
logits per pixel and channel, and to images in [-1, 1] (2 sigmoid - 1) for sampling. One phase,
`fit`, with one Adam over E and G: the loss per image is the BCE summed over pixels between the
decoder's output and the image mapped to [0, 1], plus beta times KL(q(z|x) || N(0, I)) in closed
form, averaged over the batch. At `eval.every_kimg` and at the end the ELBO (and its BCE and KL
parts) is measured on the val split over all ranks' shares (steps.py). Tick grids: samples and
reconstructions of a fixed real batch.

Sizes need not be powers of two: the decoder starts from an s x s map (s in 4..7) and doubles it
k >= 2 times, so 112 = 7 x 2^4 and 64 = 4 x 2^4 both work (`vae_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from facegan.config import METRIC_NAMES, GanEvalConfig, TrainConfig, require
from facegan.families.base import DataInfo, Family, OneAdam, OptimizerSpec, Phase, finite_number

# Both nets together; beyond this a config is refused before anything is allocated.
MAX_PARAMS = 150_000_000
MIN_BASE, MAX_BASE = 4, 7
MAX_RESOLUTION = 1024

VAE_METRICS = ("loss/vae", "loss/bce", "loss/kl", "eval/val/elbo", "eval/val/bce", "eval/val/kl")
VAE_CURVES = (("loss/vae",), ("loss/bce",), ("loss/kl",))


def vae_layout(resolution: int) -> tuple[int, int]:
    """(s, k): the decoder's first map is s x s (4 <= s <= 7) and is doubled k >= 2 times to
    `resolution` = s * 2^k. ValueError naming the resolution when there is no such split."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or not 16 <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be an integer in 16..{MAX_RESOLUTION}, got {resolution!r}")
    for k in range(resolution.bit_length(), 1, -1):
        s, rem = divmod(resolution, 2 ** k)
        if rem == 0 and MIN_BASE <= s <= MAX_BASE:
            return s, k
    raise ValueError(f"resolution must be s * 2^k with s in {MIN_BASE}..{MAX_BASE} and k >= 2 "
                     f"(e.g. 32, 48, 64, 96, 112, 128), got {resolution}")


def vae_widths(base_channels: int, doublings: int) -> list[int]:
    """Channels after each encoder conv (the decoder mirrors them): base_channels * 2^i."""
    return [base_channels * 2 ** i for i in range(doublings)]


def vae_num_params(*, resolution: int, z_dim: int, base_channels: int, channels: int = 3) -> int:
    """Weights of encoder plus decoder (biases and norms left out), without building them."""
    s, k = vae_layout(resolution)
    w = vae_widths(base_channels, k)
    convs = 16 * (channels * w[0] + sum(a * b for a, b in zip(w, w[1:])))   # encoder 4x4 convs
    convs *= 2                                                               # the decoder mirrors them
    linear = 3 * z_dim * w[-1] * s * s                                       # E -> (mu, logvar), z -> decoder map
    return convs + linear


@dataclass(kw_only=True)
class VAEModelConfig:
    """`model:` of the vae family."""

    family: str = "vae"
    resolution: int = 64           # must match the shards: s * 2^k, s in 4..7 (32, 48, 64, 96, 112, 128, ...)
    z_dim: int = 128
    base_channels: int = 32        # channels of the encoder's first conv; doubled per octave
    batchnorm: bool = True         # batch norm after the hidden convs of E and G

    def __post_init__(self) -> None:
        try:
            vae_layout(self.resolution)
        except ValueError as exc:
            require(False, f"model.resolution: {exc}")
        require(1 <= self.z_dim <= 4096, f"model.z_dim: expected 1..4096, got {self.z_dim}")
        require(1 <= self.base_channels <= 1024, f"model.base_channels: expected 1..1024, got {self.base_channels}")
        n = vae_num_params(resolution=self.resolution, z_dim=self.z_dim, base_channels=self.base_channels)
        require(n <= MAX_PARAMS, f"model.base_channels: {self.base_channels} with z_dim {self.z_dim} at resolution "
                                 f"{self.resolution} gives about {n / 1e6:.0f}M parameters; at most "
                                 f"{MAX_PARAMS / 1e6:.0f}M are allowed (lower model.base_channels or model.z_dim)")

    @property
    def size(self) -> tuple[int, int]:
        return (self.resolution, self.resolution)


@dataclass(kw_only=True)
class VAEOptim(OneAdam):
    """`optim:` of the vae family: one Adam over encoder and decoder."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999


@dataclass(kw_only=True)
class VAEOptions:
    """`gan:` of the vae family (the section every generative family's options live in)."""

    beta: float = 1.0          # weight of the KL term (1: the ELBO; beta-VAE above 1), 0..1000

    def __post_init__(self) -> None:
        self.beta = finite_number("gan.beta", self.beta)
        require(0 <= self.beta <= 1000, f"gan.beta: expected 0..1000, got {self.beta}")


@dataclass(kw_only=True)
class VAETrainConfig(TrainConfig):
    """A VAE run's `train:`: the GAN section with no EMA by default (the ELBO pairs the encoder
    with the decoder it was trained with; an EMA decoder would be scored with the raw encoder)."""

    ema_kimg: float = 0.0


@dataclass(kw_only=True)
class VAEEvalConfig(GanEvalConfig):
    """`eval:` of the vae family: every eval.every_kimg (and at the end) the ELBO on the val split;
    the sample metrics of `facegan eval` (fid_attr, ...) only when `metrics` lists them (then with
    the classifier they need). Unlike a GAN run's, an empty `metrics` means none."""

    metrics: list[str] = field(default_factory=list)
    elbo_images: int = 10_000      # at most this many val images for the ELBO (over all ranks)

    def __post_init__(self) -> None:
        # GanEvalConfig's checks, except that a feature net is needed only when `metrics` asks for
        # sample metrics (GanEvalConfig wants one whenever every_kimg > 0; the ELBO needs none).
        require(self.every_kimg >= 0, f"eval.every_kimg: expected >= 0 (0: only at the end), got {self.every_kimg}")
        require(self.num_samples >= 2, f"eval.num_samples: expected >= 2, got {self.num_samples}")
        require(self.num_real >= 2, f"eval.num_real: expected >= 2, got {self.num_real}")
        require(self.batch_size >= 1, f"eval.batch_size: expected >= 1, got {self.batch_size}")
        require(1 <= self.elbo_images <= 10_000_000, f"eval.elbo_images: expected 1..10000000, got {self.elbo_images}")
        unknown = [m for m in self.metrics if m not in METRIC_NAMES]
        require(not unknown, f"eval.metrics: unknown {unknown}; known: {sorted(METRIC_NAMES)}")
        if self.every_kimg > 0 and self.metrics:
            if self.features == "attr":
                require(bool(self.classifier), f"eval.classifier: eval.metrics {self.metrics} with features: attr "
                        "need the attribute classifier's checkpoint (facegan classifier train ...)")
            elif self.features == "inception":
                require(bool(self.inception_weights), "eval.inception_weights: features: inception needs a local "
                        "Inception-v3 weights file")


class VAE(Family):
    name = "vae"
    model_options = VAEModelConfig
    optim_options = VAEOptim
    gan_options = VAEOptions
    train_options = VAETrainConfig
    eval_options = VAEEvalConfig
    generator = "G"
    ema = "G"
    discriminator = None
    metrics = VAE_METRICS
    curves = VAE_CURVES
    shape_keys = ("resolution", "z_dim", "base_channels", "batchnorm")
    smoke = {"model": {"resolution": 32, "z_dim": 8, "base_channels": 8}}

    def phases(self, cfg) -> list[Phase]:
        return [Phase("fit", opt="VAE")]

    def optimizers(self, cfg) -> dict[str, OptimizerSpec]:
        o = cfg.optim
        return {"VAE": OptimizerSpec(nets=("E", "G"), lr=o.lr, betas=(o.beta1, o.beta2))}

    def build_nets(self, cfg, data: DataInfo):
        from facegan.families.vae.nets import build_vae

        m = cfg.model
        return build_vae(resolution=m.resolution, z_dim=m.z_dim, base_channels=m.base_channels,
                         batchnorm=m.batchnorm)

    def build_steps(self, cfg, data: DataInfo):
        from facegan.families.vae.steps import VAESteps

        return VAESteps(cfg, data)


FAMILY = VAE()
