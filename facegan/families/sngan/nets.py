"""SNGAN's ResNet generator and discriminator (Miyato et al. 2018), as Mimicry builds them for 64x64.

Architecture and init only (phases: steps.py). With n = log2(resolution / 4) blocks (4 at 64x64)
and `width` the widest channels (Mimicry's ngf = ndf = 1024 at 64x64):

    G: z -> Linear -> width x 4 x 4 -> n GBlocks (channels halve, size doubles) -> BN, ReLU,
       3x3 conv to RGB, tanh
    D: an optimised first DBlock to width >> n at half size, n - 1 ... DBlocks doubling the
       channels and halving the size, ReLU, sum over space, Linear to one score; spectral norm on
       every conv and linear layer of D, applied after the weights are initialised

    GBlock(x) = conv(relu(bn(conv(up(relu(bn(x))))))) + conv1x1(up(x))       (up: bilinear x2)
    DBlock(x) = pool(conv(relu(conv(relu(x))))) + pool(conv1x1(x))          (pool: avg 2x2)

Init (Mimicry): Xavier-uniform, gain sqrt(2) on the residual convs, 1 on shortcuts, the stem and
the output layers.

    nets = build_sngan(resolution=64, z_dim=128, width=1024)
    scores_B = nets["D"](nets["G"](torch.randn(8, 128)))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


def num_blocks(resolution: int) -> int:
    """Up-sampling blocks from 4x4 to `resolution` (4 at 64x64)."""
    return resolution.bit_length() - 1 - 2


def _xavier(module: nn.Module, gain: float) -> None:
    nn.init.xavier_uniform_(module.weight, gain)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _init_residual(block: nn.Module) -> None:
    """Mimicry's block init: gain sqrt(2) on the residual convs, 1 on the shortcut."""
    _xavier(block.c1, math.sqrt(2))
    _xavier(block.c2, math.sqrt(2))
    _xavier(block.c_sc, 1.0)


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class GBlock(nn.Module):
    """A residual block of G that doubles the size."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.b1, self.b2 = nn.BatchNorm2d(in_ch), nn.BatchNorm2d(out_ch)
        self.c1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.c2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.c_sc = nn.Conv2d(in_ch, out_ch, 1, 1, 0)
        _init_residual(self)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(_up(F.relu(self.b1(x))))
        h = self.c2(F.relu(self.b2(h)))
        return h + self.c_sc(_up(x))


class DBlock(nn.Module):
    """A residual block of D that halves the size; `optimized`: the first block (no ReLU before
    its first conv, the shortcut pools first)."""

    def __init__(self, in_ch: int, out_ch: int, *, optimized: bool = False) -> None:
        super().__init__()
        self.optimized = optimized
        hidden = out_ch if optimized else in_ch
        self.c1 = nn.Conv2d(in_ch, hidden, 3, 1, 1)
        self.c2 = nn.Conv2d(hidden, out_ch, 3, 1, 1)
        self.c_sc = nn.Conv2d(in_ch, out_ch, 1, 1, 0)
        _init_residual(self)

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.optimized else F.relu(x)
        h = F.avg_pool2d(self.c2(F.relu(self.c1(h))), 2)
        sc = self.c_sc(F.avg_pool2d(x, 2)) if self.optimized else F.avg_pool2d(self.c_sc(x), 2)
        return h + sc


class SNGANGenerator(nn.Module):
    """z_BZ -> img_BCHW in [-1, 1]."""

    def __init__(self, *, resolution: int = 64, z_dim: int = 128, width: int = 1024, channels: int = 3) -> None:
        super().__init__()
        n = num_blocks(resolution)
        self.z_dim, self.width = z_dim, width
        self.l1 = nn.Linear(z_dim, 16 * width)
        self.blocks = nn.Sequential(*[GBlock(width >> i, width >> (i + 1)) for i in range(n)])
        self.b_out = nn.BatchNorm2d(width >> n)
        self.c_out = nn.Conv2d(width >> n, channels, 3, 1, 1)
        _xavier(self.l1, 1.0)
        _xavier(self.c_out, 1.0)

    def forward(self, z_BZ: Tensor) -> Tensor:
        h = self.l1(z_BZ).view(-1, self.width, 4, 4)
        h = F.relu(self.b_out(self.blocks(h)))
        return torch.tanh(self.c_out(h))


class SNGANDiscriminator(nn.Module):
    """img_BCHW -> one score per image (hinge: > 0 reads as real); spectral norm on every layer."""

    def __init__(self, *, resolution: int = 64, width: int = 1024, channels: int = 3) -> None:
        super().__init__()
        n = num_blocks(resolution)
        widths = [width >> i for i in range(n, -1, -1)]          # width >> n, ..., width
        blocks = [DBlock(channels, widths[0], optimized=True)]
        blocks += [DBlock(a, b) for a, b in zip(widths, widths[1:])]
        self.blocks = nn.Sequential(*blocks)
        self.l_out = nn.Linear(width, 1)
        _xavier(self.l_out, 1.0)
        # After the init: the parametrisation divides the initialised weights by their spectral norm.
        for module in list(self.modules()):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                spectral_norm(module)

    def forward(self, img_BCHW: Tensor) -> Tensor:
        h = F.relu(self.blocks(img_BCHW)).sum(dim=(2, 3))
        return self.l_out(h).squeeze(1)


def build_sngan(*, resolution: int = 64, z_dim: int = 128, width: int = 1024) -> dict[str, nn.Module]:
    return {"G": SNGANGenerator(resolution=resolution, z_dim=z_dim, width=width),
            "D": SNGANDiscriminator(resolution=resolution, width=width)}
