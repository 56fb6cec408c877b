"""InfoGAN's discriminator: DCGAN's trunk shared by the real/fake head, Q (the codes) and, with noise
recovery, a head recovering z. G is DCGAN's generator on the whole latent (facegan.families.dcgan.nets).

    D = InfoGANDiscriminator(resolution=64, code_dim=12, q_hidden=128, z_dim=128)
    logits_B = D(img_BCHW)                     # as DCGAN's D (evaluation, d_accuracy)
    logits_B, q_BQ = D(img_BCHW, with_q=True)  # q: [cat logits | cont means | z (noise recovery)]

Architecture only: losses in facegan.families.infogan.codes, phases in steps.py.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from facegan.families.dcgan.nets import d_downsampling_layers, num_octaves


class CodeHead(nn.Sequential):
    """Q's head on a 4x4 feature map (InfoGAN: one hidden layer of 128, leaky ReLU, then the outputs)."""

    def __init__(self, in_ch: int, hidden: int, out_dim: int):
        super().__init__(nn.Conv2d(in_ch, hidden, 4, 1, 0), nn.Flatten(), nn.LeakyReLU(0.2, inplace=True),
                         nn.Linear(hidden, out_dim))


class VectorHead(nn.Sequential):
    """The same head on a feature vector (InfoBEGAN's predictor on BEGAN's embedding)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2, inplace=True), nn.Linear(hidden, out_dim))


class InfoGANDiscriminator(nn.Module):
    """img_BCHW -> logits_B, and with `with_q` Q's predictions q_BQ from the same trunk features.

    code_dim: categorical logits + continuous means Q predicts; z_dim > 0 adds the noise-recovery
    head (its outputs appended to q); 0: no such head, so no parameter of it exists.
    """

    def __init__(self, *, resolution: int = 64, base_channels: int = 64, channels: int = 3, batchnorm: bool = True,
                 dropout: float = 0.0, code_dim: int, q_hidden: int = 128, z_dim: int = 0):
        super().__init__()
        octaves = num_octaves(resolution)
        if code_dim < 1 or q_hidden < 1 or z_dim < 0:
            raise ValueError(f"need code_dim >= 1, q_hidden >= 1, z_dim >= 0; got {code_dim}, {q_hidden}, {z_dim}")
        self.resolution = resolution
        self.channels = channels
        layers, in_ch = d_downsampling_layers(channels, base_channels, octaves, batchnorm=batchnorm, dropout=dropout)
        self.trunk = nn.Sequential(*layers)
        self.d_head = nn.Conv2d(in_ch, 1, 4, 1, 0)
        self.q_head = CodeHead(in_ch, q_hidden, code_dim)
        self.z_head = CodeHead(in_ch, q_hidden, z_dim) if z_dim else None

    def forward(self, img_BCHW: Tensor, with_q: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if img_BCHW.ndim != 4 or tuple(img_BCHW.shape[1:]) != (self.channels, self.resolution, self.resolution):
            raise ValueError(f"expected images of shape (B, {self.channels}, {self.resolution}, "
                             f"{self.resolution}), got {tuple(img_BCHW.shape)}")
        h = self.trunk(img_BCHW)
        logits_B = self.d_head(h).reshape(img_BCHW.shape[0])
        if not with_q:
            return logits_B
        q_BQ = self.q_head(h)
        if self.z_head is not None:
            q_BQ = torch.cat([q_BQ, self.z_head(h)], dim=1)
        return logits_B, q_BQ
