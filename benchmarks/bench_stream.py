"""Streaming throughput: normalised 64x64 batches of 128 from shards vs a per-file JPEG loader.

    .venv/bin/python benchmarks/bench_stream.py --root ../shared/data/celeba_sample
    .venv/bin/python benchmarks/bench_stream.py              # synthetic faces if no --root

The baseline is what `torchvision.datasets.CelebA` + transforms does: open each original JPEG,
Resize(64) + CenterCrop(64) + ToTensor + Normalize, per item, batched by a DataLoader. Both run in
the same process on one core (torch threads = 1, no loader workers) and then with 2 loader
workers; per-core figures divide by the cores used. Targets: >= 8,000 img/s per core and >= 5x
the baseline.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from facegan.config import from_dict
from facegan.data.recipe import ShardRecipe
from facegan.data.stream import ShardSet, train_loader
from facegan.data.writer import build_shards


class PerFileCelebA(Dataset):
    """The usual map-style loader: one JPEG file per item, transformed on the fly."""

    def __init__(self, paths: list[str], size: int) -> None:
        self.paths = paths
        self.tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                                      transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as im:
            return self.tf(im.convert("RGB"))


def measure(batches, *, batch_size: int, seconds: float) -> float:
    it = iter(batches)
    next(it)  # start-up (worker spawn, first shard open) is not throughput
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            b = next(it)
        except StopIteration:
            it = iter(batches)
            continue
        n += b["image"].shape[0] if isinstance(b, dict) else b.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="CelebA folder; default: synthetic faces")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--format", default="jpg", choices=["jpg", "png", "raw"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    bs = args.batch_size

    with tempfile.TemporaryDirectory() as tmp:
        source = {"source": "celeba"} if args.root else {"source": "synthetic", "count": 3000}
        recipe = from_dict(ShardRecipe, dict(source, resolution=64, shard_size=250, format=args.format))
        build_shards(recipe, root=args.root, out=Path(tmp) / "s", progress=False)
        shard_set = ShardSet.open(str(Path(tmp) / "s"))
        print(f"shards: {shard_set.count('train')} train images, 64x64 {args.format}, batches of {bs}")

        rows = []
        for workers in (0, 2):
            loader = train_loader(shard_set, batch_size=bs, num_workers=workers, seed=0)
            r = measure(loader, batch_size=bs, seconds=args.seconds)
            rows.append(("facegan stream", workers, r))
            del loader

        if args.root:
            paths = sorted(str(p) for p in (Path(args.root) / "img_align_celeba").glob("*.jpg"))
        else:  # the baseline needs files: write the synthetic faces as 178x218 JPEGs
            from facegan.data.synthetic import render_face

            paths = []
            for i in range(600):
                p = Path(tmp) / "files" / f"{i:06d}.jpg"
                p.parent.mkdir(exist_ok=True)
                Image.fromarray(render_face(seed=0, index=i, height=218, width=178)).save(p, quality=95)
                paths.append(str(p))
        for workers in (0, 2):
            dl = DataLoader(PerFileCelebA(paths, 64), batch_size=bs, shuffle=True, num_workers=workers,
                            drop_last=True, persistent_workers=workers > 0)
            rows.append(("per-file JPEG loader", workers, measure(dl, batch_size=bs, seconds=args.seconds)))
            del dl

    print(f"{'loader':<22} {'workers':>7} {'img/s':>9} {'img/s/core':>11}")
    per_core = {}
    for name, workers, r in rows:
        cores = max(1, min(workers, os.cpu_count() or 1)) if workers else 1
        per_core[(name, workers)] = r / cores
        print(f"{name:<22} {workers:>7} {r:9.0f} {r / cores:11.0f}")
    ours, base = per_core[("facegan stream", 0)], per_core[("per-file JPEG loader", 0)]
    ours2, base2 = per_core[("facegan stream", 2)], per_core[("per-file JPEG loader", 2)]
    print(f"one core: {ours:.0f} img/s per core (target >= 8000: {'met' if ours >= 8000 else 'NOT met'}), "
          f"{ours / base:.1f}x the per-file loader (target >= 5x: {'met' if ours / base >= 5 else 'NOT met'})")
    print(f"2 workers: {ours2:.0f} img/s per core, {ours2 / base2:.1f}x the per-file loader")
    print(f"peak RSS: main {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB, "
          f"largest loader worker {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
