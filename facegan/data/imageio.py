"""Pixels in and out of shards: build-time crop/resize/encode and train-time decode.

Build time does the expensive part once (decode at reduced JPEG scale, centre crop, resize) so
training only decodes a small image. Train-time decoding must reject anything that is not
exactly the manifest's shape: a corrupt sample is skipped, never turned into a garbage tensor.
"""

from __future__ import annotations

import io
import warnings
import zlib

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, decode_png

from facegan.data.records import DataError

# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; they are still the
# fastest JPEG decoder available here, so keep them and keep the per-call warning quiet.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")


class ImageError(ValueError):
    """An image could not be read or does not have the expected shape."""


def crop_box(src_w: int, src_h: int, crop: str | tuple[int, int], out_h: int, out_w: int
             ) -> tuple[float, float, float, float]:
    """Centred crop box (left, top, right, bottom) in source pixels.

    "square": largest centred square. "none": the whole image. (h, w): a centred h x w box,
    which must fit inside the image.
    """
    if crop == "none":
        return 0.0, 0.0, float(src_w), float(src_h)
    if crop == "square":
        ch = cw = min(src_w, src_h)
    else:
        ch, cw = crop
        if ch > src_h or cw > src_w:
            raise ImageError(f"crop {ch}x{cw} is larger than the image ({src_h}x{src_w})")
    left = (src_w - cw) / 2
    top = (src_h - ch) / 2
    return left, top, left + cw, top + ch


def load_and_prepare(path: str, *, crop: str | tuple[int, int], out_h: int, out_w: int) -> np.ndarray:
    """Read an image file, centre-crop and resize it to (out_h, out_w); returns uint8 HxWx3.

    JPEGs are decoded in draft mode (libjpeg's DCT scaling by 1/2, 1/4, 1/8) at the smallest
    scale that still leaves at least the output resolution inside the crop: most of the decode
    cost of a 178x218 CelebA image disappears when the target is 64x64.
    """
    try:
        with Image.open(path) as img:
            full_w, full_h = img.size
            if img.format == "JPEG":
                box = crop_box(full_w, full_h, crop, out_h, out_w)
                scale = min((box[2] - box[0]) / out_w, (box[3] - box[1]) / out_h)
                if scale >= 2:
                    # draft() picks the largest reduction keeping the image >= the requested size.
                    img.draft("RGB", (int(np.ceil(full_w / scale)), int(np.ceil(full_h / scale))))
            img.load()
            img = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot decode: {type(exc).__name__}: {exc}") from None
    w, h = img.size
    sx, sy = w / full_w, h / full_h  # draft scale factors
    left, top, right, bottom = crop_box(full_w, full_h, crop, out_h, out_w)
    box = (left * sx, top * sy, right * sx, bottom * sy)
    out = img.resize((out_w, out_h), Image.Resampling.BICUBIC, box=box)
    return np.asarray(out, dtype=np.uint8)


def encode(img_HWC: np.ndarray, *, fmt: str, quality: int = 95) -> bytes:
    """Encode a uint8 HxWx3 array as jpg / png / raw (.npy) bytes; deterministic."""
    if fmt == "raw":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(img_HWC, dtype=np.uint8), allow_pickle=False)
        return buf.getvalue()
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(img_HWC, dtype=np.uint8))
    if fmt == "jpg":
        # 4:4:4 chroma: faces at 64 px lose visible colour detail with 4:2:0 subsampling.
        pil.save(buf, format="JPEG", quality=quality, subsampling=0, optimize=False)
    elif fmt == "png":
        pil.save(buf, format="PNG", compress_level=6)
    else:
        raise DataError(f"format: expected jpg, png or raw, got {fmt!r}")
    return buf.getvalue()


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def decode_chw(data: bytes, *, ext: str, height: int, width: int) -> torch.Tensor:
    """Decode shard image bytes to a uint8 3xHxW tensor of exactly (height, width).

    Raises ImageError for anything else (corrupt bytes, wrong shape, wrong channel count).
    """
    try:
        if ext == "npy":
            n = height * width * 3
            # The .npy header is fixed for a given shape, so read the pixels straight from the
            # tail instead of np.load's header parse (the header is checked by `verify`).
            if len(data) < n + 64 or data[:6] != b"\x93NUMPY":
                raise ImageError(f"raw image: expected {n} pixel bytes after an .npy header, got {len(data)} bytes")
            arr = np.frombuffer(data, dtype=np.uint8, count=n, offset=len(data) - n)
            return torch.from_numpy(arr.reshape(height, width, 3).copy()).permute(2, 0, 1)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if ext == "jpg":
            img = decode_jpeg(buf, mode=ImageReadMode.RGB)
        elif ext == "png":
            img = decode_png(buf, mode=ImageReadMode.RGB)
        else:
            raise ImageError(f"unknown image extension {ext!r}")
    except ImageError:
        raise
    except (RuntimeError, ValueError) as exc:
        raise ImageError(f"cannot decode {ext}: {exc}") from None
    if tuple(img.shape) != (3, height, width):
        raise ImageError(f"expected a 3x{height}x{width} image, got {'x'.join(map(str, img.shape))}")
    return img
