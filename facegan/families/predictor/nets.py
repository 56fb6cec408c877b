"""The latent predictor P: D's architecture with the GAN's latent as its output.

    P = LatentPredictor(arch="dcgan", resolution=64, base_channels=64, latent_dim=140)
    latent_BL = P(img_BCHW)          # images in [-1, 1] -> latents in the GAN's layout

`dcgan`: DCGAN's discriminator trunk (stride-2 4x4 convs, LeakyReLU, optional batch norm) and a
4x4 conv to latent_dim where D has its one logit. `began`: BEGAN's encoder whose embedding is the
latent. Architecture and init (DCGAN's for dcgan, BEGAN's Xavier for began).
"""

from __future__ import annotations

from torch import Tensor, nn

from facegan.families.began.nets import BEGANEncoder, began_init_
from facegan.families.dcgan.nets import d_downsampling_layers, dcgan_init_, num_octaves


class LatentPredictor(nn.Module):
    """img_BCHW -> latent_BL."""

    def __init__(self, *, arch: str, resolution: int, base_channels: int, latent_dim: int, batchnorm: bool = True,
                 channels: int = 3):
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.arch, self.latent_dim = arch, latent_dim
        self.resolution, self.channels = resolution, channels
        if arch == "dcgan":
            layers, in_ch = d_downsampling_layers(channels, base_channels, num_octaves(resolution),
                                                  batchnorm=batchnorm, dropout=0.0)
            self.net: nn.Module = nn.Sequential(*layers, nn.Conv2d(in_ch, latent_dim, 4, 1, 0), nn.Flatten())
            dcgan_init_(self.net)
        elif arch == "began":
            self.net = BEGANEncoder(resolution=resolution, base_channels=base_channels, h_dim=latent_dim,
                                    channels=channels)
            began_init_(self.net)
        else:
            raise ValueError(f"arch must be 'dcgan' or 'began', got {arch!r}")

    def forward(self, img_BCHW: Tensor) -> Tensor:
        if img_BCHW.ndim != 4 or tuple(img_BCHW.shape[1:]) != (self.channels, self.resolution, self.resolution):
            raise ValueError(f"expected images of shape (B, {self.channels}, {self.resolution}, {self.resolution}), "
                             f"got {tuple(img_BCHW.shape)}")
        return self.net(img_BCHW)
