"""Streaming throughput: normalised 64x64 batches of 128 from shards, against a per-file JPEG loader
and against bare JPEG decoding, all measured in this run.

    .venv/bin/python benchmarks/bench_stream.py --root ../shared/data/celeba_sample
    .venv/bin/python benchmarks/bench_stream.py              # synthetic faces if no --root

Baselines, measured in the same process on one core (torch threads = 1, no loader workers):
  - per-file loader: what `torchvision.datasets.CelebA` + transforms does: open each original JPEG,
    Resize(64) + CenterCrop(64) + ToTensor + Normalize, per item, batched by a DataLoader
    (target: the shard stream >= 5x it, with JPEG shards);
  - bare decode: torchvision.io.decode_jpeg on the shards' own 64x64 JPEGs, nothing else (no
    tar parsing, no checksums, no labels, no batching): the moonshot is one-core stream
    throughput >= 0.8x it. Bare simplejpeg decode (what the stream uses) is printed beside it.
Loader cores per GPU: one core streams R img/s, so a GPU consuming G img/s needs G / R loader
cores; printed per 1,000 img/s of GPU throughput, for the uint8 batches the training loop asks for
on a GPU (it normalises on the device), in-process and through 2 loader workers.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import simplejpeg
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg

from facegan.config import from_dict
from facegan.data.recipe import ShardRecipe
from facegan.data.stream import ShardSet, train_loader
from facegan.data.tario import iter_samples
from facegan.data.writer import build_shards

warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")


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


def measure(batches, *, seconds: float) -> float:
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


class RoundRobin:
    """One-core configurations measured in turns of `slice_s` seconds until each has run
    `seconds`: load from other processes drifts, and turns give every configuration the same
    mix of it. Each step returns the number of images it handled; wall and CPU time are summed."""

    def __init__(self) -> None:
        self.steps: dict[str, Any] = {}
        self.done: dict[str, list[float]] = {}

    def add(self, name: str, step: Any) -> None:
        step()  # warm-up: first shard open, first allocation
        self.steps[name] = step
        self.done[name] = [0, 0.0, 0.0]

    def run(self, *, seconds: float, slice_s: float = 0.5) -> dict[str, tuple[float, float]]:
        for _ in range(max(1, int(seconds / slice_s))):
            for name, step in self.steps.items():
                n, t0, c0 = 0, time.perf_counter(), time.process_time()
                while time.perf_counter() - t0 < slice_s:
                    n += step()
                acc = self.done[name]
                acc[0] += n
                acc[1] += time.perf_counter() - t0
                acc[2] += time.process_time() - c0
        return {name: (n / wall, n / cpu) for name, (n, wall, cpu) in self.done.items()}


def _batches(loader: Any) -> Any:
    it = iter(loader)

    def step() -> int:
        nonlocal it
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        return b["image"].shape[0] if isinstance(b, dict) else b.shape[0]
    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="CelebA folder; default: synthetic faces")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=8.0, help="per configuration")
    ap.add_argument("--formats", default="jpg,raw", help="shard formats to stream (jpg, png, raw)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bs = args.batch_size
    formats = args.formats.split(",")
    one_core = RoundRobin()
    two_workers: dict[str, float] = {}

    with tempfile.TemporaryDirectory() as tmp:
        source = {"source": "celeba"} if args.root else {"source": "synthetic", "count": 3000}
        sets = {}
        for fmt in formats:
            recipe = from_dict(ShardRecipe, dict(source, resolution=64, shard_size=250, format=fmt))
            build_shards(recipe, root=args.root, out=Path(tmp) / fmt, progress=False)
            sets[fmt] = ShardSet.open(str(Path(tmp) / fmt))
            print(f"shards: {sets[fmt].count('train')} train images, 64x64 {fmt}, batches of {bs}")
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

        for fmt in formats:
            one_core.add(f"facegan stream, {fmt}", _batches(train_loader(sets[fmt], batch_size=bs, num_workers=0)))
        if "jpg" in formats:
            one_core.add("facegan stream, jpg, channels_last",
                         _batches(train_loader(sets["jpg"], batch_size=bs, num_workers=0, channels_last=True)))
            # What the training loop asks for on a GPU: uint8 batches, normalised on the device.
            one_core.add("facegan stream, jpg, uint8",
                         _batches(train_loader(sets["jpg"], batch_size=bs, num_workers=0, normalize=False)))
            one_core.add("facegan stream, jpg, uint8, channels_last",
                         _batches(train_loader(sets["jpg"], batch_size=bs, num_workers=0, normalize=False,
                                               channels_last=True)))
            with open(Path(tmp) / "jpg" / sets["jpg"].shards("train")[0]["name"], "rb") as f:
                jpgs = [smp["jpg"] for smp in iter_samples(f)][:bs]
            tensors = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpgs]
            one_core.add("bare decode_jpeg", lambda: sum(1 for t in tensors if decode_jpeg(t, mode=ImageReadMode.RGB)
                                                         is not None))
            one_core.add("bare simplejpeg", lambda: sum(1 for j in jpgs if simplejpeg.decode_jpeg(j, colorspace="RGB")
                                                        is not None))
        one_core.add("per-file JPEG loader", _batches(DataLoader(PerFileCelebA(paths, 64), batch_size=bs,
                                                                 shuffle=True, num_workers=0, drop_last=True)))
        rates = one_core.run(seconds=args.seconds)

        for fmt in formats:
            loader = train_loader(sets[fmt], batch_size=bs, num_workers=2, seed=0)
            two_workers[f"facegan stream, {fmt}"] = measure(loader, seconds=args.seconds)
            del loader
        if "jpg" in formats:
            loader = train_loader(sets["jpg"], batch_size=bs, num_workers=2, seed=0, normalize=False)
            two_workers["facegan stream, jpg, uint8"] = measure(loader, seconds=args.seconds)
            del loader
        dl = DataLoader(PerFileCelebA(paths, 64), batch_size=bs, shuffle=True, num_workers=2, drop_last=True,
                        persistent_workers=True)
        two_workers["per-file JPEG loader"] = measure(dl, seconds=args.seconds)
        del dl

    cores = max(1, min(2, os.cpu_count() or 1))
    print(f"one core, measured in turns ({args.seconds:.0f} s each): img/s by the wall clock and per CPU second")
    print(f"  {'configuration':<36} {'img/s':>8} {'img/CPU s':>10}")
    for name, (wall, cpu) in rates.items():
        print(f"  {name:<36} {wall:8.0f} {cpu:10.0f}")
    print(f"2 loader workers ({cores} cores), one after another:")
    for name, r in two_workers.items():
        print(f"  {name:<36} {r:8.0f} img/s = {r / cores:.0f} per core")
    base_wall, base_cpu = rates["per-file JPEG loader"]
    for fmt in formats:
        wall, cpu = rates[f"facegan stream, {fmt}"]
        line = f"{fmt}: one core {wall / base_wall:.1f}x the per-file loader (CPU time: {cpu / base_cpu:.1f}x)"
        if fmt == "jpg":
            line += f" (target >= 5x: {'met' if wall / base_wall >= 5 else 'NOT met'})"
        line += f"; 2 workers {two_workers[f'facegan stream, {fmt}'] / two_workers['per-file JPEG loader']:.1f}x"
        print(line)
    if "jpg" in formats:
        for variant in ("facegan stream, jpg", "facegan stream, jpg, channels_last", "facegan stream, jpg, uint8",
                        "facegan stream, jpg, uint8, channels_last"):
            wall, cpu = rates[variant]
            print(f"{variant}: {wall / rates['bare decode_jpeg'][0]:.2f}x bare decode_jpeg (CPU time: "
                  f"{cpu / rates['bare decode_jpeg'][1]:.2f}x; moonshot >= 0.8x), "
                  f"{cpu / rates['bare simplejpeg'][1]:.2f}x bare simplejpeg (CPU time)")
        cpu = rates["facegan stream, jpg, uint8"][1]
        per_core_2w = two_workers["facegan stream, jpg, uint8"] / cores
        print(f"loader cores per GPU: {1000 / cpu:.2f} cores per 1,000 img/s of GPU throughput (jpg shards, uint8 "
              f"NCHW batches as the loop asks for on a GPU; one core = {cpu:.0f} img per CPU second; a GPU at "
              f"20,000 img/s needs {20000 / cpu:.1f}); through 2 loader worker processes "
              f"{1000 / per_core_2w:.2f} per 1,000 img/s ({per_core_2w:.0f} img/s per core, the batch handed over "
              f"in shared memory); float batches: {1000 / rates['facegan stream, jpg'][1]:.2f}")
    print(f"peak RSS: main {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB, "
          f"largest loader worker {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MiB; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
