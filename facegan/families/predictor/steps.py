"""The predictor's phase, `p`: latent loss, then image loss through the frozen generator (see the
package docstring), plus its grids and a final held-out evaluation.

    steps = PredictorSteps(cfg, data)            # loads the GAN (gan.generator) for its sampling
    loss, scalars = steps.p(ctx)                 # ctx.nets: {"P": P (DDP-wrapped), "G": frozen G}

Tests: .venv/bin/python -m pytest tests/test_predictor.py -q
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.image import (multiscale_structural_similarity_index_measure,
                                           structural_similarity_index_measure)

from facegan.errors import CheckpointError
from facegan.families.base import DataInfo
from facegan.families.predictor import resolve_arch
from facegan.families.steps import StepContext, Steps, mean_over_ranks

# MS-SSIM's standard scales (Wang et al. 2003), finest first, and its 11x11 window (sigma 1.5).
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
KERNEL_SIZE, SIGMA = 11, 1.5
PAIRS = 8                  # image/reconstruction pairs per grid
EVAL_SAMPLES = 256         # held-out latents (over all ranks) scored at the end


def ssim_settings(side: int) -> tuple[int, float, tuple[float, ...]]:
    """(kernel, sigma, betas) for (MS-)SSIM on side x side images: the standard window, and as many of
    the standard scales as fit (64 px: 3, 32 px: 2, 16 px: 1), renormalised. The same rule as
    facegan.metrics.diversity.ms_ssim_settings (families may not import metrics; a test compares them)."""
    kernel = min(KERNEL_SIZE, side if side % 2 else side - 1)
    sigma = SIGMA * kernel / KERNEL_SIZE
    for scales in range(len(MS_SSIM_BETAS), 0, -1):
        if side // 2 ** (scales - 1) >= kernel and side // max(1, scales - 1) ** 2 > kernel - 1 and side >= 2 ** scales:
            betas = MS_SSIM_BETAS[:scales]
            return kernel, sigma, tuple(b / sum(betas) for b in betas)
    raise ValueError(f"no (MS-)SSIM window fits {side}x{side} images")


def image_loss(recon_BCHW: Tensor, target_BCHW: Tensor, *, kind: str) -> Tensor:
    """mse, 1 - SSIM or 1 - MS-SSIM (data range 2: images in [-1, 1]), differentiable in `recon`."""
    recon, target = recon_BCHW.float(), target_BCHW.float()
    if kind == "mse":
        return F.mse_loss(recon, target)
    kernel, sigma, betas = ssim_settings(min(recon.shape[-2:]))
    if kind == "ssim" or len(betas) == 1:
        return 1.0 - structural_similarity_index_measure(recon, target, gaussian_kernel=True, sigma=sigma,
                                                         kernel_size=kernel, data_range=2.0)
    if kind == "ms_ssim":
        # relu: negative contrast-structure terms (early, unrelated images) would give NaN powers.
        return 1.0 - multiscale_structural_similarity_index_measure(
            recon, target, gaussian_kernel=True, sigma=sigma, kernel_size=kernel, data_range=2.0, betas=betas,
            normalize="relu")
    raise ValueError(f"image loss must be mse, ssim or ms_ssim, got {kind!r}")


def interleave(a_BCHW: Tensor, b_BCHW: Tensor) -> Tensor:
    """a0, b0, a1, b1, ... (image / reconstruction pairs side by side in a grid)."""
    return torch.stack([a_BCHW, b_BCHW.to(a_BCHW.dtype)], dim=1).flatten(0, 1)


class PredictorSteps(Steps):
    """P's phase against the frozen GAN; sampling (latent, generate) is the GAN's own."""
    grid_uses_real = True

    def __init__(self, cfg, data: DataInfo | None = None, *, gan: Any = None):
        super().__init__(cfg, data or DataInfo())
        if gan is None:
            from facegan.families.predictor.load import load_gan

            gan = load_gan(cfg.gan.generator, resolution=cfg.model.resolution, shards=cfg.data.shards)
        self.gan = gan
        self.gan_steps = gan.steps
        self.layout = getattr(self.gan_steps, "layout", None)   # the GAN's code layout, if it has codes
        self.arch = resolve_arch(cfg.model.arch, gan.family.name)

    # --- sampling is the GAN's
    @property
    def latent_dim(self) -> int:
        return self.gan_steps.latent_dim

    def latent(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
        return self.gan_steps.latent(n, generator=generator, device=device)

    def generate(self, G: nn.Module, latent: Tensor, attrs: Tensor | None = None) -> Tensor:
        return self.gan_steps.generate(G, latent)

    # --- the phase
    def p(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        o = self.options
        G, P = ctx.nets["G"], ctx.nets["P"]
        G.eval()  # frozen: batch norm uses the GAN's running statistics (the loop sets nets to train mode)
        latent_BL = self.latent(ctx.batch_size, generator=ctx.generator, device=ctx.device)
        with torch.no_grad():
            fake_BCHW = self.generate(G, latent_BL)
        image_stage = ctx.kimg >= o.switch_kimg
        if not image_stage or o.image_source == "generated":
            target_BCHW = fake_BCHW
        elif o.image_source == "real":
            target_BCHW = ctx.real
        else:
            target_BCHW = torch.cat([fake_BCHW, ctx.real.to(fake_BCHW.dtype)])
        # One forward of P per step (DDP): the generated images' predictions come first.
        pred_BL = P(target_BCHW if image_stage else fake_BCHW)
        scalars: dict[str, Tensor] = {}
        loss_latent = None
        if not image_stage or o.image_source != "real":
            pred_fake_BL = pred_BL[:latent_BL.shape[0]]
            loss_latent = F.mse_loss(pred_fake_BL.float(), latent_BL.float())
            scalars.update(self._latent_scalars(pred_fake_BL.detach(), latent_BL), **{"loss/latent": loss_latent.detach()})
        if image_stage:
            loss_image = image_loss(self.generate(G, pred_BL), target_BCHW, kind=o.image_loss)
            loss = loss_image if loss_latent is None or o.latent_weight == 0 else \
                loss_image + o.latent_weight * loss_latent
            scalars["loss/image"] = loss_image.detach()
        else:
            assert loss_latent is not None
            loss = loss_latent
        scalars["loss/p"] = loss.detach()
        return loss, scalars

    def _latent_scalars(self, pred_BL: Tensor, latent_BL: Tensor) -> dict[str, Tensor]:
        """How well P recovers the codes of generated images (GANs with codes)."""
        lay = self.layout
        if lay is None:
            return {}
        out: dict[str, Tensor] = {}
        if lay.cat_dim:
            out["pred/cat_acc"] = (pred_BL[:, lay.cat_slice].argmax(1) == latent_BL[:, lay.cat_slice].argmax(1)).float().mean()
        if lay.cont_dim:
            out["pred/cont_mse"] = F.mse_loss(pred_BL[:, lay.cont_slice].float(), latent_BL[:, lay.cont_slice].float())
        return out

    # --- grids and the final evaluation
    def tick_images(self, nets: dict[str, nn.Module], *, latent: Tensor, attrs: Tensor | None,
                    real: Tensor | None) -> dict[str, Tensor]:
        """The GAN's samples; pairs (x, G(P(x))) for generated and for real images."""
        G, P = nets["G"], nets["P"]
        was_training = P.training
        P.eval()  # batch norm: no running-statistics update from grid images
        try:
            samples = self.generate(G, latent)
            x = samples[:PAIRS]
            grids = {"samples": samples, "recon_fake": interleave(x, self.generate(G, P(x)))}
            if real is not None:
                x = real[:PAIRS].to(samples.dtype)
                grids["recon_real"] = interleave(x, self.generate(G, P(x)))
        finally:
            P.train(was_training)
        return grids

    def evaluate(self, nets: dict[str, nn.Module], *, final: bool, rank: int, world_size: int, out_dir: Any,
                 kimg: float, step: int = 0, images_seen: int = 0, checkpoint: Any = None,
                 autocast: Any = None) -> dict[str, float]:
        """At the end: latent and image MSE (and code accuracy) on fresh held-out latents, seeded per
        rank and averaged over ranks, in eval mode."""
        if not final:
            return {}
        G, P = nets["G"], nets["P"]
        device = next(P.parameters()).device
        was_training = P.training
        P.eval()
        try:
            gen = torch.Generator().manual_seed(10_007 + rank)
            n = max(1, EVAL_SAMPLES // world_size)
            latent_BL = self.latent(n, generator=gen, device=device)
            fake_BCHW = self.generate(G, latent_BL)
            pred_BL = P(fake_BCHW)
            values = {"eval/latent_mse": F.mse_loss(pred_BL.float(), latent_BL.float()),
                      "eval/image_mse": F.mse_loss(self.generate(G, pred_BL).float(), fake_BCHW.float())}
            values.update({k.replace("pred/", "eval/"): v for k, v in self._latent_scalars(pred_BL, latent_BL).items()
                           if k == "pred/cat_acc"})
        finally:
            P.train(was_training)
        names = sorted(values)
        means = mean_over_ranks(torch.stack([values[k].float() for k in names]))
        return dict(zip(names, means.cpu().tolist()))

    # --- meta
    def meta(self) -> dict[str, Any]:
        """What the predictor belongs to: load_predictor rebuilds P from this alone."""
        from facegan.config import to_dict

        return {"predictor": {"gan_checkpoint": str(self.gan.checkpoint), "gan_family": self.gan.family.name,
                              "gan_kimg": self.gan.kimg, "gan_config": to_dict(self.gan.cfg),
                              "latent_dim": self.latent_dim, "arch": self.arch,
                              "latent_layout": self.layout.describe() if self.layout is not None else None}}

    def check_resume(self, meta: dict[str, Any], *, where: Any) -> None:
        saved = (meta.get("predictor") or {}).get("gan_checkpoint")
        if saved is not None and saved != str(self.gan.checkpoint):
            raise CheckpointError(f"{where} predicts latents of {saved}; this run's gan.generator is "
                                  f"{self.gan.checkpoint}")
