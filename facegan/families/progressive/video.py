"""The training video: a frame per tick (PNG on disk, so it survives a resume) and one MP4 at the end.

    save_frame(img_BCHW, out_dir / "video" / "frame-000004096.png", caption="kimg 4.1  50x50")
    write_video(sorted_frames(out_dir / "video"), out_dir / "video.mp4", fps=8)   # PyAV, libx264
    count_frames(out_dir / "video.mp4")

PyAV (`av`) ships its own FFmpeg libraries (libx264 included), so no system ffmpeg is needed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from torch import Tensor

from facegan.data.imageio import tile
from facegan.images import as_uint8_images

FRAME_RE = re.compile(r"^frame-(\d{9})\.png$")


def frame_path(frames_dir: Path, images_seen: int) -> Path:
    return Path(frames_dir) / f"frame-{images_seen:09d}.png"


def sorted_frames(frames_dir: Path) -> list[tuple[int, Path]]:
    """(images seen, path) of every frame in frames_dir, in training order."""
    if not Path(frames_dir).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(frames_dir).iterdir() if (m := FRAME_RE.match(p.name))]
    return sorted(found)


def grid_array(img_BCHW: Tensor, *, nrow: int, caption: str = "") -> np.ndarray:
    """uint8 HxWx3 grid (2 px gaps) with an optional caption strip on top; even sides (H.264 needs them)."""
    from PIL import Image, ImageDraw

    pad = 2
    grid = tile(as_uint8_images(img_BCHW).cpu().numpy(), nrow=nrow, pad=pad, top=14 if caption else 0, even=True)
    if caption:
        pil = Image.fromarray(grid)
        ImageDraw.Draw(pil).text((pad + 1, 1), caption, fill=(0, 0, 0))
        grid = np.asarray(pil)
    return grid


def save_frame(img_BCHW: Tensor, path: Path, *, nrow: int = 8, caption: str = "") -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(grid_array(img_BCHW, nrow=nrow, caption=caption)).save(tmp, format="PNG")
    os.replace(tmp, path)  # a frame is whole or absent, even if the run dies while writing it
    return path


def write_video(frames: list[Path], path: Path, *, fps: int) -> Path:
    """H.264 MP4 of the PNG frames (all the size of the first; others are padded or cropped to it)."""
    import av
    from PIL import Image

    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    first = np.asarray(Image.open(frames[0]).convert("RGB"))
    height, width = first.shape[:2]
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for f in frames:
            arr = np.asarray(Image.open(f).convert("RGB"))
            canvas = np.full((height, width, 3), 255, dtype=np.uint8)
            h, w = min(height, arr.shape[0]), min(width, arr.shape[1])
            canvas[:h, :w] = arr[:h, :w]
            for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def count_frames(path: Path) -> int:
    """Frames in a video file, decoded (not the container's claim)."""
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))
