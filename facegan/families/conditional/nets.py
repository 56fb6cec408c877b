"""Conditional DCGAN: G takes z concatenated with the attributes, D is a projection discriminator.

The conventional attribute-conditioned baseline beside the report's alpha/beta overlay. G sees
`z ⊕ (2a - 1)` (attributes as ±1, so "absent" is a signal too; fractional values such as a
training prevalence pass through linearly). D (Miyato & Koyama 2018, "cGANs with projection
discriminator") scores an image x with attributes a as

    logit = psi(phi(x)) + <V^T (2a - 1), sum_hw phi(x)>

where phi is the DCGAN trunk, psi DCGAN's last conv and V (A x C) one embedding per attribute.

Both nets also take a non-square `resolution` (height, width), e.g. CelebA's native (218, 178):
G starts from a (ceil(H/2^k), ceil(W/2^k)) grid instead of 4x4 (7x6 for 218x178, k = 5 octaves),
doubles k times (224x192) and centre-crops to H x W; D's strided convs halve to an uneven grid
(6x5) and its last conv covers that whole grid. At a square power of two they are DCGAN's nets
exactly (4x4 stem, same layers and widths). With num_attrs=0 they are unconditioned.

    G = ConditionalGenerator(resolution=64, z_dim=100, num_attrs=40)
    D = ProjectionDiscriminator(resolution=64, num_attrs=40)
    logits_B = D(G(z_BZ, attrs_BA), attrs_BA)

Architecture and init only; phases in facegan.families.conditional.steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from facegan.families.dcgan.nets import d_downsampling_layers, dcgan_init_

MIN_SIDE = 16


def parse_resolution(resolution: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(height, width) from an int (square) or a pair; each side >= 16. ValueError otherwise."""
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        hw = (resolution, resolution)
    elif isinstance(resolution, (tuple, list)) and len(resolution) == 2 \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in resolution):
        hw = (int(resolution[0]), int(resolution[1]))
    else:
        hw = (0, 0)
    if min(hw) < MIN_SIDE:
        raise ValueError(f"resolution must be an int or (height, width) with sides >= {MIN_SIDE} "
                         f"(64, or (218, 178) for CelebA's native size), got {resolution!r}")
    return hw


def grid_plan(height: int, width: int) -> tuple[int, int, int]:
    """(octaves, base_h, base_w): G doubles a base_h x base_w grid `octaves` times to cover H x W.

    As many octaves as keep the short side's base grid >= 4 (4x4 and log2(res) - 2 octaves at a
    square power of two, as in DCGAN).
    """
    octaves = int(math.floor(math.log2(min(height, width) / 4)))
    scale = 2 ** octaves
    return octaves, -(-height // scale), -(-width // scale)


def _check_count(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class ConditionalGenerator(nn.Module):
    """(z_BZ, attrs_BA) -> img_BCHW in [-1, 1]; DCGAN's transposed-conv stack on z ⊕ (2a - 1)."""

    def __init__(self, *, resolution: int | tuple[int, int] = 64, z_dim: int = 100, num_attrs: int = 40,
                 base_channels: int = 64, channels: int = 3, batchnorm: bool = True):
        super().__init__()
        self.height, self.width = parse_resolution(resolution)
        _check_count("z_dim", z_dim, minimum=1)
        _check_count("num_attrs", num_attrs, minimum=0)
        _check_count("base_channels", base_channels, minimum=1)
        _check_count("channels", channels, minimum=1)
        self.resolution = resolution
        self.z_dim, self.num_attrs, self.channels = z_dim, num_attrs, channels
        octaves, base_h, base_w = grid_plan(self.height, self.width)

        widths = [base_channels * 2 ** i for i in reversed(range(octaves))]
        layers: list[nn.Module] = []
        in_ch = z_dim + num_attrs
        for i, out_ch in enumerate(widths):
            # The stem maps the 1x1 input to the base grid; every later block doubles the size.
            conv = (nn.ConvTranspose2d(in_ch, out_ch, (base_h, base_w), 1, 0, bias=not batchnorm) if i == 0
                    else nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=not batchnorm))
            layers.append(conv)
            if batchnorm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            in_ch = out_ch
        layers += [nn.ConvTranspose2d(in_ch, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        full_h, full_w = base_h * 2 ** octaves, base_w * 2 ** octaves
        self.crop_top, self.crop_left = (full_h - self.height) // 2, (full_w - self.width) // 2

    def forward(self, z_BZ: Tensor, attrs_BA: Tensor | None = None) -> Tensor:
        if z_BZ.ndim != 2 or z_BZ.shape[1] != self.z_dim:
            raise ValueError(f"expected z of shape (B, {self.z_dim}), got {tuple(z_BZ.shape)}")
        x = z_BZ
        if self.num_attrs:
            if attrs_BA is None or tuple(attrs_BA.shape) != (z_BZ.shape[0], self.num_attrs):
                got = None if attrs_BA is None else tuple(attrs_BA.shape)
                raise ValueError(f"expected attrs of shape ({z_BZ.shape[0]}, {self.num_attrs}), got {got}")
            x = torch.cat([z_BZ, 2 * attrs_BA.to(z_BZ.dtype) - 1], dim=1)
        img = self.net(x[:, :, None, None])
        return img[:, :, self.crop_top:self.crop_top + self.height, self.crop_left:self.crop_left + self.width]


class ProjectionDiscriminator(nn.Module):
    """(img_BCHW, attrs_BA) -> logits_B: DCGAN's D plus the projection of the attributes."""

    def __init__(self, *, resolution: int | tuple[int, int] = 64, num_attrs: int = 40, base_channels: int = 64,
                 channels: int = 3, batchnorm: bool = True, dropout: float = 0.0):
        super().__init__()
        self.height, self.width = parse_resolution(resolution)
        _check_count("num_attrs", num_attrs, minimum=0)
        _check_count("base_channels", base_channels, minimum=1)
        _check_count("channels", channels, minimum=1)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.resolution = resolution
        self.num_attrs, self.channels = num_attrs, channels
        octaves, _, _ = grid_plan(self.height, self.width)

        layers, in_ch = d_downsampling_layers(channels, base_channels, octaves, batchnorm=batchnorm, dropout=dropout)
        h, w = self.height >> octaves, self.width >> octaves
        self.trunk = nn.Sequential(*layers)
        # The last conv covers the whole final grid: 4x4 at square powers of two (DCGAN), 6x5 at 218x178.
        self.logit = nn.Conv2d(in_ch, 1, (h, w), 1, 0)
        self.embed = nn.Linear(num_attrs, in_ch, bias=False) if num_attrs else None
        self.feature_dim = in_ch

    def forward(self, img_BCHW: Tensor, attrs_BA: Tensor | None = None) -> Tensor:
        # A wrong size would not fail in the convs, it would silently give several logits per image.
        if img_BCHW.ndim != 4 or tuple(img_BCHW.shape[1:]) != (self.channels, self.height, self.width):
            raise ValueError(f"expected images of shape (B, {self.channels}, {self.height}, {self.width}), "
                             f"got {tuple(img_BCHW.shape)}")
        h_BCHW = self.trunk(img_BCHW)
        logits_B = self.logit(h_BCHW).reshape(img_BCHW.shape[0])
        if self.embed is None:
            return logits_B
        if attrs_BA is None or tuple(attrs_BA.shape) != (img_BCHW.shape[0], self.num_attrs):
            got = None if attrs_BA is None else tuple(attrs_BA.shape)
            raise ValueError(f"expected attrs of shape ({img_BCHW.shape[0]}, {self.num_attrs}), got {got}")
        phi_BC = h_BCHW.sum(dim=(2, 3))
        return logits_B + (self.embed(2 * attrs_BA.to(phi_BC.dtype) - 1) * phi_BC).sum(dim=1)


def conditional_init_(module: nn.Module) -> None:
    """DCGAN's init, plus N(0, 0.02) for the projection embedding (and any other linear layer)."""
    dcgan_init_(module)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_conditional(*, resolution: int | tuple[int, int] = 64, z_dim: int = 100, base_channels: int = 64,
                      g_batchnorm: bool = True, d_batchnorm: bool = True, d_dropout: float = 0.0,
                      channels: int = 3, num_attrs: int = 40) -> dict[str, nn.Module]:
    """A conditional G (z ⊕ attributes) and projection D for num_attrs attributes, not initialised."""
    return {
        "G": ConditionalGenerator(resolution=resolution, z_dim=z_dim, num_attrs=num_attrs,
                                  base_channels=base_channels, channels=channels, batchnorm=g_batchnorm),
        "D": ProjectionDiscriminator(resolution=resolution, num_attrs=num_attrs, base_channels=base_channels,
                                     channels=channels, batchnorm=d_batchnorm, dropout=d_dropout),
    }
