"""Pixels in and out of shards: build-time crop/resize/encode and train-time decode.

Build time does the expensive part once (decode at reduced JPEG scale, centre crop, resize) so
training only decodes a small image. Train-time decoding must reject anything that is not
exactly the manifest's shape: a corrupt sample is skipped, never turned into a garbage tensor.

JPEG decode and encode use libjpeg-turbo through simplejpeg: less overhead per call than PIL's
codec path or torchvision's decode_jpeg (the same library underneath, the same pixels), and n/8
DCT scaling where PIL's draft mode has only 1/2^k. Torch is not imported here at module level,
so build workers and Ray tasks start without it.
"""

from __future__ import annotations

import functools
import io
import os
import time
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import simplejpeg
from PIL import Image

from facegan.data.records import DataError

if TYPE_CHECKING:
    import torch

# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec; code that still
# uses them (torchvision.io) should not print a warning per call.
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


def check_source_size(w: int, h: int, *, min_side: int = 0, max_aspect: float = 0.0) -> None:
    """Raise ImageError when a w x h source is too small or too elongated to be a face photo."""
    if min_side and min(w, h) < min_side:
        raise ImageError(f"image is {w}x{h} (w x h): its shorter side is below min_side {min_side} px")
    if max_aspect and max(w, h) > max_aspect * min(w, h):
        raise ImageError(f"image is {w}x{h} (w x h): aspect ratio {max(w, h) / max(min(w, h), 1):.1f} "
                         f"is above max_aspect {max_aspect:g}")


def _timed(stats: dict[str, float] | None, name: str, t0: float) -> float:
    t1 = time.perf_counter()
    if stats is not None:
        stats[name] = stats.get(name, 0.0) + (t1 - t0)
    return t1


def read_file(path: str, *, stats: dict[str, float] | None = None) -> bytes:
    return read_file_stat(path, stats=stats)[0]


def read_file_stat(path: str, *, stats: dict[str, float] | None = None) -> tuple[bytes, tuple[int, int]]:
    """A file's bytes and its (size, mtime_ns) from the open file (fstat: the same file that was read)."""
    t0 = time.perf_counter()
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    _timed(stats, "read", t0)
    return data, (st.st_size, st.st_mtime_ns)


def _check_size(full_w: int, full_h: int, *, min_side: int, max_aspect: float) -> None:
    if full_w * full_h > Image.MAX_IMAGE_PIXELS:
        # Refused, not decoded into memory (PIL itself only warns up to twice this size).
        raise ImageError(f"image is {full_w}x{full_h}: more than {Image.MAX_IMAGE_PIXELS:,} pixels")
    check_source_size(full_w, full_h, min_side=min_side, max_aspect=max_aspect)


def _decode_jpeg_scaled(data: bytes, crop: str | tuple[int, int], out_h: int, out_w: int, *, min_side: int,
                        max_aspect: float) -> tuple[np.ndarray, int, int, tuple[float, float, float, float]] | None:
    """libjpeg-turbo (simplejpeg) decode at the smallest DCT scale (n/8) that keeps the crop at
    least (out_h, out_w); None when it cannot (not a baseline RGB/gray JPEG: PIL handles it)."""
    try:
        full_h, full_w, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    _check_size(full_w, full_h, min_side=min_side, max_aspect=max_aspect)
    box = crop_box(full_w, full_h, crop, out_h, out_w)
    # Decoded size needed so the crop box still spans the output size.
    min_w = min(full_w, -(-full_w * out_w // max(1, int(box[2] - box[0]))))
    min_h = min(full_h, -(-full_h * out_h // max(1, int(box[3] - box[1]))))
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_h, min_width=min_w, strict=True)
    except ValueError:
        return None
    return arr, full_w, full_h, box


# EXIF orientation -> the transpose that shows the photo upright (PIL's ImageOps.exif_transpose table).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def _jpeg_has_exif(data: bytes) -> bool:
    """Whether a JPEG carries an EXIF segment (APP1 "Exif") before its image data: only those can
    be rotated, and only those pay for PIL's EXIF parse."""
    i, n = 2, min(len(data), 1 << 16)
    while i + 10 <= n and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xDA:   # start of scan: no more headers
            return False
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\0\0":
            return True
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return False


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001  (a damaged EXIF block: show the pixels as stored)
        return 1
    return value if value in _ORIENTATION else 1


def to_rgb8(img: Image.Image) -> Image.Image:
    """An RGB image with 8 bits per channel. 16-bit greyscale (PNG, TIFF: modes I;16*, I) is scaled
    down, not clipped (PIL's convert("RGB") turns every value above 255 white); float images are
    refused (no agreed range)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if img.mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageError(f"32-bit integer image with values {arr.min()}..{arr.max()}: expected 8 or 16 bits")
        return Image.fromarray((arr >> 8).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "F":
        raise ImageError("32-bit float image: no agreed pixel range; convert it to 8 or 16 bits")
    return img.convert("RGB")


def prepare(data: bytes, *, crop: str | tuple[int, int], out_h: int, out_w: int, min_side: int = 0,
            max_aspect: float = 0.0, stats: dict[str, float] | None = None) -> Image.Image:
    """Decode encoded image bytes, centre-crop and resize to (out_h, out_w); returns an RGB image.

    JPEGs are decoded by libjpeg-turbo with DCT scaling (n/8) to the smallest size that still
    leaves at least the output resolution inside the crop: most of the decode cost of a 178x218
    CelebA image disappears when the target is 64x64 (it decodes at 67x82). Other formats, JPEGs
    libjpeg-turbo will not turn into RGB (CMYK) and JPEGs with EXIF go through PIL (draft mode for
    JPEG). Photos are turned upright by their EXIF orientation (phones store them sideways) before
    the crop; 16-bit images are scaled to 8 bits (`to_rgb8`). Corrupt or truncated files raise
    ImageError. `stats` (optional) accumulates seconds spent per stage ("decode", "resize").
    """
    t0 = time.perf_counter()
    fast = _decode_jpeg_scaled(data, crop, out_h, out_w, min_side=min_side, max_aspect=max_aspect) \
        if data[:2] == b"\xff\xd8" and not _jpeg_has_exif(data) else None
    if fast is not None:
        arr, full_w, full_h, box = fast
        img = Image.fromarray(arr)
    else:
        try:
            with Image.open(io.BytesIO(data)) as img:
                orientation = _orientation(img)
                full_w, full_h = img.size
                if orientation >= 5:   # the upright photo is the stored one turned by 90 degrees
                    full_w, full_h = full_h, full_w
                _check_size(full_w, full_h, min_side=min_side, max_aspect=max_aspect)
                box = crop_box(full_w, full_h, crop, out_h, out_w)
                if img.format == "JPEG" and orientation == 1:
                    scale = min((box[2] - box[0]) / out_w, (box[3] - box[1]) / out_h)
                    if scale >= 2:
                        # draft() picks the largest reduction keeping the image >= the requested size.
                        img.draft("RGB", (int(np.ceil(full_w / scale)), int(np.ceil(full_h / scale))))
                img.load()
                img = to_rgb8(img)
                if orientation != 1:
                    img = img.transpose(_ORIENTATION[orientation])
        except ImageError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise ImageError(f"cannot decode: {type(exc).__name__}: {exc}") from None
    t0 = _timed(stats, "decode", t0)
    w, h = img.size
    sx, sy = w / full_w, h / full_h  # DCT / draft scale factors
    left, top, right, bottom = box
    out = img.resize((out_w, out_h), Image.Resampling.BICUBIC, box=(left * sx, top * sy, right * sx, bottom * sy))
    _timed(stats, "resize", t0)
    return out


def load_and_prepare(path: str, *, crop: str | tuple[int, int], out_h: int, out_w: int, min_side: int = 0,
                     max_aspect: float = 0.0) -> np.ndarray:
    """Read an image file, centre-crop and resize it to (out_h, out_w); returns uint8 HxWx3.

    See `prepare`; `min_side`/`max_aspect` (0: no bound) refuse tiny or extreme sources.
    """
    img = prepare(read_file(path), crop=crop, out_h=out_h, out_w=out_w, min_side=min_side,
                  max_aspect=max_aspect)
    return np.asarray(img, dtype=np.uint8)


def encode(img_HWC: np.ndarray | Image.Image, *, fmt: str, quality: int = 95) -> bytes:
    """Encode a uint8 HxWx3 array (or an RGB PIL image) as jpg / png / raw (.npy) bytes; deterministic."""
    if fmt == "raw":
        arr = np.ascontiguousarray(np.asarray(img_HWC), dtype=np.uint8)
        return _npy_header(arr.shape) + arr.tobytes()
    if fmt == "jpg":
        # libjpeg-turbo; 4:4:4 chroma: faces at 64 px lose visible colour detail with 4:2:0.
        arr = np.ascontiguousarray(np.asarray(img_HWC), dtype=np.uint8)
        return simplejpeg.encode_jpeg(arr, quality=quality, colorspace="RGB", colorsubsampling="444")
    buf = io.BytesIO()
    pil = img_HWC if isinstance(img_HWC, Image.Image) else Image.fromarray(np.ascontiguousarray(img_HWC, dtype=np.uint8))
    if fmt == "png":
        pil.save(buf, format="PNG", compress_level=6)
    else:
        raise DataError(f"format: expected jpg, png or raw, got {fmt!r}")
    return buf.getvalue()


@functools.lru_cache(maxsize=16)
def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The .npy header np.save writes for a uint8 C-order array of `shape` (the same for every
    image of a set, so it is made once instead of per image)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def decode_hwc(data: bytes, *, ext: str, height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """Decode shard image bytes to a uint8 HxWx3 array of exactly (height, width), written into
    `out` (an HxWx3 uint8 array, e.g. one row of a batch) when given.

    JPEG goes through libjpeg-turbo (simplejpeg; the same pixels as torchvision's decode_jpeg,
    with less overhead per call). Raises ImageError for anything else: corrupt bytes, a wrong
    shape or channel count.
    """
    try:
        if ext == "jpg" or ext == "jpeg":   # "jpeg": the extension of some imported sets
            arr = simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
        elif ext == "npy":
            n = height * width * 3
            # The .npy header is fixed for a given shape, so read the pixels straight from the
            # tail instead of np.load's header parse (the header is checked by `verify`).
            if len(data) < n + 64 or data[:6] != b"\x93NUMPY":
                raise ImageError(f"raw image: expected {n} pixel bytes after an .npy header, got {len(data)} bytes")
            arr = np.frombuffer(data, dtype=np.uint8, count=n, offset=len(data) - n).reshape(height, width, 3)
        elif ext == "png":
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "PNG":
                    raise ImageError(f"expected a PNG, found {img.format}")
                arr = np.asarray(to_rgb8(img))
        else:
            raise ImageError(f"unknown image extension {ext!r}")
    except ImageError:
        raise
    except (OSError, SyntaxError, RuntimeError, ValueError, EOFError) as exc:
        raise ImageError(f"cannot decode {ext}: {exc}") from None
    if arr.shape != (height, width, 3):
        raise ImageError(f"expected a {height}x{width}x3 image, got {'x'.join(map(str, arr.shape))}")
    if out is not None and ext != "jpg" and ext != "jpeg":   # simplejpeg decoded a right-sized JPEG into `out` itself
        out[...] = arr
        return out
    return arr


def decode_chw(data: bytes, *, ext: str, height: int, width: int) -> "torch.Tensor":
    """Decode shard image bytes to a uint8 3xHxW tensor of exactly (height, width) (see
    `decode_hwc`). Raises ImageError for anything else."""
    import torch

    arr = np.ascontiguousarray(decode_hwc(data, ext=ext, height=height, width=width))
    if not arr.flags.writeable:   # raw (.npy) pixels are a view of the sample's bytes
        arr = arr.copy()
    return torch.from_numpy(arr).permute(2, 0, 1)


def tile(imgs_NCHW: np.ndarray, *, nrow: int | None = None, pad: int = 2, top: int = 0,
         even: bool = False) -> np.ndarray:
    """uint8 NxCxHxW images tiled into one uint8 HxWx3 array on white: `nrow` per row (default:
    as square as can be), `pad` px between and around them, `top` px of blank strip above (room for
    a caption), `even`: both sides rounded up to even (H.264 frames need them). The one tiler:
    grids, shard previews and video frames."""
    n, _, h, w = imgs_NCHW.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = -(-n // nrow)
    height, width = top + rows * (h + pad) + pad, nrow * (w + pad) + pad
    if even:
        height, width = height + height % 2, width + width % 2
    grid = np.full((height, width, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        y, x = top + pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = imgs_NCHW[i].transpose(1, 2, 0)
    return grid


def save_grid(imgs_NCHW: np.ndarray, path: str | Path, *, nrow: int | None = None) -> None:
    """Tile uint8 NxCxHxW images into one PNG (2 px gaps)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tile(imgs_NCHW, nrow=nrow)).save(path)
