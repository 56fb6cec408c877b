"""BEGAN's nets (Berthelot et al. 2017, Fig. 1): an encoder, a decoder, D = decoder(encoder(x)) and
G with the decoder's architecture. Square images, a power of two >= 16 (8x8 at the bottleneck).

    enc = BEGANEncoder(resolution=64, base_channels=64, h_dim=64)       # img -> h (64)
    dec = BEGANDecoder(resolution=64, base_channels=64, in_dim=64)      # h -> img
    nets = build_began(resolution=64, z_dim=64, h_dim=64, base_channels=64)
    recon_BCHW = nets["D"](img_BCHW); img_BCHW = nets["G"](z_BZ)

Architecture and init only: losses and k_t live in steps.py. `began_init_` is Glorot/Xavier (the
reference TensorFlow code's default): PyTorch's default init shrinks the signal through the dozen
3x3 convs so much that a fresh G's images hardly depend on z (std over a batch ~0.002 at 64 px,
against ~0.14 with Xavier), which starves InfoBEGAN's predictor of anything to recover.
"""

from __future__ import annotations

from torch import Tensor, nn

BOTTLENECK = 8          # the embedding is mapped to and from an 8x8 map


def began_octaves(resolution: int) -> int:
    """Halvings between `resolution` and 8x8 (3 at 64x64). ValueError naming the allowed sizes."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 16 \
            or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 16 (32, 64, 128), got {resolution!r}")
    return resolution.bit_length() - 1 - 3


def _conv(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride, 1)


class BEGANEncoder(nn.Module):
    """img_BCHW -> h_BH: per scale two 3x3 convs (ELU), then a stride-2 conv adding n channels;
    two more convs at 8x8, then fully connected to the embedding."""

    def __init__(self, *, resolution: int = 64, base_channels: int = 64, h_dim: int = 64, channels: int = 3):
        super().__init__()
        octaves = began_octaves(resolution)
        n = base_channels
        self.resolution, self.channels, self.out_features = resolution, channels, h_dim
        layers: list[nn.Module] = [_conv(channels, n), nn.ELU(inplace=True)]
        for i in range(octaves):
            ch = n * (i + 1)
            layers += [_conv(ch, ch), nn.ELU(inplace=True), _conv(ch, ch), nn.ELU(inplace=True),
                       _conv(ch, n * (i + 2), stride=2), nn.ELU(inplace=True)]
        ch = n * (octaves + 1)
        layers += [_conv(ch, ch), nn.ELU(inplace=True), _conv(ch, ch), nn.ELU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(BOTTLENECK * BOTTLENECK * ch, h_dim)

    def forward(self, img_BCHW: Tensor) -> Tensor:
        if img_BCHW.ndim != 4 or tuple(img_BCHW.shape[1:]) != (self.channels, self.resolution, self.resolution):
            raise ValueError(f"expected images of shape (B, {self.channels}, {self.resolution}, {self.resolution}), "
                             f"got {tuple(img_BCHW.shape)}")
        return self.fc(self.convs(img_BCHW).flatten(1))


class BEGANDecoder(nn.Module):
    """v_BV -> img_BCHW: fully connected to 8x8xn, per scale two 3x3 convs (ELU) and a nearest-neighbour
    upsampling, two more convs and a conv to `channels`; `tanh` bounds the output (G)."""

    def __init__(self, *, resolution: int = 64, base_channels: int = 64, in_dim: int = 64, channels: int = 3,
                 tanh: bool = False):
        super().__init__()
        octaves = began_octaves(resolution)
        n = base_channels
        self.in_dim, self.base_channels = in_dim, n
        self.z_dim = in_dim
        self.fc = nn.Linear(in_dim, BOTTLENECK * BOTTLENECK * n)
        layers: list[nn.Module] = []
        for _ in range(octaves):
            layers += [_conv(n, n), nn.ELU(inplace=True), _conv(n, n), nn.ELU(inplace=True),
                       nn.Upsample(scale_factor=2, mode="nearest")]
        layers += [_conv(n, n), nn.ELU(inplace=True), _conv(n, n), nn.ELU(inplace=True), _conv(n, channels)]
        if tanh:
            layers.append(nn.Tanh())
        self.convs = nn.Sequential(*layers)

    def forward(self, v_BV: Tensor) -> Tensor:
        if v_BV.ndim != 2 or v_BV.shape[1] != self.in_dim:
            raise ValueError(f"expected inputs of shape (B, {self.in_dim}), got {tuple(v_BV.shape)}")
        return self.convs(self.fc(v_BV).view(-1, self.base_channels, BOTTLENECK, BOTTLENECK))


class BEGANAutoencoder(nn.Module):
    """BEGAN's discriminator: img_BCHW -> its reconstruction (no tanh: an L1 target in [-1, 1])."""

    def __init__(self, *, resolution: int = 64, base_channels: int = 64, h_dim: int = 64, channels: int = 3):
        super().__init__()
        self.encoder = BEGANEncoder(resolution=resolution, base_channels=base_channels, h_dim=h_dim, channels=channels)
        self.decoder = BEGANDecoder(resolution=resolution, base_channels=base_channels, in_dim=h_dim, channels=channels)

    def forward(self, img_BCHW: Tensor) -> Tensor:
        return self.decoder(self.encoder(img_BCHW))


def began_init_(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every conv and linear layer, in place (draws from
    torch's global RNG, which the loop seeds)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_began(*, resolution: int = 64, z_dim: int = 64, h_dim: int = 64, base_channels: int = 64,
                channels: int = 3) -> dict[str, nn.Module]:
    """G (the decoder's architecture on z, tanh) and D (the autoencoder), initialised (began_init_)."""
    nets = {"G": BEGANDecoder(resolution=resolution, base_channels=base_channels, in_dim=z_dim, channels=channels,
                              tanh=True),
            "D": BEGANAutoencoder(resolution=resolution, base_channels=base_channels, h_dim=h_dim, channels=channels)}
    for net in nets.values():
        began_init_(net)
    return nets
