"""WGAN-GP (Gulrajani et al. 2017): a Wasserstein critic kept 1-Lipschitz by a gradient penalty.

    facegan train configs/wgangp_celeba64.yaml               # the paper's Adam 1e-4, betas (0, 0.9)
    facegan train configs/wgangp_celeba64_report.yaml        # the CelebA report's lr 2e-3, 30 epochs

Phases per step: `critic` n_critic times (5), each on a fresh real batch, then `g` once on fresh z
(steps.py). The critic's loss is E[D(G(z))] - E[D(x)] + lambda * E[(||grad D(x_hat)||_2 - 1)^2] on
per-sample interpolates x_hat = eps*x + (1-eps)*G(z); G minimises -E[D(G(z))]. G is DCGAN's
generator; the critic is DCGAN's discriminator without batch norm (layer norm or none) and
without the sigmoid (nets.py). Under DDP the penalty's inner gradient is taken with respect to the
interpolates only, then the loop runs one ordinary backward: DDP averages the penalty's gradients
like any other (docs/families.md).

Images seen count every critic batch: with n_critic = 5 a step draws 5 real batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from facegan.config import require
from facegan.families.base import (DataInfo, Family, GanModelConfig, OptimizerSpec, Phase, TwoTimescaleOptim,
                                   finite_number, int_in_range)

D_NORMS = ("layer", "none")
# Both nets together; beyond this a config is refused before anything is allocated (about 600 MB
# of fp32 weights, 1.8 GB with Adam's moments).
MAX_PARAMS = 150_000_000
MAX_N_CRITIC = 100

WGANGP_METRICS = ("loss/d", "loss/gp", "loss/g", "wasserstein", "D(x)", "D(G(z))", "grad_norm")
WGANGP_CURVES = (("loss/d", "loss/g"), ("wasserstein",), ("loss/gp", "grad_norm"))


def dcgan_num_params(*, resolution: int, z_dim: int, base_channels: int, channels: int = 3) -> int:
    """Weights of DCGAN's generator plus discriminator at these sizes (biases and norms left out:
    they are a rounding error), computed without building them."""
    octaves = resolution.bit_length() - 3
    widths = [base_channels * 2 ** i for i in range(octaves)]
    convs = channels * widths[0] + sum(a * b for a, b in zip(widths, widths[1:])) + widths[-1]   # D, 4x4 kernels
    convs += z_dim * widths[-1] + sum(a * b for a, b in zip(widths, widths[1:])) + widths[0] * channels  # G
    return 16 * convs


@dataclass(kw_only=True)
class WGANGPModelConfig(GanModelConfig):
    """`model:` of the wgangp family: DCGAN's sizes; the critic has layer norm or no normalisation."""

    family: str = "wgangp"
    d_batchnorm: bool = False
    d_norm: Literal["layer", "none"] = "layer"   # layer: per-sample norm over (C, H, W) after each hidden conv

    def __post_init__(self) -> None:
        super().__post_init__()
        # Batch norm makes each sample's critic score depend on the rest of the batch, so the
        # gradient of D(x_hat_i) with respect to x_hat_i is no longer that sample's own gradient
        # and the per-sample penalty constrains the wrong function (Gulrajani et al., section 4).
        require(not self.d_batchnorm,
                "model.d_batchnorm: the wgangp critic cannot use batch norm: it couples the samples of a batch, "
                "and the gradient penalty is a per-sample constraint on ||grad D(x_hat_i)||; use model.d_norm: "
                "layer (the paper's choice) or none")
        require(self.d_norm in D_NORMS, f"model.d_norm: expected one of {list(D_NORMS)}, got {self.d_norm!r}")
        n = dcgan_num_params(resolution=self.size[0], z_dim=self.z_dim, base_channels=self.base_channels)
        require(n <= MAX_PARAMS, f"model.base_channels: {self.base_channels} at resolution {self.resolution} gives "
                                 f"about {n / 1e6:.0f}M parameters; at most {MAX_PARAMS / 1e6:.0f}M are allowed "
                                 "(lower model.base_channels)")


@dataclass(kw_only=True)
class WGANGPOptim(TwoTimescaleOptim):
    """`optim:` of the wgangp family: the paper's Adam(1e-4, betas (0, 0.9)) for G and the critic."""

    g_lr: float = 1e-4
    d_lr: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.9


@dataclass(kw_only=True)
class WGANGPOptions:
    """`gan:` of the wgangp family."""

    lambda_gp: float = 10.0   # weight of the gradient penalty, >= 0 (0: an unconstrained critic)
    n_critic: int = 5         # critic steps (each on a fresh real batch) per G step, 1..100

    def __post_init__(self) -> None:
        self.lambda_gp = finite_number("gan.lambda_gp", self.lambda_gp)
        require(0 <= self.lambda_gp <= 1e4, f"gan.lambda_gp: expected 0..10000, got {self.lambda_gp}")
        int_in_range("gan.n_critic", self.n_critic, 1, MAX_N_CRITIC)


class WGANGP(Family):
    name = "wgangp"
    model_options = WGANGPModelConfig
    optim_options = WGANGPOptim
    gan_options = WGANGPOptions
    # The critic's scores are not logits (no threshold at 0 means "real"): no d_accuracy.
    discriminator = None
    metrics = WGANGP_METRICS
    curves = WGANGP_CURVES
    shape_keys = Family.shape_keys + ("d_norm",)
    # Reals, fakes and the interpolates all reach the critic through the pipe (the penalty is on
    # the gradient of D(pipe(x_hat)) with respect to x_hat).
    augment_kinds = ("none", "diffaugment")
    augment_note = "its critic's scores are not logits, so ADA's heuristic E[sign D(x_real)] means nothing"
    # One critic step per G step keeps the registry-wide test at its 3 steps of 16 images; the
    # family's own tests run n_critic > 1 (tests/test_wgangp.py).
    smoke = {"model": {"resolution": 32, "z_dim": 16, "base_channels": 8}, "gan": {"n_critic": 1}}

    def phases(self, cfg) -> list[Phase]:
        return [Phase("critic", opt="D", repeat=cfg.gan.n_critic), Phase("g", opt="G", uses_data=False)]

    def optimizers(self, cfg) -> dict[str, OptimizerSpec]:
        return {"G": cfg.optim.spec("G", "g_lr"), "D": cfg.optim.spec("D", "d_lr")}

    def validate(self, cfg) -> None:
        # GradScaler scales only the loss the loop backpropagates; the penalty's inner gradient is
        # taken inside the phase, unscaled, where fp16 underflows.
        require(cfg.train.precision != "fp16",
                "train.precision: fp16 is not supported by wgangp (the gradient penalty's inner gradient is taken "
                "outside the loss scaler); use bf16, fp32 or auto")

    def build_nets(self, cfg, data: DataInfo):
        from facegan.families.wgangp.nets import build_wgangp

        m = cfg.model
        return build_wgangp(resolution=m.resolution, z_dim=m.z_dim, base_channels=m.base_channels,
                            g_batchnorm=m.g_batchnorm, d_norm=m.d_norm, d_dropout=m.d_dropout)

    def build_steps(self, cfg, data: DataInfo):
        from facegan.families.wgangp.steps import WGANGPSteps

        return WGANGPSteps(cfg, data)


FAMILY = WGANGP()
