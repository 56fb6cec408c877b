"""Shard-build throughput against the single-core decode+crop+resize limit, measured in one run.

    .venv/bin/python benchmarks/bench_build.py --root ../shared/data/celeba_sample
    .venv/bin/python benchmarks/bench_build.py              # synthetic faces if no --root

Target (2-core machine): build rate >= 0.8 x limit x cores, where `limit` is what one core does
when it only decodes (JPEG draft mode), crops and resizes to 64x64 — no encoding, no tar, no I/O.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from facegan.config import from_dict
from facegan.data.imageio import encode, load_and_prepare
from facegan.data.recipe import ShardRecipe
from facegan.data.writer import build_shards, scan_source


def rate(fn, items, *, min_seconds: float = 3.0) -> float:
    """Items per second of fn over items, repeated until min_seconds have passed."""
    n, t0 = 0, time.perf_counter()
    while True:
        for it in items:
            fn(it)
            n += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="CelebA folder (img_align_celeba/ + list_attr_celeba.txt)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--count", type=int, default=3000, help="synthetic faces when no --root")
    args = ap.parse_args()

    source = {"source": "celeba"} if args.root else {"source": "synthetic", "count": args.count}
    recipe = from_dict(ShardRecipe, dict(source, resolution=args.resolution, workers=args.workers,
                                         shard_size=250))
    scan = scan_source(recipe, root=args.root)
    cores = min(args.workers, os.cpu_count() or 1)
    print(f"source {recipe.source}: {len(scan.items)} images -> {recipe.height}x{recipe.width}, "
          f"{cores} cores")

    if args.root:
        paths = [it.path for it in scan.items[:400]]
        size = args.resolution

        def full_decode_resize(p: str) -> None:   # naive: full-size decode, then crop + resize
            with Image.open(p) as im:
                im = im.convert("RGB")
                s = min(im.size)
                left, top = (im.width - s) // 2, (im.height - s) // 2
                im.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + s, top + s))

        naive = rate(full_decode_resize, paths)
        limit = rate(lambda p: load_and_prepare(p, crop="square", out_h=size, out_w=size), paths)
        img = load_and_prepare(paths[0], crop="square", out_h=size, out_w=size)
        enc = rate(lambda _: encode(img, fmt="jpg"), range(200))
        print(f"one core, full decode + crop + resize (no draft):   {naive:8.0f} img/s")
        print(f"one core, draft decode + crop + resize  = limit:    {limit:8.0f} img/s")
        print(f"one core, JPEG encode of the {size}px result:          {enc:8.0f} img/s")
    else:
        from facegan.data.synthetic import render_face

        limit = rate(lambda i: render_face(seed=0, index=i, height=recipe.height, width=recipe.width), range(300))
        print(f"one core, synthetic render = limit:                  {limit:8.0f} img/s")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = build_shards(recipe, root=args.root, out=Path(tmp) / "shards", progress=False)
        dt = time.perf_counter() - t0
    n = result.manifest["counts"]["total"]
    build_rate = n / dt
    target = 0.8 * limit * cores
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"facegan shards build, {cores} workers (scan + decode + encode + tar + sha256): "
          f"{n} images in {dt:.2f} s = {build_rate:.0f} img/s")
    print(f"ratio to limit x cores: {build_rate / (limit * cores):.2f}  (target >= 0.80: "
          f"{'met' if build_rate >= target else 'NOT met'})")
    print(f"peak RSS: main {peak:.0f} MiB, largest worker {peak_children:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
