"""InfoBEGAN's latent predictor Q: BEGAN's encoder (D's architecture, its own weights) and a head
predicting [categorical logits | continuous codes | z (with noise recovery)] from an image.
G and D are BEGAN's (facegan.families.began.nets), G on the whole latent.

    Q = LatentPredictorQ(resolution=64, base_channels=64, h_dim=64, hidden=128, out_dim=12 + 64)
    q_BQ = Q(img_BCHW)
"""

from __future__ import annotations

from torch import Tensor, nn

from facegan.families.began.nets import BEGANEncoder, began_init_
from facegan.families.infogan.nets import VectorHead


class LatentPredictorQ(nn.Module):
    """img_BCHW -> q_BQ through BEGAN's encoder and a one-hidden-layer head."""

    def __init__(self, *, resolution: int = 64, base_channels: int = 64, h_dim: int = 64, hidden: int = 128,
                 out_dim: int, channels: int = 3):
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        self.encoder = BEGANEncoder(resolution=resolution, base_channels=base_channels, h_dim=h_dim, channels=channels)
        self.head = VectorHead(h_dim, hidden, out_dim)
        began_init_(self)

    def forward(self, img_BCHW: Tensor) -> Tensor:
        return self.head(self.encoder(img_BCHW))
