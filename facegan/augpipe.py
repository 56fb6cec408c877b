"""The augmentation pipe: what a discriminator sees, augmented differentiably (DiffAugment, ADA).

    pipe = AugmentPipe(cfg.augment)                       # facegan.config.AugmentConfig
    nets = pipe.wrap(nets, ("D",), generator=gen)         # nets["D"](x, ...) is D(pipe(x), ...)
    x_aug = pipe(x, generator=gen)                        # explicitly (BEGAN's autoencoder compares with it)
    pipe.observe(scalars, ok=ok, step=step, images=n, reduce=mean_over_ranks)   # ADA: p after each step

Every image D sees goes through it, real, fake and interpolated alike, in the D and the G phases
(StyleGAN2-ADA's `run_D`, DiffAugment's `D(DiffAugment(x))`): the ops are differentiable with respect
to their input, so G's gradient flows through the augmentation of its fakes. The pipe has no
parameters. Its randomness comes only from the step's `torch.Generator` (drawn on the generator's
device), so a resumed run draws the same augmentations, and kind none draws nothing.

The ops, on images in [-1, 1] (DiffAugment's, Zhao et al. 2020, mit-han-lab/data-efficient-gans):

    color        brightness x + U(-0.5, 0.5); saturation: the channel mean m, (x - m) * U(0, 2) + m;
                 contrast: the image mean m, (x - m) * U(0.5, 1.5) + m      (per sample, in that order)
    translation  an integer shift of up to 1/8 of each side (rounded), per sample, zeros shifted in
    cutout       a zeroed square of half each side (rounded) at a random centre, clipped at the border
    xflip        (ADA's) a horizontal flip of half the samples

kind diffaugment applies every op of the policy to every sample. kind ada is ADA (Karras et al.
2020) on these ops: each op (each of color's three) is applied to each sample with probability p,
the others pass unchanged. p is training state: with `augment.adaptive` it moves every `interval`
steps by sign(r_t - target) * images / (speed_kimg * 1000), clipped to [0, 1], where
r_t = E[sign D(x_real)] over those steps, averaged over ranks (`reduce`), so every rank holds the same
p; it is checkpointed (`state_dict`) and restored exactly. r_t is read from the D phase's
`acc/d_real` (the fraction of augmented reals with a logit > 0): E[sign] = 2 acc - 1 for logits
that are never exactly 0. All of it stays on the device: no host sync per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from facegan.config import AugmentConfig

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5
ADA_SIGNAL = "acc/d_real"     # the phase scalar r_t is read from (2 acc - 1 = E[sign D(x_real)])
STATE_KEYS = ("p", "sum", "count", "images", "rt")


# --- draws (on the generator's device, then moved: the same numbers whatever the images' device)

def _rand(n: int, generator: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device=like.device, dtype=like.dtype)


def _randint(low: int, high: int, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """n integers in [low, high), as DiffAugment's torch.randint."""
    return torch.randint(low, high, (n,), generator=generator, device=generator.device).to(device)


# --- the ops as functions of their parameters (tests compare them with DiffAugment's formulation)

def brightness(x: Tensor, u_B: Tensor) -> Tensor:
    """x + (u - 0.5), u ~ U(0, 1) per sample."""
    return x + (u_B - 0.5).view(-1, 1, 1, 1)


def saturation(x: Tensor, u_B: Tensor) -> Tensor:
    """(x - m) * 2u + m with m the mean over channels (per pixel)."""
    m = x.mean(dim=1, keepdim=True)
    return (x - m) * (u_B * 2).view(-1, 1, 1, 1) + m


def contrast(x: Tensor, u_B: Tensor) -> Tensor:
    """(x - m) * (u + 0.5) + m with m the mean of the whole image."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (u_B + 0.5).view(-1, 1, 1, 1) + m


def translate(x: Tensor, tx_B: Tensor, ty_B: Tensor) -> Tensor:
    """out[b, :, i, j] = x[b, :, i + tx_b, j + ty_b], zero outside the image (DiffAugment's index
    into the image padded by one zero, clamped to that padding). Two gathers: differentiable, and
    twice so (an R1 or gradient penalty through the pipe)."""
    b, c, h, w = x.shape
    pad = nn.functional.pad(x, [1, 1, 1, 1])
    rows = (torch.arange(h, device=x.device).view(1, h) + tx_B.view(b, 1) + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, w) + ty_B.view(b, 1) + 1).clamp(0, w + 1)
    out = pad.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2))
    return out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def cutout(x: Tensor, ox_B: Tensor, oy_B: Tensor, *, size: tuple[int, int]) -> Tensor:
    """x with rows ox - size//2 .. ox - size//2 + size - 1 (clipped to the image) by the same span of
    columns around oy set to zero, per sample (DiffAugment's mask, as a comparison)."""
    b, _, h, w = x.shape
    sh, sw = size
    r = torch.arange(h, device=x.device).view(1, h)
    c = torch.arange(w, device=x.device).view(1, w)
    r0 = (ox_B - sh // 2).view(b, 1)
    c0 = (oy_B - sw // 2).view(b, 1)
    # Clipping the covered indices to the image covers [max(0, lo), min(side - 1, hi)].
    in_r = (r >= r0.clamp(min=0)) & (r <= (r0 + sh - 1).clamp(max=h - 1))
    in_c = (c >= c0.clamp(min=0)) & (c <= (c0 + sw - 1).clamp(max=w - 1))
    keep = ~(in_r.view(b, 1, h, 1) & in_c.view(b, 1, 1, w))
    return x * keep.to(x.dtype)


def xflip(x: Tensor, flip_B: Tensor) -> Tensor:
    """x mirrored left-right where flip_B is true."""
    return torch.where(flip_B.view(-1, 1, 1, 1), x.flip(3), x)


# --- the ops as random transforms: (x, generator) -> x

def rand_brightness(x: Tensor, g: torch.Generator) -> Tensor:
    return brightness(x, _rand(x.shape[0], g, x))


def rand_saturation(x: Tensor, g: torch.Generator) -> Tensor:
    return saturation(x, _rand(x.shape[0], g, x))


def rand_contrast(x: Tensor, g: torch.Generator) -> Tensor:
    return contrast(x, _rand(x.shape[0], g, x))


def rand_translation(x: Tensor, g: torch.Generator) -> Tensor:
    b, _, h, w = x.shape
    sx, sy = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    tx = _randint(-sx, sx + 1, b, g, x.device)
    ty = _randint(-sy, sy + 1, b, g, x.device)
    return translate(x, tx, ty)


def rand_cutout(x: Tensor, g: torch.Generator) -> Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    ox = _randint(0, h + (1 - sh % 2), b, g, x.device)
    oy = _randint(0, w + (1 - sw % 2), b, g, x.device)
    return cutout(x, ox, oy, size=(sh, sw))


def rand_xflip(x: Tensor, g: torch.Generator) -> Tensor:
    return xflip(x, _rand(x.shape[0], g, x) < 0.5)


OPS: dict[str, tuple[Callable[[Tensor, torch.Generator], Tensor], ...]] = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "translation": (rand_translation,),
    "cutout": (rand_cutout,),
    "xflip": (rand_xflip,),
}


class AugmentedNet(nn.Module):
    """`module` with its image input (the first argument) sent through the pipe first; other
    arguments (attribute rows, with_q=...) as given. What a phase sees as ctx.nets["D"]."""

    def __init__(self, module: nn.Module, pipe: "AugmentPipe", generator: torch.Generator) -> None:
        super().__init__()
        self.module = module
        self.pipe = pipe
        self.generator = generator

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.module(self.pipe(x, generator=self.generator), *args, **kwargs)


def unwrap(net: nn.Module) -> nn.Module:
    """The net inside the pipe's wrapper and DDP (or the net itself)."""
    while isinstance(net, (AugmentedNet, nn.parallel.DistributedDataParallel)):
        net = net.module
    return net


class AugmentPipe:
    """The run's augmentation (`augment:`) and, for kind ada, its probability p and r_t's running sum."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self.kind = cfg.kind
        self.ops = [f for name in cfg.policy for f in OPS[name]]
        self.gated = cfg.kind == "ada"
        self.adaptive = self.gated and cfg.adaptive
        self.p = torch.tensor(float(cfg.p))
        self._sum = torch.zeros(())
        self._count = torch.zeros(())
        self._rt = torch.zeros(())
        self._images = 0

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def __call__(self, x: Tensor, *, generator: torch.Generator) -> Tensor:
        """The augmented images (x itself for kind none)."""
        if not self.enabled:
            return x
        for op in self.ops:
            y = op(x, generator)
            if self.gated:
                apply_B = _rand(x.shape[0], generator, x) < self.p.to(x.device, x.dtype)
                y = torch.where(apply_B.view(-1, 1, 1, 1), y, x)
            x = y
        return x

    def wrap(self, nets: dict[str, nn.Module], names: tuple[str, ...], *,
             generator: torch.Generator) -> dict[str, nn.Module]:
        """`nets` with those named wrapped in AugmentedNet (all as they are for kind none)."""
        if not self.enabled:
            return dict(nets)
        return {n: AugmentedNet(net, self, generator) if n in names else net for n, net in nets.items()}

    # --- ADA's p
    def observe(self, scalars: dict[str, Tensor], *, ok: Tensor | bool, step: int, images: int,
                reduce: Callable[[Tensor], Tensor] = lambda t: t) -> None:
        """After step `step` (1-based) of `images` images over all ranks: r_t's sum (the step counted
        where `ok`, its finiteness flag), and every `interval` steps the adjustment of p."""
        if not self.adaptive:
            return
        if ADA_SIGNAL not in scalars:
            if ok is False:   # a step skipped before its D phase reported anything
                return
            raise RuntimeError(f"augment.kind ada reads r_t from the D phase's {ADA_SIGNAL!r} scalar, which this "
                               f"family's phases do not report")
        w = ok.to(self._sum.device, torch.float32) if isinstance(ok, Tensor) else float(bool(ok))
        signs = reduce((2 * scalars[ADA_SIGNAL].detach().float() - 1).reshape(1)).reshape(()).to(self._sum.device)
        self._sum = self._sum + w * signs
        self._count = self._count + w
        self._images += images
        if step % self.cfg.interval:
            return
        rt = self._sum / self._count.clamp(min=1)
        adjust = torch.sign(rt - self.cfg.target) * (self._images / (self.cfg.speed_kimg * 1000))
        self.p = (self.p + adjust * (self._count > 0)).clamp(0.0, 1.0)
        self._rt = torch.where(self._count > 0, rt, self._rt)
        self._sum, self._count, self._images = torch.zeros_like(self._sum), torch.zeros_like(self._count), 0

    def step_scalars(self) -> dict[str, Tensor]:
        """Per-step scalars (the loss curve's p panel): ada only."""
        return {"augment_p": self.p.clone()} if self.gated else {}

    def tick_metrics(self) -> dict[str, float]:
        if not self.gated:
            return {}
        out = {"augment_p": float(self.p)}
        if self.adaptive:
            out["augment_rt"] = float(self._rt)
        return out

    @property
    def curves(self) -> tuple[tuple[str, ...], ...]:
        """loss_curve.png panels the pipe adds."""
        return (("augment_p",),) if self.gated else ()

    # --- state
    def state_dict(self) -> dict[str, Any]:
        if not self.gated:
            return {}
        return {"p": self.p.detach().cpu().clone(), "sum": self._sum.detach().cpu().clone(),
                "count": self._count.detach().cpu().clone(), "images": self._images,
                "rt": self._rt.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore p exactly. A checkpoint without augmentation state (written with another kind)
        starts p at augment.p; a run that is not ada ignores a checkpoint's p."""
        if not self.gated or not state:
            return
        if set(state) != set(STATE_KEYS):
            raise ValueError(f"augment state: expected keys {sorted(STATE_KEYS)}, got {sorted(state)}")
        device = self.p.device
        self.p = state["p"].detach().clone().float().to(device)
        self._sum = state["sum"].detach().clone().float().to(device)
        self._count = state["count"].detach().clone().float().to(device)
        self._rt = state["rt"].detach().clone().float().to(device)
        self._images = int(state["images"])

    def to(self, device: torch.device | str) -> "AugmentPipe":
        self.p, self._sum, self._count, self._rt = (t.to(device) for t in (self.p, self._sum, self._count, self._rt))
        return self
