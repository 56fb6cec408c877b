"""BEGAN's phases and its training state: k_t and the rate decay driven by the convergence measure.

    d(ctx):  latents for the step; L(x) and L(G(z)) of the autoencoder D (fakes detached; with
             augment: on, of the augmented images, ctx.augment: D reconstructs what it is shown);
             L_D = L(x) - k_t L(G(z)). Both losses are averaged over ranks here: k_t's update and M
             use those means, so every rank computes the same k_t. The fakes, with G's graph, go to
             ctx.carry for g.
    g(ctx):  L_G = L(G(z)) on the same fakes, through the updated D.
    after_step:  k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1); M into the current
             window; at a window's end the rate decay decides (lr_factors()).

The per-step scalars carry k_t (the value this step's L_D used) and M, so loss_curve.png plots them.

    steps = BEGANSteps(cfg)
    k_next = k_update(k, loss_real=lx, loss_fake=lg, gamma=0.5, lambda_k=0.001)

Tests: .venv/bin/python -m pytest tests/test_began.py -q
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from facegan.families.base import DataInfo
from facegan.families.steps import StepContext, Steps, mean_over_ranks

STATE_KEYS = ("k", "m_sum", "m_count", "window_start_kimg", "best_m", "last_improved_kimg", "lr_factor",
              "num_decays")
RECON_PAIRS = 8


def ae_loss(recon_BCHW: Tensor, target_BCHW: Tensor) -> Tensor:
    """BEGAN's L(v) = mean |v - D(v)| (pixel-wise L1, eta = 1), over pixels and batch, in fp32."""
    return (recon_BCHW.float() - target_BCHW.float()).abs().mean()


def k_update(k: Tensor, *, loss_real: Tensor, loss_fake: Tensor, gamma: float, lambda_k: float) -> Tensor:
    """k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1)."""
    return (k + lambda_k * (gamma * loss_real - loss_fake)).clamp(0.0, 1.0)


def convergence(*, loss_real: Tensor, loss_fake: Tensor, gamma: float) -> Tensor:
    """BEGAN's convergence measure M = L(x) + |gamma L(x) - L(G(z))|."""
    return loss_real + (gamma * loss_real - loss_fake).abs()


class BEGANSteps(Steps):
    """BEGAN's phases; `k` (a 0-dim tensor on the run's device) and the decay state are its state."""
    grid_uses_real = True

    def __init__(self, cfg, data: DataInfo | None = None):
        super().__init__(cfg, data or DataInfo())
        o = self.options
        self.k = torch.tensor(float(o.k_init))
        self._m_sum = torch.zeros(())
        self._m_count = 0
        self._window_start_kimg = 0.0
        self.best_m = math.inf
        self.last_improved_kimg = 0.0
        self.lr_factor = 1.0
        self.num_decays = 0
        self._step_losses: Tensor | None = None   # this step's rank-mean [L(x), L(G(z))], for after_step

    # --- latents: BEGAN draws z ~ U(-1, 1)
    def latent(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
        gen_device = generator.device if generator is not None else "cpu"
        z = torch.rand(n, self.latent_dim, generator=generator, device=gen_device) * 2 - 1
        return z.to(device) if device is not None else z

    # --- the phases
    def d(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        G, D = ctx.nets["G"], ctx.nets["D"]
        ctx.carry["latent"] = latent = self.latent(ctx.batch_size, generator=ctx.generator, device=ctx.device)
        ctx.carry["fake_BCHW"] = fake_BCHW = G(latent)
        # With augmentation D reconstructs the augmented images, and L compares with those.
        real, fake_d = ctx.augment(ctx.real), ctx.augment(fake_BCHW.detach())
        loss_real = ae_loss(D(real), real)
        loss_fake = ae_loss(D(fake_d), fake_d)
        k = self.k
        loss = loss_real - k * loss_fake
        # The control's inputs, the same on every rank (one small all-reduce per step).
        self._step_losses = mean_over_ranks(torch.stack([loss_real.detach(), loss_fake.detach()]))
        lx, lg = self._step_losses[0], self._step_losses[1]
        o = self.options
        return loss, {"loss/d": loss.detach(), "loss/d_real": loss_real.detach(), "loss/d_fake": loss_fake.detach(),
                      "began/k": k.clone(), "began/M": convergence(loss_real=lx, loss_fake=lg, gamma=o.gamma),
                      "began/balance": o.gamma * lx - lg}

    def g(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        fake_BCHW = ctx.carry.pop("fake_BCHW") if "fake_BCHW" in ctx.carry else ctx.nets["G"](ctx.carry["latent"])
        fake_BCHW = ctx.augment(fake_BCHW)
        loss = ae_loss(ctx.nets["D"](fake_BCHW), fake_BCHW)
        return loss, {"loss/g": loss.detach()}

    def after_step(self, ctx: StepContext) -> None:
        losses, self._step_losses = self._step_losses, None
        if losses is None:
            return
        o = self.options
        lx, lg = losses[0], losses[1]
        self.k = k_update(self.k, loss_real=lx, loss_fake=lg, gamma=o.gamma, lambda_k=o.lambda_k)
        if o.lr_patience_kimg <= 0:
            return
        self._m_sum = self._m_sum + convergence(loss_real=lx, loss_fake=lg, gamma=o.gamma)
        self._m_count += 1
        # Window ends depend on kimg only (the same on every rank); M's mean is read once per window.
        if ctx.kimg - self._window_start_kimg >= o.m_window_kimg:
            self._close_window(float(self._m_sum / self._m_count), kimg=ctx.kimg)

    def _close_window(self, mean_m: float, *, kimg: float) -> None:
        o = self.options
        if mean_m < self.best_m * (1.0 - o.m_min_delta):
            self.best_m, self.last_improved_kimg = mean_m, kimg
        elif kimg - self.last_improved_kimg >= o.lr_patience_kimg:
            factor = max(o.lr_min_factor, self.lr_factor * o.lr_decay)
            if factor < self.lr_factor:
                self.lr_factor, self.num_decays = factor, self.num_decays + 1
            self.last_improved_kimg = kimg   # the next decay needs another stall of lr_patience_kimg
        self._m_sum = torch.zeros_like(self._m_sum)
        self._m_count = 0
        self._window_start_kimg = kimg

    def lr_factors(self) -> dict[str, float]:
        return {"G": self.lr_factor, "D": self.lr_factor} if self.options.lr_patience_kimg > 0 else {}

    def tick_metrics(self, kimg: float) -> dict[str, float]:
        return {"began/lr_factor": self.lr_factor}

    # --- state
    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k.detach().clone(), "m_sum": self._m_sum.detach().clone(), "m_count": self._m_count,
                "window_start_kimg": self._window_start_kimg, "best_m": self.best_m,
                "last_improved_kimg": self.last_improved_kimg, "lr_factor": self.lr_factor,
                "num_decays": self.num_decays}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(STATE_KEYS):
            raise ValueError(f"{type(self).__name__}: expected state {sorted(STATE_KEYS)}, got {sorted(state)}")
        self.k = state["k"].detach().clone().float().to(self.device)
        self._m_sum = state["m_sum"].detach().clone().float().to(self.device)
        self._m_count = int(state["m_count"])
        self._window_start_kimg = float(state["window_start_kimg"])
        self.best_m = float(state["best_m"])
        self.last_improved_kimg = float(state["last_improved_kimg"])
        self.lr_factor = float(state["lr_factor"])
        self.num_decays = int(state["num_decays"])

    def to(self, device: torch.device | str) -> "BEGANSteps":
        super().to(device)
        self.k = self.k.to(self.device)
        self._m_sum = self._m_sum.to(self.device)
        return self

    # --- grids
    def tick_images(self, nets: dict[str, nn.Module], *, latent: Tensor, attrs: Tensor | None,
                    real: Tensor | None) -> dict[str, Tensor]:
        """Samples, and the autoencoder's reconstructions of fixed real images (pairs: x, D(x))."""
        grids = {"samples": nets["G"](latent)}
        if real is not None and "D" in nets:
            x = real[:RECON_PAIRS]
            grids["reconstruction"] = torch.stack([x, nets["D"](x).to(x.dtype)], dim=1).flatten(0, 1)
        return grids
