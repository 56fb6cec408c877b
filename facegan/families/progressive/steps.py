"""The progressive family's phases, growth schedule, adaptive noise and training video.

Two phases per step (facegan.families.progressive.Progressive.phases):

    d(ctx):  fade alpha for this kimg into G and D; z on the sphere; fakes at the current level;
             the real batch average-pooled to that size (and blended with its 2x coarser version
             during a fade, as G's output is); noise of std eps on both; BCE. The fakes (with G's
             graph) go to ctx.carry for g; D's mean ratings of reals and fakes are kept for after_step.
    g(ctx):  the same fakes, no noise, non-saturating BCE plus the diversity gradient.
    after_step: eps += noise_speed * (gap - noise_target) * kimg of this step, clipped to
             [0, noise_max], from the gap all-reduced over ranks (every rank holds the same eps).

The schedule (stage, alpha) is a function of images seen, so every rank and every resume agrees:

    stage 0            level 1 (base*2) for stable_kimg
    stage 2m - 1       level m + 1 fading in over fade_kimg (alpha 0 -> 1)
    stage 2m           level m + 1 stable for stable_kimg (the last stage lasts until the end)

Tests: .venv/bin/python -m pytest tests/test_progressive.py -q
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facegan.augpipe import unwrap
from facegan.families.base import DataInfo
from facegan.families.progressive.diversity import diversity_push, diversity_term
from facegan.families.progressive.nets import in_use
from facegan.families.progressive.video import frame_path, save_frame, sorted_frames, write_video
from facegan.families.steps import StepContext, Steps, mean_over_ranks
from facegan.runtime import distributed
from facegan.losses import bce_logits, d_accuracy, r1_penalty

VIDEO_SEED = 2**31 - 1   # + train.seed: the video's latents, apart from the training and grid streams
VIDEO_NAME = "video.mp4"
FRAMES_DIR = "video"


def _bare(net: nn.Module) -> nn.Module:
    return unwrap(net)   # DDP and the augmentation pipe's wrapper


class ProgressiveSteps(Steps):
    def __init__(self, cfg, data: DataInfo | None = None) -> None:
        super().__init__(cfg, data or DataInfo())
        m = cfg.model
        self.num_levels = m.num_levels
        self.eps = torch.tensor(float(self.options.noise_init))
        self._gap: Tensor | None = None
        self._video_latent: Tensor | None = None

    # --- sampling
    def latent(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
        """z on the hollow sphere of radius sqrt(z_dim) (gan.latent: sphere), else N(0, I)."""
        z = super().latent(n, generator=generator, device=device)
        if self.options.latent == "sphere":
            z = z * (math.sqrt(self.latent_dim) / z.norm(dim=1, keepdim=True).clamp_min(1e-12))
        return z

    def generate(self, G: nn.Module, latent: Tensor, attrs: Tensor | None = None) -> Tensor:
        """Images at full size: a lower level's output is upsampled (nearest) from its own size."""
        img = G(latent)
        factor = self.cfg.model.resolution // img.shape[-1]
        return F.interpolate(img, scale_factor=factor, mode="nearest") if factor > 1 else img

    # --- growth schedule
    def _schedule(self, kimg: float) -> tuple[int, float]:
        """(stage, alpha) after `kimg` thousand images, in whole images (no float drift at the edges)."""
        o = self.options
        seen = int(round(kimg * 1000))
        stable, fade = int(round(o.stable_kimg * 1000)), int(round(o.fade_kimg * 1000))
        last = 2 * (self.num_levels - 1)
        if seen < stable or last == 0:
            return 0, 1.0
        m, within = divmod(seen - stable, fade + stable)
        if m >= self.num_levels - 1:
            return last, 1.0
        if within < fade:
            return 2 * m + 1, within / fade
        return 2 * m + 2, 1.0

    def stage(self, kimg: float) -> int:
        return self._schedule(kimg)[0]

    def alpha(self, kimg: float) -> float:
        return self._schedule(kimg)[1]

    @staticmethod
    def level_of(stage: int) -> tuple[int, bool]:
        """(level, fading) of a stage."""
        return (stage + 1) // 2 + 1, stage % 2 == 1

    def size_of(self, stage: int) -> int:
        return self.cfg.model.base_size * 2 ** self.level_of(stage)[0]

    def enter_stage(self, nets: dict[str, nn.Module], stage: int) -> None:
        """Freeze everything, then thaw the modules this stage's forwards use (DDP then registers
        exactly those), and put the stage into the nets' buffers."""
        level, fading = self.level_of(stage)
        for name in ("G", "D"):
            net = _bare(nets[name])
            net.requires_grad_(False)
            for module in in_use(net, level=level, fading=fading):
                module.requires_grad_(True)
            net.set_stage(level=level, alpha=0.0 if fading else 1.0)

    def _set_alpha(self, ctx: StepContext) -> float:
        alpha = self.alpha(ctx.kimg)
        for name in ("G", "D"):
            _bare(ctx.nets[name]).alpha.fill_(alpha)
        return alpha

    def real_at(self, real_BCHW: Tensor, *, level: int, alpha: float) -> Tensor:
        """Reals as D sees them at `level`: average-pooled to its size; during a fade blended with the
        2x coarser version, upsampled (nearest), as G blends its two levels' images."""
        size = self.cfg.model.base_size * 2 ** level
        factor = real_BCHW.shape[-1] // size
        x = F.avg_pool2d(real_BCHW, factor) if factor > 1 else real_BCHW
        if alpha < 1.0:
            x = torch.lerp(F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest"), x, alpha)
        return x

    # --- phases
    def d(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        alpha = self._set_alpha(ctx)
        G, D = ctx.nets["G"], ctx.nets["D"]
        z_BZ = self.latent(ctx.batch_size, generator=ctx.generator, device=ctx.device)
        ctx.carry["fake"] = fake_BCHW = G(z_BZ)
        level = int(_bare(G).level)
        real_BCHW = self.real_at(ctx.real, level=level, alpha=alpha)
        r1 = self.options.r1_weight(ctx.step)
        if r1:
            real_BCHW = real_BCHW.detach().requires_grad_(True)
        x = torch.cat([real_BCHW, fake_BCHW.detach()])
        # Noise on both, drawn even at eps = 0 so the random stream does not depend on eps.
        gen_device = ctx.generator.device
        noise = torch.randn(x.shape, generator=ctx.generator, device=gen_device, dtype=x.dtype).to(x.device)
        logits = D(x + self.eps.to(x.device, x.dtype) * noise)
        n = real_BCHW.shape[0]
        real_logits_B, fake_logits_B = logits[:n], logits[n:]
        loss_real, loss_fake = bce_logits(real_logits_B, 1.0), bce_logits(fake_logits_B, 0.0)
        loss = loss_real + loss_fake
        extra = {}
        if r1:
            penalty = r1 * r1_penalty(real_logits_B, real_BCHW).mean()
            loss, extra["loss/r1"] = loss + penalty, penalty.detach()
        rating_real = torch.sigmoid(real_logits_B.detach()).mean()
        rating_fake = torch.sigmoid(fake_logits_B.detach()).mean()
        self._gap = rating_real - rating_fake
        scalars = {
            "loss/d": loss.detach(), "D(x)": rating_real, "D(G(z))": rating_fake,
            "acc/d_real": d_accuracy(real_logits_B.detach(), real=True),
            "acc/d_fake": d_accuracy(fake_logits_B.detach(), real=False),
            "noise/eps": self.eps.detach().clone(), "noise/gap": self._gap,
            "progressive/alpha": torch.tensor(alpha), "progressive/resolution": torch.tensor(float(real_BCHW.shape[-1])),
            **extra,
        }
        return loss, scalars

    def g(self, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        fake_BCHW = ctx.carry.pop("fake")
        logits_B = ctx.nets["D"](fake_BCHW)
        adversarial = bce_logits(logits_B, 1.0)
        push, pair_dist = diversity_push(fake_BCHW)
        loss = adversarial
        if self.options.diversity and self.options.diversity_weight > 0:
            loss = loss + diversity_term(fake_BCHW, weight=self.options.diversity_weight, push=push)
        scalars = {"loss/g": adversarial.detach(), "D(G(z))_g": torch.sigmoid(logits_B.detach()).mean(),
                   "div/pair_dist": pair_dist}
        return loss, scalars

    def after_step(self, ctx: StepContext) -> None:
        o = self.options
        if not o.adaptive_noise or self._gap is None:
            return
        gap = mean_over_ranks(self._gap.reshape(1).float())[0].to(self.eps.device)
        world = torch.distributed.get_world_size() if distributed() else 1
        step_kimg = ctx.batch_size * world / 1000
        self.eps = (self.eps + o.noise_speed * (gap - o.noise_target) * step_kimg).clamp(0.0, o.noise_max).detach()
        self._gap = None

    def tick_metrics(self, kimg: float) -> dict[str, float]:
        stage, alpha = self._schedule(kimg)
        return {"noise/eps": float(self.eps), "progressive/alpha": alpha,
                "progressive/resolution": float(self.size_of(stage)), "progressive/stage": float(stage)}

    # --- state
    def state_dict(self) -> dict[str, Any]:
        return {"eps": self.eps.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = sorted(set(state) - {"eps"})
        if unknown:
            raise ValueError(f"progressive state: unknown keys {unknown}")
        if "eps" in state:
            self.eps = torch.as_tensor(state["eps"], dtype=torch.float32).to(self.device)

    def to(self, device: torch.device | str) -> "ProgressiveSteps":
        super().to(device)
        self.eps = self.eps.to(self.device)
        return self

    # --- the training video (rank 0)
    def video_latent(self) -> Tensor:
        """The video's fixed latents: their own seeded stream, never drawn for training."""
        if self._video_latent is None:
            gen = torch.Generator().manual_seed(VIDEO_SEED + int(self.cfg.train.seed))
            self._video_latent = self.latent(self.cfg.train.video_samples, generator=gen)
        return self._video_latent

    def on_tick(self, nets: dict[str, nn.Module], *, out_dir: Any, kimg: float, images_seen: int) -> None:
        if not self.cfg.train.video:
            return
        G = nets["G"]
        device = next(G.parameters()).device
        img = self.generate(G, self.video_latent().to(device))
        frames_dir = Path(out_dir) / FRAMES_DIR
        # Frames past this point belong to a run that died after its last checkpoint: this run redoes them.
        for seen, path in sorted_frames(frames_dir):
            if seen > images_seen:
                path.unlink(missing_ok=True)
        level, alpha = _bare(G).stage()
        size = self.cfg.model.base_size * 2 ** level
        caption = f"kimg {kimg:.1f}  {size}x{size}" + (f"  fade {alpha:.2f}" if alpha < 1 else "")
        save_frame(img, frame_path(frames_dir, images_seen), nrow=min(8, img.shape[0]), caption=caption)

    def finish(self, *, out_dir: Any) -> None:
        if not self.cfg.train.video:
            return
        frames = [p for _, p in sorted_frames(Path(out_dir) / FRAMES_DIR)]
        if frames:
            write_video(frames, Path(out_dir) / VIDEO_NAME, fps=self.cfg.train.video_fps)
