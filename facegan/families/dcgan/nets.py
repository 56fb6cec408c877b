"""DCGAN generator and discriminator (Radford, Metz & Chintala 2015), any power-of-two size >= 16.

Architecture and init only: losses and phases live in `facegan.families.dcgan.steps`, devices
and DDP in the loop.

    G = DCGANGenerator(resolution=64)            # 100-d z -> 4x4x512 -> ... -> 64x64x3, tanh
    D = DCGANDiscriminator(resolution=64)        # 64x64x3 -> ... -> 4x4x512 -> one logit
    logits_B = D(G(torch.randn(8, G.z_dim)))
"""

from __future__ import annotations

from torch import Tensor, nn

MIN_RESOLUTION = 16
PAPER_RESOLUTIONS = (32, 64, 128)


def num_octaves(resolution: int) -> int:
    """Up/down-sampling blocks between 4x4 and `resolution` (4 for 64x64, as in the paper).

    Raises ValueError naming `resolution` and the allowed values.
    """
    if (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < MIN_RESOLUTION
            or resolution & (resolution - 1)):
        raise ValueError(
            f"resolution must be a power of two >= {MIN_RESOLUTION} "
            f"({', '.join(map(str, PAPER_RESOLUTIONS))} in the papers; 16 for tiny tests), got {resolution!r}"
        )
    return resolution.bit_length() - 1 - 2


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def d_downsampling_layers(channels: int, base_channels: int, octaves: int, *, batchnorm: bool,
                          dropout: float) -> tuple[list[nn.Module], int]:
    """DCGAN's discriminator trunk: per octave a stride-2 4x4 conv (base_channels * 2**i out),
    batch norm after the first, LeakyReLU(0.2) and optional dropout. Returns (layers, out channels)."""
    layers: list[nn.Module] = []
    in_ch = channels
    for i in range(octaves):
        out_ch = base_channels * 2 ** i
        use_bn = batchnorm and i > 0
        layers.append(nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=not use_bn))
        if use_bn:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_ch = out_ch
    return layers, in_ch


class DCGANGenerator(nn.Module):
    """z_BZ -> img_BCHW in [-1, 1]: transposed convs doubling the size, halving the channels.

    The 4x4 stem has `base_channels * 2**(octaves-1)` channels (512 at 64x64 with base 64); each
    octave halves them down to `base_channels`, then a last transposed conv makes `channels` and
    tanh bounds the image. Convs followed by batch norm carry no bias (BN's shift replaces it).
    """

    def __init__(self, *, resolution: int = 64, z_dim: int = 100, base_channels: int = 64,
                 channels: int = 3, batchnorm: bool = True):
        super().__init__()
        octaves = num_octaves(resolution)
        _check_positive("z_dim", z_dim)
        _check_positive("base_channels", base_channels)
        _check_positive("channels", channels)
        self.resolution = resolution
        self.z_dim = z_dim
        self.channels = channels

        widths = [base_channels * 2 ** i for i in reversed(range(octaves))]
        layers: list[nn.Module] = []
        in_ch = z_dim
        for i, out_ch in enumerate(widths):
            # The stem maps the 1x1 latent to 4x4; every later block doubles the size.
            stride, padding = (1, 0) if i == 0 else (2, 1)
            layers.append(nn.ConvTranspose2d(in_ch, out_ch, 4, stride, padding, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            in_ch = out_ch
        layers += [nn.ConvTranspose2d(in_ch, channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z_BZ: Tensor) -> Tensor:
        if z_BZ.ndim != 2 or z_BZ.shape[1] != self.z_dim:
            raise ValueError(f"expected z of shape (B, {self.z_dim}), got {tuple(z_BZ.shape)}")
        return self.net(z_BZ[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """img_BCHW -> logits_B (raw, no sigmoid): the generator mirrored, strided convs + LeakyReLU(0.2).

    No batch norm on the first conv (as in the paper); optional dropout after every hidden block.
    """

    def __init__(self, *, resolution: int = 64, base_channels: int = 64, channels: int = 3,
                 batchnorm: bool = True, dropout: float = 0.0):
        super().__init__()
        octaves = num_octaves(resolution)
        _check_positive("base_channels", base_channels)
        _check_positive("channels", channels)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.resolution = resolution
        self.channels = channels

        layers, in_ch = d_downsampling_layers(channels, base_channels, octaves, batchnorm=batchnorm, dropout=dropout)
        self.net = nn.Sequential(*layers, nn.Conv2d(in_ch, 1, 4, 1, 0))

    def forward(self, img_BCHW: Tensor) -> Tensor:
        # A wrong size would not fail in the convs, it would silently give several logits per image.
        if img_BCHW.ndim != 4 or tuple(img_BCHW.shape[1:]) != (self.channels, self.resolution, self.resolution):
            raise ValueError(f"expected images of shape (B, {self.channels}, {self.resolution}, "
                             f"{self.resolution}), got {tuple(img_BCHW.shape)}")
        return self.net(img_BCHW).reshape(img_BCHW.shape[0])


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN paper init, in place: conv weights ~ N(0, 0.02), batch-norm scales ~ N(1, 0.02),
    biases 0. Draws from torch's global RNG, which the loop seeds."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def build_dcgan(*, resolution: int = 64, z_dim: int = 100, base_channels: int = 64,
                g_batchnorm: bool = True, d_batchnorm: bool = True, d_dropout: float = 0.0,
                channels: int = 3) -> dict[str, nn.Module]:
    """A DCGAN generator/discriminator pair for `resolution` (a power of two >= 16), not initialised."""
    return {
        "G": DCGANGenerator(resolution=resolution, z_dim=z_dim, base_channels=base_channels,
                            channels=channels, batchnorm=g_batchnorm),
        "D": DCGANDiscriminator(resolution=resolution, base_channels=base_channels,
                                channels=channels, batchnorm=d_batchnorm, dropout=d_dropout),
    }
