"""The one place images change representation: float [-1, 1] <-> uint8 [0, 255], grids and PNG files.

    u8 = as_uint8_images(G(z))                 # B x 3 x H x W uint8, rounded as PNG saving would
    x = as_float_images(u8)                    # float32 in [-1, 1]
    save_grid_png(G(z), "samples/grid.png")    # one tiled PNG
    save_pngs(G(z), "samples/", prefix="s")    # one PNG per image
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from facegan.errors import OutputError


def as_float_images(img_BCHW: Tensor) -> Tensor:
    """uint8 [0, 255] or float [-1, 1] images -> float32 [-1, 1]; ValueError for anything else."""
    if img_BCHW.ndim != 4 or img_BCHW.shape[1] != 3:
        raise ValueError(f"expected RGB images of shape (B, 3, H, W), got {tuple(img_BCHW.shape)}")
    if img_BCHW.dtype == torch.uint8:
        return img_BCHW.to(torch.float32).div_(127.5).sub_(1.0)
    if not img_BCHW.is_floating_point():
        raise ValueError(f"expected uint8 or float images, got {img_BCHW.dtype}")
    if img_BCHW.numel():
        lo, hi = float(img_BCHW.min()), float(img_BCHW.max())
        # A float image in [0, 255] or [0, 1] would give plausible-looking but wrong features.
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"float images must lie in [-1, 1] (pass uint8 for [0, 255]), got [{lo:.3g}, {hi:.3g}]")
    return img_BCHW.float()


def as_uint8_images(img_BCHW: Tensor) -> Tensor:
    """uint8 or float [-1, 1] images (values outside are clipped) -> uint8 [0, 255], rounded as
    saving to PNG would."""
    if img_BCHW.dtype == torch.uint8:
        return img_BCHW
    return ((img_BCHW.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_grid_png(img_BCHW: Tensor, path: str | Path, *, nrow: int | None = None) -> Path:
    """Tile images (float [-1, 1] or uint8) into one PNG with 2 px gaps; `nrow` images per row."""
    from facegan.data.imageio import save_grid

    path = Path(path)
    try:
        save_grid(as_uint8_images(img_BCHW).cpu().numpy(), path, nrow=nrow)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def save_pngs(img_BCHW: Tensor, directory: str | Path, *, prefix: str) -> list[Path]:
    """One PNG per image: <directory>/<prefix>_<index>.png."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    u8 = as_uint8_images(img_BCHW).permute(0, 2, 3, 1).cpu().numpy()
    paths = []
    for i, arr in enumerate(u8):
        paths.append(directory / f"{prefix}_{i:05d}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths
