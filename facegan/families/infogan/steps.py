"""InfoGAN's phases: DCGAN's BCE game plus lambda x L_info in both phases (see the package docstring).

    d(ctx):  latents [z, c] for the step; D's BCE on the (noisy) real batch and on G(latent) detached,
             plus lambda L_info of Q on those fakes (trains D's trunk and Q); the fakes, with G's
             graph, and their latents go to ctx.carry for g
    g(ctx):  non-saturating G loss on the same fakes scored by the updated D, plus lambda L_info
             (G learns to make its codes recoverable; Q's gradients here are discarded by the loop)

Sampling (`latent`) gives the whole latent, so grids, evaluation, `facegan sample` and inversion all
draw codes too; `latent_from_codes` / `set_codes` build latents from chosen codes (`facegan edit`).

Tests: .venv/bin/python -m pytest tests/test_infogan.py -q
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from facegan.errors import CheckpointError
from facegan.families.base import DataInfo
from facegan.families.dcgan.steps import DCGANSteps
from facegan.families.infogan.codes import LatentLayout, info_loss
from facegan.families.steps import StepContext
from facegan.losses import bce_logits, d_accuracy, d_targets, instance_noise, r1_penalty


class LatentCodes:
    """Latents with InfoGAN's codes, for Steps classes with an `options` holding the info-loss weights
    (InfoGAN's, InfoBEGAN's): sampling, building latents from codes, L_info, traversal grids, meta.
    Set `self.layout` in __init__ and list this class before the Steps base."""

    layout: LatentLayout
    options: Any

    @property
    def latent_dim(self) -> int:
        return self.layout.dim

    def latent(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
        return self.layout.sample(n, generator=generator, device=device)

    def latent_from_codes(self, z_BZ: Tensor, *, cat: int | Tensor | None = None,
                          cont: Sequence[float] | Tensor | None = None) -> Tensor:
        """G's input for noise z and chosen codes (LatentLayout.from_codes)."""
        return self.layout.from_codes(z_BZ, cat=cat, cont=cont)

    def set_codes(self, latent_BL: Tensor, values: Mapping[str, float | int]) -> Tensor:
        """Latents with named codes changed: {"cat": 3, "c1": 0.8} (LatentLayout.set_codes)."""
        return self.layout.set_codes(latent_BL, values)

    def info(self, q_BQ: Tensor, latent_BL: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """L_info of Q's predictions for these latents, and the mi/* scalars."""
        o = self.options
        return info_loss(q_BQ, latent_BL, self.layout, cat_weight=o.cat_weight, cont_weight=o.cont_weight,
                         z_weight=o.noise_recovery)

    def traversal_images(self, G: nn.Module, latent: Tensor) -> dict[str, Tensor]:
        """The code traversal grids (InfoGAN Fig. 2: rows = categories, columns = one continuous code
        from -1 to 1, z fixed to the first grid latent's)."""
        return {name: G(lat) for name, lat in
                self.layout.traversals(latent[0, :self.layout.z_dim], base_BL=latent).items()}

    def meta(self) -> dict[str, Any]:
        return {"latent_layout": self.layout.describe(), "noise_recovery_head": self.options.noise_recovery > 0}

    def check_resume(self, meta: dict[str, Any], *, where: Any) -> None:
        super().check_resume(meta, where=where)  # type: ignore[misc]
        saved = bool(meta.get("noise_recovery_head", False))
        if saved != (self.options.noise_recovery > 0):
            raise CheckpointError(f"{where} was trained {'with' if saved else 'without'} the noise-recovery (z) "
                                  f"output; this run has gan.noise_recovery={self.options.noise_recovery:g} "
                                  f"(0 removes it, > 0 adds it: set it {'> 0' if saved else 'to 0'})")


class InfoGANSteps(LatentCodes, DCGANSteps):
    """InfoGAN's phases on DCGAN's tricks; `layout` describes G's input."""

    def __init__(self, cfg, data: DataInfo | None = None):
        super().__init__(cfg, data)
        m = cfg.model
        self.layout = LatentLayout(z_dim=m.z_dim, cat_dim=m.cat_dim, cont_dim=m.cont_dim)

    # --- the phases
    def d(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        opts, gen = self.options, ctx.generator
        G, D = ctx.nets["G"], ctx.nets["D"]
        ctx.carry["latent"] = latent_BL = self.latent(ctx.batch_size, generator=gen, device=ctx.device)
        ctx.carry["fake_BCHW"] = fake_BCHW = G(latent_BL)
        std = self.d_noise_std(ctx.kimg)
        # Reals and fakes go through D separately (batch norm statistics per kind, as DCGAN).
        r1 = opts.r1_weight(ctx.step)
        real_in = ctx.real.detach().requires_grad_(True) if r1 else ctx.real
        real_logits_B = D(instance_noise(real_in, std=std, generator=gen))
        fake_logits_B, q_BQ = D(instance_noise(fake_BCHW.detach(), std=std, generator=gen), with_q=True)
        real_target_B = d_targets(real_logits_B, real=True, smoothing=opts.label_smoothing, flip=opts.label_flip,
                                  generator=gen)
        fake_target_B = d_targets(fake_logits_B, real=False, smoothing=opts.label_smoothing, flip=opts.label_flip,
                                  generator=gen)
        loss_real = bce_logits(real_logits_B, real_target_B)
        loss_fake = bce_logits(fake_logits_B, fake_target_B)
        info, info_scalars = self.info(q_BQ, latent_BL)
        loss = loss_real + loss_fake + opts.info_weight * info
        extra = {}
        if r1:
            penalty = r1 * r1_penalty(real_logits_B, real_in).mean()
            loss, extra["loss/r1"] = loss + penalty, penalty.detach()
        real_logits_B, fake_logits_B = real_logits_B.detach(), fake_logits_B.detach()
        scalars = {
            "loss/d": (loss_real + loss_fake).detach(),
            "loss/d_real": loss_real.detach(),
            "loss/d_fake": loss_fake.detach(),
            "loss/info": info.detach(),
            "D(x)": torch.sigmoid(real_logits_B).mean(),
            "D(G(z))": torch.sigmoid(fake_logits_B).mean(),
            "acc/d_real": d_accuracy(real_logits_B, real=True),
            "acc/d_fake": d_accuracy(fake_logits_B, real=False),
            **info_scalars,   # Q on fresh fakes, before it trains on them
            **extra,
        }
        return loss, scalars

    def g(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        D = ctx.nets["D"]
        latent_BL = ctx.carry["latent"]
        fake_BCHW = ctx.carry.pop("fake_BCHW") if "fake_BCHW" in ctx.carry else ctx.nets["G"](latent_BL)
        fake_logits_B, q_BQ = D(instance_noise(fake_BCHW, std=self.d_noise_std(ctx.kimg), generator=ctx.generator),
                                with_q=True)
        adv = bce_logits(fake_logits_B, 1.0)
        info, _ = self.info(q_BQ, latent_BL)
        loss = adv + self.options.info_weight * info
        return loss, {"loss/g": adv.detach(), "loss/g_info": info.detach(),
                      "D(G(z))_g": torch.sigmoid(fake_logits_B.detach()).mean()}

    # --- grids
    def tick_images(self, nets: dict[str, nn.Module], *, latent: Tensor, attrs: Tensor | None,
                    real: Tensor | None) -> dict[str, Tensor]:
        """The fixed-latent samples and the code traversal grids."""
        return {"samples": nets["G"](latent), **self.traversal_images(nets["G"], latent)}
