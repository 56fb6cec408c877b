"""VAE phase, sampling and the ELBO on the val split.

    fit(ctx):   mu, logvar = E(x); z = mu + exp(logvar / 2) * eps; loss = mean_b [BCE_b + beta * KL_b]
                with BCE_b summed over pixels between G's Bernoulli logits and x mapped to [0, 1], and
                KL_b = -1/2 sum_z (1 + logvar - mu^2 - exp(logvar)) (closed form against N(0, I))
    evaluate:   at eval.every_kimg and at the end, -(BCE + KL) per val image (one z per image, its
                eps seeded by train.seed and the sample's key), summed over all ranks' shares: the
                same value on any number of ranks
    tick_images: decoder samples on the fixed latents, and each real of a fixed batch beside its
                reconstruction G(mu(x))

The BCE against images in [0, 1] is the usual continuous-Bernoulli-free reading of the VAE on
natural images: the reported ELBO is in nats per image up to the targets' own entropy (a constant
of the data), so it is comparable between runs on the same shards, not with published likelihoods.

Tests: .venv/bin/python -m pytest tests/test_vae.py -q
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from facegan.families.base import DataInfo
from facegan.families.steps import StepContext, Steps
from facegan.runtime import distributed


def to_unit(img_BCHW: Tensor) -> Tensor:
    """Images in [-1, 1] -> [0, 1] (the BCE targets)."""
    return (img_BCHW.float() + 1) / 2


def reparameterize(mu_BZ: Tensor, logvar_BZ: Tensor, eps_BZ: Tensor) -> Tensor:
    """z = mu + sigma * eps, with sigma = exp(logvar / 2): differentiable in mu and logvar."""
    return mu_BZ + torch.exp(0.5 * logvar_BZ) * eps_BZ


def kl_divergence(mu_BZ: Tensor, logvar_BZ: Tensor) -> Tensor:
    """KL(N(mu, diag sigma^2) || N(0, I)) per sample, in closed form (B,)."""
    mu, logvar = mu_BZ.float(), logvar_BZ.float()
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)


def reconstruction_bce(logits_BCHW: Tensor, img_BCHW: Tensor) -> Tensor:
    """Binary cross-entropy summed over pixels and channels per sample (B,), between Bernoulli
    logits and the image in [-1, 1] mapped to [0, 1]."""
    bce = F.binary_cross_entropy_with_logits(logits_BCHW.float(), to_unit(img_BCHW), reduction="none")
    return bce.flatten(1).sum(dim=1)


def vae_terms(E: nn.Module, G: nn.Module, img_BCHW: Tensor, eps_BZ: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(BCE_B, KL_B, mu_BZ) of one pass: encode, reparameterize with `eps`, decode to logits."""
    mu_BZ, logvar_BZ = E(img_BCHW)
    logits = G(reparameterize(mu_BZ, logvar_BZ, eps_BZ.to(mu_BZ.dtype)), logits=True)
    return reconstruction_bce(logits, img_BCHW), kl_divergence(mu_BZ, logvar_BZ), mu_BZ


def vae_loss(E: nn.Module, G: nn.Module, img_BCHW: Tensor, eps_BZ: Tensor, *,
             beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """mean_b [BCE_b + beta * KL_b] and its parts (per image, in nats)."""
    bce_B, kl_B, mu_BZ = vae_terms(E, G, img_BCHW, eps_BZ)
    bce, kl = bce_B.mean(), kl_B.mean()
    loss = bce + beta * kl
    return loss, {"loss/vae": loss.detach(), "loss/bce": bce.detach(), "loss/kl": kl.detach()}


def key_normal(keys: list[str], dim: int, *, seed: int) -> Tensor:
    """One standard-normal row per sample, seeded by (seed, the sample's key): the same eps for a
    sample whichever rank, batch or order it comes in, so the ELBO does not depend on the split."""
    seeds = [(seed * 2**32 + zlib.crc32(k.encode())) % 2**63 for k in keys]
    rows = [torch.randn(dim, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(rows) if rows else torch.empty(0, dim)


def normal_like(n: int, dim: int, *, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randn(n, dim, generator=generator, device=gen_device).to(device)


class VAESteps(Steps):
    """The VAE's one phase; its scoring on the val split; sample and reconstruction grids."""
    grid_uses_real = True

    def __init__(self, cfg: Any, data: DataInfo | None = None) -> None:
        super().__init__(cfg, data or DataInfo())

    def fit(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        eps_BZ = normal_like(ctx.batch_size, self.latent_dim, generator=ctx.generator, device=ctx.device)
        return vae_loss(ctx.nets["E"], ctx.nets["G"], ctx.real, eps_BZ, beta=self.options.beta)

    def generate(self, G: nn.Module, latent: Tensor, attrs: Tensor | None = None) -> Tensor:
        return G(latent)

    @torch.no_grad()
    def encode(self, nets: dict[str, nn.Module], img_BCHW: Tensor) -> Tensor:
        """The posterior mean mu(x) of each image: a latent G maps back near it (GAN inversion's start)."""
        E = nets["E"]
        was_training = E.training
        E.eval()
        try:
            mu_BZ, _ = E(img_BCHW)
        finally:
            E.train(was_training)
        return mu_BZ

    @torch.no_grad()
    def reconstruct(self, E: nn.Module, G: nn.Module, img_BCHW: Tensor) -> Tensor:
        """G(mu(x)): the decoder's image of each input's posterior mean, in [-1, 1]."""
        mu_BZ, _ = E(img_BCHW)
        return G(mu_BZ)

    def tick_images(self, nets: dict[str, nn.Module], *, latent: Tensor, attrs: Tensor | None,
                    real: Tensor | None) -> dict[str, Tensor]:
        grids = {"samples": self.generate(nets["G"], latent)}
        if real is not None and len(real):
            E = nets["E"]
            was_training = E.training
            E.eval()  # running statistics: a grid must not move the training batch-norm state
            try:
                recon = self.reconstruct(E, nets["G"], real).to(real.dtype)
            finally:
                E.train(was_training)
            # Each real beside its reconstruction. The grid writer puts ceil(sqrt(n)) images in a
            # row; 2 r^2 pairs make a (2r)^2 grid of r whole pairs per row.
            r = max(1, math.isqrt(len(real) // 2))
            m = min(len(real), 2 * r * r)
            grids["recon"] = torch.stack([real[:m], recon[:m]], dim=1).reshape(-1, *real.shape[1:])
        return grids

    @torch.no_grad()
    def evaluate(self, nets: dict[str, nn.Module], *, final: bool, rank: int, world_size: int, out_dir: Any,
                 kimg: float, step: int = 0, images_seen: int = 0, checkpoint: Any = None,
                 autocast: Any = None) -> dict[str, float]:
        """The ELBO on the val split (at most eval.elbo_images images over all ranks), every rank
        its share, sums all-reduced: -(BCE + KL) per image and both parts."""
        from facegan.data.stream import ShardSet, eval_loader

        E, G = nets["E"], nets["G"]
        if distributed():
            # Between DDP's broadcasts batch-norm statistics are per rank: score rank 0's on all.
            for net in (E, G):
                for b in net.buffers():
                    dist.broadcast(b, src=0)
        shards = ShardSet.open(self.cfg.data.shards)
        ec = self.cfg.eval
        cap = ec.elbo_images // world_size + (1 if rank < ec.elbo_images % world_size else 0)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)   # BCE, KL, images
        states = [E.training, G.training]
        E.eval(), G.eval()
        try:
            if shards.count("val") and cap > 0:
                for batch in eval_loader(shards, split="val", batch_size=ec.batch_size, rank=rank,
                                         world_size=world_size):
                    img = batch["image"][: cap - int(sums[2])].to(self.device)
                    if not len(img):
                        break
                    eps = key_normal(batch["key"][: len(img)], self.latent_dim, seed=self.cfg.train.seed).to(self.device)
                    with autocast if autocast is not None else torch.autocast(self.device.type, enabled=False):
                        bce_B, kl_B, _ = vae_terms(E, G, img, eps)
                    sums += torch.stack([bce_B.double().sum(), kl_B.double().sum(),
                                         torch.tensor(float(len(img)), dtype=torch.float64, device=self.device)])
        finally:
            E.train(states[0]), G.train(states[1])
        if distributed():
            if dist.get_backend() == "nccl" and sums.device.type != "cuda":
                sums = sums.cuda()
            dist.all_reduce(sums)
        bce, kl, n = (float(v) for v in sums.cpu())
        if n == 0:
            return {}
        return {"eval/val/elbo": -(bce + kl) / n, "eval/val/bce": bce / n, "eval/val/kl": kl / n}
