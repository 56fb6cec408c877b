"""VAE encoder and decoder (architecture and init only), any size s * 2^k with s in 4..7.

    nets = build_vae(resolution=112, z_dim=128, base_channels=32)   # 7x7 base map, 4 doublings
    mu_BZ, logvar_BZ = nets["E"](img_BCHW)                         # q(z|x)
    img_BCHW = nets["G"](z_BZ)                                     # images in [-1, 1] (2 sigmoid - 1)
    logits_BCHW = nets["G"](z_BZ, logits=True)                     # Bernoulli logits, for the loss

E: k stride-2 4x4 convs (base_channels * 2^i channels; batch norm after all but the first;
LeakyReLU 0.2) down to the s x s map, then one linear layer to (mu, log sigma^2). G mirrors it: a
linear layer to the s x s map, then k stride-2 4x4 transposed convs (batch norm and ReLU after all
but the last). `logits=True` is a forward argument so it also works through DDP's wrapper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facegan.families.dcgan.nets import dcgan_init_
from facegan.families.vae import vae_layout, vae_widths


class VAEEncoder(nn.Module):
    """img_BCHW in [-1, 1] -> (mu_BZ, logvar_BZ)."""

    def __init__(self, *, resolution: int = 64, z_dim: int = 128, base_channels: int = 32, channels: int = 3,
                 batchnorm: bool = True):
        super().__init__()
        s, k = vae_layout(resolution)
        self.resolution, self.z_dim, self.channels = resolution, z_dim, channels
        widths = vae_widths(base_channels, k)
        layers: list[nn.Module] = []
        in_ch = channels
        for i, out_ch in enumerate(widths):
            use_bn = batchnorm and i > 0
            layers.append(nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=not use_bn))
            if use_bn:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch = out_ch
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch * s * s, 2 * z_dim)

    def forward(self, img_BCHW: Tensor) -> tuple[Tensor, Tensor]:
        if img_BCHW.ndim != 4 or tuple(img_BCHW.shape[1:]) != (self.channels, self.resolution, self.resolution):
            raise ValueError(f"expected images of shape (B, {self.channels}, {self.resolution}, "
                             f"{self.resolution}), got {tuple(img_BCHW.shape)}")
        h = self.head(self.convs(img_BCHW).flatten(1))
        mu_BZ, logvar_BZ = h.chunk(2, dim=1)
        return mu_BZ, logvar_BZ


class VAEDecoder(nn.Module):
    """z_BZ -> images in [-1, 1], or the Bernoulli logits behind them (`logits=True`)."""

    def __init__(self, *, resolution: int = 64, z_dim: int = 128, base_channels: int = 32, channels: int = 3,
                 batchnorm: bool = True):
        super().__init__()
        s, k = vae_layout(resolution)
        self.resolution, self.z_dim, self.channels = resolution, z_dim, channels
        widths = vae_widths(base_channels, k)
        self.base = s
        self.top = widths[-1]
        self.stem = nn.Linear(z_dim, widths[-1] * s * s, bias=not batchnorm)
        stem_act: list[nn.Module] = [nn.BatchNorm2d(widths[-1])] if batchnorm else []
        self.stem_act = nn.Sequential(*stem_act, nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        outs = list(reversed(widths[:-1])) + [channels]
        in_ch = widths[-1]
        for i, out_ch in enumerate(outs):
            last = i == len(outs) - 1
            use_bn = batchnorm and not last
            layers.append(nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=not use_bn))
            if not last:
                if use_bn:
                    layers.append(nn.BatchNorm2d(out_ch))
                layers.append(nn.ReLU(inplace=True))
            in_ch = out_ch
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z_BZ: Tensor, *, logits: bool = False) -> Tensor:
        if z_BZ.ndim != 2 or z_BZ.shape[1] != self.z_dim:
            raise ValueError(f"expected z of shape (B, {self.z_dim}), got {tuple(z_BZ.shape)}")
        h = self.stem(z_BZ).view(-1, self.top, self.base, self.base)
        out = self.deconvs(self.stem_act(h))
        return out if logits else torch.sigmoid(out) * 2 - 1


def build_vae(*, resolution: int = 64, z_dim: int = 128, base_channels: int = 32, batchnorm: bool = True,
              channels: int = 3) -> dict[str, nn.Module]:
    """{"E": encoder, "G": decoder}, initialised (draws from torch's global RNG, which the loop seeds)."""
    kw = dict(resolution=resolution, z_dim=z_dim, base_channels=base_channels, channels=channels,
              batchnorm=batchnorm)
    nets = {"E": VAEEncoder(**kw), "G": VAEDecoder(**kw)}
    for net in nets.values():
        dcgan_init_(net)   # DCGAN's init; linear layers keep PyTorch's default (fan-in scaled) one
    return nets
