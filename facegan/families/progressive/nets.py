"""The progressive family's nets: a generator fed z twice (as a first "image" and as an injected
tensor at every block) and a mirrored discriminator, both growing from base*2 to full size.

Architecture and init only: the stage schedule, losses and phases live in steps.py.

    nets = build_progressive(resolution=200, base_size=25, width=128, z_dim=100)
    G, D = nets["G"], nets["D"]
    G.set_stage(level=1, alpha=1.0); D.set_stage(level=1, alpha=1.0)   # 50x50, the start
    img_BCHW = G(z_BZ)                                                  # (B, 3, 50, 50) in [-1, 1]
    logits_B = D(img_BCHW)

Level k makes images of base_size * 2**k. During a fade (alpha < 1) G blends its new level's
image with the previous level's, upsampled; D blends its new fromRGB + block with the previous
level's fromRGB on the 2x average-pooled input. `level` and `alpha` are buffers: EMA copies (the
loop copies buffers) and checkpoints carry them, so a loaded generator draws at its trained stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)


def pixel_norm(x_BCHW: Tensor, eps: float = 1e-8) -> Tensor:
    """ProGAN's pixelwise feature normalisation: each pixel's feature vector to unit RMS."""
    return x_BCHW * torch.rsqrt(x_BCHW.pow(2).mean(dim=1, keepdim=True) + eps)


def coordinates(size: int, *, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(batch, 2, size, size): x then y, each from -1 (left/top) to 1 (right/bottom)."""
    t = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)
    y, x = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([x, y]).expand(batch, 2, size, size)


class _Stage(nn.Module):
    """level/alpha buffers shared by G and D."""

    def __init__(self, num_levels: int) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.register_buffer("level", torch.tensor(1, dtype=torch.long))
        self.register_buffer("alpha", torch.tensor(1.0))

    def set_stage(self, *, level: int, alpha: float) -> None:
        if not 1 <= level <= self.num_levels:
            raise ValueError(f"level must be in 1..{self.num_levels}, got {level}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.level.fill_(level)
        self.alpha.fill_(alpha)

    def stage(self) -> tuple[int, float]:
        return int(self.level), float(self.alpha)

    def size_at(self, level: int) -> int:
        return self.base_size * 2 ** level


class Generator(_Stage):
    """z_BZ -> img_BCHW in [-1, 1] at the current level's size."""

    def __init__(self, *, resolution: int, base_size: int, width: int, z_dim: int, channels: int = 3) -> None:
        num_levels = (resolution // base_size).bit_length() - 1
        if base_size * 2 ** num_levels != resolution or num_levels < 1:
            raise ValueError(f"resolution {resolution} is not base_size {base_size} * 2**k (k >= 1)")
        if width < 3:
            raise ValueError(f"width must be >= 3 (width - 2 latent channels plus x, y), got {width}")
        super().__init__(num_levels)
        self.resolution, self.base_size, self.width, self.z_dim = resolution, base_size, width, z_dim
        self.to_image = nn.Linear(z_dim, width * base_size * base_size, bias=False)
        self.to_injected = nn.Linear(z_dim, width - 2, bias=False)
        # blocks[0] works at base_size; blocks[k] upsamples to base_size * 2**k.
        self.blocks = nn.ModuleList(nn.ModuleList([_conv(2 * width, width), _conv(width, width)])
                                    for _ in range(num_levels + 1))
        # to_rgb[k - 1] turns level k's features into an image (level 0 is never an output: growth starts at 1).
        self.to_rgb = nn.ModuleList(nn.Conv2d(width, channels, 1) for _ in range(num_levels))

    def injected(self, z_BZ: Tensor, size: int) -> Tensor:
        """(B, width, size, size): the projected latent at every pixel, then x and y."""
        lat = self.to_injected(z_BZ)[:, :, None, None].expand(-1, -1, size, size)
        return torch.cat([lat, coordinates(size, batch=z_BZ.shape[0], device=z_BZ.device, dtype=lat.dtype)], 1)

    def _block(self, k: int, h: Tensor, z_BZ: Tensor) -> Tensor:
        if k > 0:
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        h = torch.cat([h, self.injected(z_BZ, h.shape[-1])], 1)
        for conv in self.blocks[k]:
            h = pixel_norm(F.leaky_relu(conv(h), 0.2))
        return h

    def forward(self, z_BZ: Tensor) -> Tensor:
        if z_BZ.ndim != 2 or z_BZ.shape[1] != self.z_dim:
            raise ValueError(f"expected z of shape (B, {self.z_dim}), got {tuple(z_BZ.shape)}")
        level, alpha = self.stage()
        h = self.to_image(z_BZ).view(-1, self.width, self.base_size, self.base_size)
        for k in range(level):
            h = self._block(k, h, z_BZ)
        prev = h
        img = torch.tanh(self.to_rgb[level - 1](self._block(level, prev, z_BZ)))
        if alpha < 1.0:
            # The fade: the previous level's image, upsampled, gives way to the new level's.
            old = F.interpolate(torch.tanh(self.to_rgb[level - 2](prev)), scale_factor=2, mode="nearest")
            img = torch.lerp(old, img, alpha)
        return img


class Discriminator(_Stage):
    """img_BCHW at the current level's size (or larger, average-pooled to it) -> logits_B (raw)."""

    def __init__(self, *, resolution: int, base_size: int, width: int, channels: int = 3) -> None:
        num_levels = (resolution // base_size).bit_length() - 1
        if base_size * 2 ** num_levels != resolution or num_levels < 1:
            raise ValueError(f"resolution {resolution} is not base_size {base_size} * 2**k (k >= 1)")
        super().__init__(num_levels)
        self.resolution, self.base_size, self.width, self.channels = resolution, base_size, width, channels
        self.from_rgb = nn.ModuleList(nn.Conv2d(channels, width, 1) for _ in range(num_levels))   # [k - 1]: level k
        # blocks[k] takes base_size * 2**k down to half (blocks[0] stays at base_size, before the logit).
        self.blocks = nn.ModuleList(nn.ModuleList([_conv(width, width), _conv(width, width)])
                                    for _ in range(num_levels + 1))
        self.to_logit = nn.Linear(width * base_size * base_size, 1, bias=False)

    def _block(self, k: int, h: Tensor) -> Tensor:
        for conv in self.blocks[k]:
            h = F.leaky_relu(conv(h), 0.2)
        return F.avg_pool2d(h, 2) if k > 0 else h

    def forward(self, img_BCHW: Tensor) -> Tensor:
        level, alpha = self.stage()
        size = self.size_at(level)
        side = img_BCHW.shape[-1] if img_BCHW.ndim == 4 else 0
        if (img_BCHW.ndim != 4 or tuple(img_BCHW.shape[1:]) != (self.channels, side, side) or side % size
                or side > self.resolution or (side // size) & (side // size - 1)):
            raise ValueError(f"expected images of shape (B, {self.channels}, S, S) with S = {size} (level {level}) "
                             f"times a power of two up to {self.resolution}, got {tuple(img_BCHW.shape)}")
        if side > size:
            # Full-size images (evaluation, d_accuracy): D sees them average-pooled to its level, as in training.
            img_BCHW = F.avg_pool2d(img_BCHW, side // size)
        h = self._block(level, F.leaky_relu(self.from_rgb[level - 1](img_BCHW), 0.2))
        if alpha < 1.0:
            old = F.leaky_relu(self.from_rgb[level - 2](F.avg_pool2d(img_BCHW, 2)), 0.2)
            h = torch.lerp(old, h, alpha)
        for k in range(level - 1, -1, -1):
            h = self._block(k, h)
        return self.to_logit(h.flatten(1)).reshape(-1)


def in_use(net: Generator | Discriminator, *, level: int, fading: bool) -> list[nn.Module]:
    """The modules a forward at `level` touches (every parameter of them gets a gradient)."""
    mods: list[nn.Module] = [net.blocks[k] for k in range(level + 1)]
    rgb = net.to_rgb if isinstance(net, Generator) else net.from_rgb
    mods.append(rgb[level - 1])
    if fading:
        mods.append(rgb[level - 2])
    mods += [net.to_image, net.to_injected] if isinstance(net, Generator) else [net.to_logit]
    return mods


def init_weights_(net: nn.Module) -> None:
    """He init for LeakyReLU(0.2) convs and linears (no batch norm to rescue a bad scale); biases 0.
    Draws from torch's global RNG, which the loop seeds."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0.2, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_progressive(*, resolution: int, base_size: int, width: int, z_dim: int,
                      channels: int = 3) -> dict[str, nn.Module]:
    """G and D at level 1 (base_size * 2), initialised."""
    nets = {"G": Generator(resolution=resolution, base_size=base_size, width=width, z_dim=z_dim, channels=channels),
            "D": Discriminator(resolution=resolution, base_size=base_size, width=width, channels=channels)}
    for net in nets.values():
        init_weights_(net)
    return nets
