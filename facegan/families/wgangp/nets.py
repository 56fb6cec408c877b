"""WGAN-GP nets: DCGAN's generator and a critic without batch norm (architecture and init only).

    nets = build_wgangp(resolution=64, z_dim=100, base_channels=64)   # {"G": ..., "D": ...}, DCGAN-initialised
    scores_B = nets["D"](nets["G"](torch.randn(8, 100)))             # raw critic scores, no sigmoid

The critic mirrors DCGAN's discriminator: per octave a stride-2 4x4 conv, LeakyReLU(0.2), and on
every conv after the first a layer norm over (C, H, W) per sample (GroupNorm with one group: the
paper's recommendation; `norm="none"` leaves it out). No batch norm: a sample's score must depend on
that sample alone for the per-sample gradient penalty.
"""

from __future__ import annotations

from torch import Tensor, nn

from facegan.families.dcgan.nets import DCGANGenerator, dcgan_init_, num_octaves


class WGANCritic(nn.Module):
    """img_BCHW -> scores_B (unbounded reals; higher: more real)."""

    def __init__(self, *, resolution: int = 64, base_channels: int = 64, channels: int = 3, norm: str = "layer",
                 dropout: float = 0.0):
        super().__init__()
        octaves = num_octaves(resolution)
        if norm not in ("layer", "none"):
            raise ValueError(f"norm must be 'layer' or 'none', got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.resolution = resolution
        self.channels = channels
        layers: list[nn.Module] = []
        in_ch = channels
        for i in range(octaves):
            out_ch = base_channels * 2 ** i
            use_norm = norm == "layer" and i > 0
            layers.append(nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=not use_norm))
            if use_norm:
                layers.append(nn.GroupNorm(1, out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_ch = out_ch
        self.net = nn.Sequential(*layers, nn.Conv2d(in_ch, 1, 4, 1, 0))

    def forward(self, img_BCHW: Tensor) -> Tensor:
        if img_BCHW.ndim != 4 or tuple(img_BCHW.shape[1:]) != (self.channels, self.resolution, self.resolution):
            raise ValueError(f"expected images of shape (B, {self.channels}, {self.resolution}, "
                             f"{self.resolution}), got {tuple(img_BCHW.shape)}")
        return self.net(img_BCHW).reshape(img_BCHW.shape[0])


def build_wgangp(*, resolution: int = 64, z_dim: int = 100, base_channels: int = 64, g_batchnorm: bool = True,
                 d_norm: str = "layer", d_dropout: float = 0.0, channels: int = 3) -> dict[str, nn.Module]:
    """G and critic D for `resolution` (a power of two >= 16), with DCGAN's init (N(0, 0.02) convs;
    layer-norm scales 1, shifts 0)."""
    nets = {"G": DCGANGenerator(resolution=resolution, z_dim=z_dim, base_channels=base_channels, channels=channels,
                                batchnorm=g_batchnorm),
            "D": WGANCritic(resolution=resolution, base_channels=base_channels, channels=channels, norm=d_norm,
                            dropout=d_dropout)}
    for net in nets.values():
        dcgan_init_(net)
    return nets
