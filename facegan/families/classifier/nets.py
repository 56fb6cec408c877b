"""Face-attribute classifiers: the "favorite face" report's small CNN and a ResNet-18 backbone.

    net = CLASSIFIERS["report_cnn"](num_attrs=40, resolution=64)
    logits_BA = net(img_BCHW)              # images in [-1, 1]; sigmoid + BCE live in the loss
    feat_BF = net.features(img_BCHW)       # penultimate features (FID on attribute features)

Both nets take any power-of-two resolution from 16 up (64 and 128 are the ones used on CelebA),
have `forward(img_BCHW) -> logits_BA` and `features(img_BCHW) -> Tensor[B, feature_dim]`, and
expose `feature_dim`. Architecture only: the phase lives in facegan.families.classifier.steps, DDP and devices in the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _pooled(size: int, *, pool: int, times: int) -> int:
    for _ in range(times):
        size //= pool
    return size


class ReportCNN(nn.Module):
    """The student report's CNN: 3 x (conv 3x3 -> ReLU -> max-pool), dense 1024, dropout, logits.

    The report says "kernel, pool and stride 3". Read as Keras code would be written: convolutions
    with 3x3 kernels (stride 1, padded so they keep the size) and 3x3 max-pools with stride 3
    (Keras' MaxPooling2D(3) strides by its pool size). A stride-3 convolution followed by a
    stride-3 pool would shrink 64 px to nothing after two blocks. Each block divides the side by 3
    (floor): 64 -> 21 -> 7 -> 2, so the dense layer sees 128*2*2 = 512 inputs at 64 px, 128*4*4
    at 128 px and 128*1*1 at 32 px. Dropout sits after the dense layer's ReLU, before the logits.
    """

    def __init__(self, *, num_attrs: int = 40, resolution: int = 64, channels: int = 3,
                 filters: tuple[int, ...] = (32, 64, 128), dense_units: int = 1024, dropout: float = 0.3,
                 pool: int = 3) -> None:
        super().__init__()
        side = _pooled(resolution, pool=pool, times=len(filters))
        if side < 1:
            raise ValueError(f"resolution: {resolution} px is too small for {len(filters)} pools of {pool}")
        layers: list[nn.Module] = []
        c_in = channels
        for c_out in filters:
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                       nn.MaxPool2d(kernel_size=pool, stride=pool)]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, dense_units), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dense_units, num_attrs)
        self.feature_dim = dense_units

    def features(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        """The dense layer's activations (after ReLU, before dropout): B x dense_units."""
        return self.dense(self.convs(img_BCHW))

    def forward(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(img_BCHW)))


class ResNet18Classifier(nn.Module):
    """torchvision's ResNet-18 (trained from scratch) with a stem sized to the input.

    ImageNet's stem (7x7 stride-2 conv + stride-2 max-pool) divides the side by 4, which leaves
    a 64 px face 2x2 before the last stage. The stem here divides by resolution/32 (at most 4),
    so layer1 always sees 32x32 or more: 32 px gets a 3x3 stride-1 conv and no pool (the CIFAR
    stem), 64 px the 7x7 stride-2 conv and no pool, 128 px and up the ImageNet stem.
    """

    def __init__(self, *, num_attrs: int = 40, resolution: int = 64, channels: int = 3) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None, num_classes=num_attrs)
        factor = min(4, max(1, resolution // 32))
        if factor == 1:
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif factor == 2:
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            net.maxpool = nn.Identity()
        elif channels != 3:
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net
        self.feature_dim = self.head.in_features

    def features(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled layer4 activations: B x 512."""
        return self.body(img_BCHW)

    def forward(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(img_BCHW))


def build_report_cnn(*, num_attrs: int, resolution: int, dense_units: int = 1024, dropout: float = 0.3,
                     **_: object) -> nn.Module:
    return ReportCNN(num_attrs=num_attrs, resolution=resolution, dense_units=dense_units, dropout=dropout)


def build_resnet18(*, num_attrs: int, resolution: int, **_: object) -> nn.Module:
    # dense_units / dropout belong to the report CNN; ResNet-18 has neither.
    return ResNet18Classifier(num_attrs=num_attrs, resolution=resolution)


# arch name -> builder(num_attrs=, resolution=, dense_units=, dropout=) -> nn.Module
CLASSIFIERS: dict[str, Callable[..., nn.Module]] = {
    "report_cnn": build_report_cnn,
    "resnet18": build_resnet18,
}
