"""A generator that knows nothing about faces: the floor every metric should place a real model above.

    imgs = random_baseline_images(num_images=1000, height=64, width=64, seed=0)   # float [-1, 1] BCHW

Each image is smooth random colour noise (a 2x2 to 8x8 grid of random colours, upsampled
bicubically) with a few soft random-coloured blobs on top: image-like statistics (smooth regions,
edges, colour) without any face structure. Seeded, so a baseline score is reproducible, and scored
exactly like generated samples (all metrics accept it), as the DCGAN report did.

    .venv/bin/python -m pytest tests/test_metrics.py -q -k baseline
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_BLOBS = 4


def random_baseline_images(*, num_images: int, height: int, width: int, seed: int = 0) -> Tensor:
    """`num_images` float32 (N, 3, H, W) images in [-1, 1] from a seeded face-agnostic random process."""
    if num_images < 1 or height < 2 or width < 2:
        raise ValueError(f"expected num_images >= 1 and height, width >= 2, got {num_images}, {height}, {width}")
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(num_images, 3, height, width)
    grids = (2, 4, 8)
    # Each image draws its own noise scale, so the baseline is not one texture repeated.
    scale_idx = torch.randint(len(grids), (num_images,), generator=gen)
    for i in range(num_images):
        g = grids[int(scale_idx[i])]
        base = torch.rand(1, 3, g, g, generator=gen) * 2 - 1
        out[i] = F.interpolate(base, size=(height, width), mode="bicubic", align_corners=False)[0]
    ys = torch.linspace(0, 1, height).view(1, 1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, width)
    for _ in range(NUM_BLOBS):
        cy, cx = (torch.rand(2, num_images, 1, 1, 1, generator=gen))
        radius = 0.05 + 0.2 * torch.rand(num_images, 1, 1, 1, generator=gen)
        colour = torch.rand(num_images, 3, 1, 1, generator=gen) * 2 - 1
        weight = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * radius ** 2))
        out = out * (1 - weight) + colour * weight
    return out.clamp_(-1.0, 1.0)
