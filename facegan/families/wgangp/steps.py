"""WGAN-GP phases: `critic` (run n_critic times per step, each on a fresh real batch) and `g`.

    critic(ctx): fakes G(z) without G's graph; eps ~ U(0, 1) per sample from the rank's generator;
                 critic_loss on (real, fake, eps): E[D(fake)] - E[D(real)] + lambda * E[(||grad||-1)^2]
    g(ctx):      -E[D(G(z))] on fresh z

`critic_loss` and `gradient_penalty` are pure functions of a critic and tensors (eps included), so
tests can call them through a DDP-wrapped critic and compare with one process on the whole batch.

Why the penalty works under DDP: its inner gradient is `torch.autograd.grad(..., create_graph=True)`
with respect to the interpolated *inputs*, which runs no parameter's gradient accumulator, so
DDP's reducer sees nothing until the loop's one ordinary backward of loss + penalty, where every
critic parameter gets its gradient once and DDP averages it over ranks. A per-rank mean of
per-sample terms averaged over equal-sized ranks is the mean over the whole global batch, so the
update equals one process's on the concatenated batches (tests/test_wgangp.py checks it).

Tests: .venv/bin/python -m pytest tests/test_wgangp.py -q
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facegan.families.base import DataInfo
from facegan.families.steps import StepContext, Steps


def uniform_eps(n: int, *, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """n interpolation weights ~ U(0, 1), drawn on the generator's device (the same numbers for a CPU
    generator whatever the nets' device), then moved."""
    gen_device = generator.device if generator is not None else "cpu"
    return torch.rand(n, generator=generator, device=gen_device).to(device)


def interpolates(real_BCHW: Tensor, fake_BCHW: Tensor, eps_B: Tensor) -> Tensor:
    """x_hat = eps * real + (1 - eps) * fake, per sample; a leaf that requires grad."""
    if real_BCHW.shape != fake_BCHW.shape or eps_B.shape != real_BCHW.shape[:1]:
        raise ValueError(f"real {tuple(real_BCHW.shape)}, fake {tuple(fake_BCHW.shape)} and eps "
                         f"{tuple(eps_B.shape)} must be (B, C, H, W), (B, C, H, W) and (B,)")
    eps = eps_B.to(real_BCHW.dtype).view(-1, *([1] * (real_BCHW.ndim - 1)))
    return (eps * real_BCHW.detach() + (1 - eps) * fake_BCHW.detach()).requires_grad_(True)


def penalty_terms(scores_B: Tensor, x_hat_BCHW: Tensor) -> tuple[Tensor, Tensor]:
    """((||grad_x D(x_hat_i)||_2 - 1)^2 per sample, the norms), with the graph kept for the backward.

    D has no batch norm, so the gradient of sum_i D(x_hat_i) with respect to x_hat_i is sample i's
    own gradient. The norm is over each flattened gradient, in float32 (bf16 autocast)."""
    (grad,) = torch.autograd.grad(scores_B.sum(), x_hat_BCHW, create_graph=True)
    # +tiny under the root: the norm's gradient is finite where a gradient is exactly zero.
    norm_B = (grad.float().flatten(1).square().sum(1) + 1e-12).sqrt()
    return (norm_B - 1).square(), norm_B


def gradient_penalty(D: nn.Module, x_hat_BCHW: Tensor, *, lambda_gp: float) -> tuple[Tensor, Tensor]:
    """(lambda * mean_i (||grad D(x_hat_i)||_2 - 1)^2, the norms_B) for interpolates from `interpolates`."""
    terms_B, norm_B = penalty_terms(D(x_hat_BCHW), x_hat_BCHW)
    return lambda_gp * terms_B.mean(), norm_B


def critic_loss(D: nn.Module, real_BCHW: Tensor, fake_BCHW: Tensor, eps_B: Tensor, *,
                lambda_gp: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The critic's loss E[D(fake)] - E[D(real)] + lambda * E[(||grad D(x_hat)||_2 - 1)^2] and its scalars.

    Reals, fakes and interpolates go through D in one forward (D is per-sample, so this equals
    three forwards; under DDP it is one forward for the one backward the loop runs)."""
    b = real_BCHW.shape[0]
    x_hat = interpolates(real_BCHW, fake_BCHW, eps_B)
    scores = D(torch.cat([real_BCHW, fake_BCHW.detach(), x_hat]))
    real_s, fake_s, hat_s = scores[:b].float(), scores[b:2 * b].float(), scores[2 * b:]
    terms_B, norm_B = penalty_terms(hat_s, x_hat)
    gp = lambda_gp * terms_B.mean()
    wasserstein = real_s.mean() - fake_s.mean()
    loss = -wasserstein + gp
    scalars = {"loss/d": loss.detach(), "loss/gp": gp.detach(), "wasserstein": wasserstein.detach(),
               "D(x)": real_s.mean().detach(), "D(G(z))": fake_s.mean().detach(), "grad_norm": norm_B.mean().detach()}
    return loss, scalars


def generator_loss(D: nn.Module, fake_BCHW: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """G's loss -E[D(G(z))]."""
    loss = -D(fake_BCHW).float().mean()
    return loss, {"loss/g": loss.detach()}


class WGANGPSteps(Steps):
    """The critic and G phases; no training state beyond the nets and optimizers."""

    def __init__(self, cfg, data: DataInfo | None = None):
        super().__init__(cfg, data or DataInfo())

    def critic(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        z_BZ = self.latent(ctx.batch_size, generator=ctx.generator, device=ctx.device)
        # No graph through G: under DDP a forward with grad would wait for a backward that never comes.
        with torch.no_grad():
            fake_BCHW = ctx.nets["G"](z_BZ)
        eps_B = uniform_eps(ctx.batch_size, generator=ctx.generator, device=ctx.device)
        return critic_loss(ctx.nets["D"], ctx.real, fake_BCHW, eps_B, lambda_gp=self.options.lambda_gp)

    def g(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        z_BZ = self.latent(ctx.batch_size, generator=ctx.generator, device=ctx.device)
        return generator_loss(ctx.nets["D"], ctx.nets["G"](z_BZ))
