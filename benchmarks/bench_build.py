"""Shard-build throughput against the single-core decode+crop+resize limit, measured in one run.

    .venv/bin/python benchmarks/bench_build.py --root ../shared/data/celeba_sample --scale 10
    .venv/bin/python benchmarks/bench_build.py --count 30000          # synthetic faces if no --root

With --scale K the CelebA folder's images are linked K times under new names (hard links in a temp
folder, so every one is a separate file that must be opened and decoded) with annotation files
written for them: a --scale 10 run builds 30,000 images from the 3,000-image sample.

`limit` is what one core does when it only reads, decodes (JPEG draft mode), crops and resizes to
the output size: no encoding, no tar, no hashing, no writing. It is measured on the same images
in the same run, before and after the build (the mean of the two is used; the machine is shared).
Target: build rate >= 0.8 x limit x cores. The per-image stage budget (summed over all processes,
divided by images) shows where the rest goes; full CelebA (202,599 images) is projected from the
measured build rate.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from facegan.config import from_dict
from facegan.data.imageio import load_and_prepare
from facegan.data.recipe import ShardRecipe
from facegan.data.writer import build_one_shard, build_shards, plan_shards, scan_source

CELEBA_FULL = 202_599


def rate(fn, items, *, min_seconds: float = 3.0) -> tuple[float, float]:
    """(items per wall second, items per CPU second) of fn over items, repeated until
    min_seconds have passed."""
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        for it in items:
            fn(it)
            n += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n / dt, n / (time.process_time() - c0)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the build's worker pool)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def scaled_celeba(root: Path, scale: int, dest: Path) -> Path:
    """`scale` copies of a CelebA folder's images under new names (hard links, symlinks across
    filesystems) with list_attr_celeba.txt / list_eval_partition.txt rows written for each."""
    images = sorted((root / "img_align_celeba").glob("*.jpg"))
    attr_lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    attrs = {line.split()[0]: line.split(None, 1)[1] for line in attr_lines[2:] if line.strip()}
    parts_file = root / "list_eval_partition.txt"
    parts = {line.split()[0]: line.split()[1] for line in parts_file.read_text().splitlines() if line.strip()} \
        if parts_file.exists() else {}
    out = dest / "img_align_celeba"
    out.mkdir(parents=True)
    rows, part_rows = [], []
    n = 0
    for k in range(scale):
        for img in images:
            n += 1
            name = f"{n:06d}.jpg"
            try:
                os.link(img, out / name)
            except OSError:
                os.symlink(img.absolute(), out / name)
            rows.append(f"{name} {attrs[img.name]}")
            if parts:
                part_rows.append(f"{name} {parts[img.name]}")
    (dest / "list_attr_celeba.txt").write_text("\n".join([str(n), attr_lines[1], *rows]) + "\n")
    if part_rows:
        (dest / "list_eval_partition.txt").write_text("\n".join(part_rows) + "\n")
    return dest


def limit_rates(paths: list[str] | None, size: int, seconds: float) -> tuple[float, float]:
    """(img per wall second, img per CPU second) of the limit's work in this process: read,
    decode, crop and resize the CelebA files `paths`, or (None) render synthetic faces."""
    if paths is None:
        from facegan.data.synthetic import render_face

        return rate(lambda i: render_face(seed=0, index=i, height=size, width=size), range(300),
                    min_seconds=seconds)
    return rate(lambda p: load_and_prepare(p, crop="square", out_h=size, out_w=size), paths, min_seconds=seconds)


def _limit_rate(arg: tuple[list[str] | None, int, float]) -> float:
    return limit_rates(*arg)[0]


def parallel_limit(paths: list[str] | None, size: int, seconds: float, cores: int) -> float:
    """The limit's work run on `cores` processes at once: img/s summed. Below limit x cores where
    the cores slow each other down (shared caches, memory bandwidth, a busy host)."""
    with mp.get_context("fork").Pool(cores) as pool:
        parts = [paths[i::cores] for i in range(cores)] if paths else [None] * cores
        return sum(pool.map(_limit_rate, [(p, size, seconds) for p in parts]))


def per_core_ceiling(recipe: ShardRecipe, scan, out: Path, repeats: int = 3) -> tuple[float, float, int]:
    """(build CPU us per image, limit CPU us per image, images) for one shard in this process,
    alternating the two `repeats` times and keeping each one's best."""
    job = plan_shards(recipe, scan.items)[0]
    paths = [it.path for it in job.items]
    size = recipe.height
    builds, limits = [], []
    for r in range(repeats):
        c0 = time.process_time()
        for p in paths:
            load_and_prepare(p, crop="square", out_h=size, out_w=size)
        limits.append((time.process_time() - c0) / len(paths) * 1e6)
        c0 = time.process_time()
        build_one_shard(job, recipe, str(out), f"x{r}.tar")
        builds.append((time.process_time() - c0) / len(paths) * 1e6)
    return min(builds), min(limits), len(paths)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="CelebA folder (img_align_celeba/ + list_attr_celeba.txt)")
    ap.add_argument("--scale", type=int, default=1, help="with --root: link every image this many times")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--format", default="jpg", choices=("jpg", "png", "raw"), help="the shards' image format")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--count", type=int, default=3000, help="synthetic faces when no --root")
    ap.add_argument("--seconds", type=float, default=3.0, help="time per limit measurement")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = None
        if args.root:
            root = Path(args.root)
            if args.scale > 1:
                root = scaled_celeba(root, args.scale, Path(tmp) / "celeba")
        source = {"source": "celeba"} if root else {"source": "synthetic", "count": args.count}
        recipe = from_dict(ShardRecipe, dict(source, resolution=args.resolution, workers=args.workers, format=args.format,
                                             shard_size=1000))
        scan = scan_source(recipe, root=root)
        cores = min(args.workers, os.cpu_count() or 1)
        size = args.resolution
        print(f"source {recipe.source}: {len(scan.items)} images -> {recipe.height}x{recipe.width}, {cores} cores")

        paths = [it.path for it in scan.items[:400]] if root else None
        what = "read + draft decode + crop + resize" if root else "synthetic render"

        def measure_limit() -> tuple[float, float]:
            return limit_rates(paths, size, args.seconds)

        before, before_cpu = measure_limit()
        c0, t0 = cpu_seconds(), time.perf_counter()
        result = build_shards(recipe, root=root, out=Path(tmp) / "shards", progress=False)
        dt, build_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        after, after_cpu = measure_limit()
        shutil.rmtree(Path(tmp) / "shards")
        one_shard = per_core_ceiling(recipe, scan, Path(tmp) / "one") if root else None
        together = parallel_limit(paths, size, args.seconds, cores) if cores > 1 else 0.0

    limit, limit_cpu = (before + after) / 2, (before_cpu + after_cpu) / 2
    n = result.manifest["counts"]["total"]
    build_rate = n / dt
    ratio = build_rate / (limit * cores)
    load = os.getloadavg()[0]
    print(f"one core, {what} = limit: {limit:8.0f} img/s  (before the build {before:.0f}, after {after:.0f}); "
          f"{limit_cpu:.0f} img per CPU second")
    print(f"facegan shards build, {cores} workers (scan + decode + encode + tar + sha256 + write): "
          f"{n} images in {dt:.2f} s = {build_rate:.0f} img/s, {build_cpu:.1f} CPU s")
    print(f"ratio to limit x cores: {ratio:.2f}  (target >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'}); "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    if together:
        print(f"the limit's work on {cores} processes at once: {together:.0f} img/s = {together / limit:.2f} x one "
              f"core; the build is {build_rate / together:.2f} of that")
    # The same ratio in CPU time: robust to other processes on the machine, which slow the wall
    # clock of both the limit and the build but by different amounts.
    cpu_ratio = (limit_cpu and n / build_cpu / limit_cpu)
    print(f"CPU-time ratio (limit CPU per image / build CPU per image): {cpu_ratio:.2f}; "
          f"cores kept busy: {build_cpu / (dt * cores):.2f}")
    if one_shard:
        print(f"one process, one shard of {one_shard[2]} images (no pool, no scan): build {one_shard[0]:.0f} us/img "
              f"vs limit {one_shard[1]:.0f} us/img on the same images = {one_shard[1] / one_shard[0]:.2f} "
              "(the per-core ceiling of the build's own work)")
    stages = dict(result.stage_seconds)
    # The scan runs before any worker starts: every core waits for it.
    stages["scan"] = result.scan_seconds * cores
    busy = dt * cores
    print("per-image budget (us of core time, summed over processes; 'scan' = scan + plan x cores, all of "
          "them waiting; 'labels' = the label JSON; 'other' = cores x wall - all of these: start-up, "
          "inter-process traffic, loop overhead, idle cores at the end):")
    for name in ("scan", "read", "decode", "resize", "render", "encode", "labels", "tar", "hash", "write"):
        if name in stages:
            print(f"  {name:<7} {stages[name] / n * 1e6:7.1f}")
    print(f"  {'other':<7} {(busy - sum(stages.values())) / n * 1e6:7.1f}")
    print(f"  {'total':<7} {busy / n * 1e6:7.1f}   (limit alone: {1e6 / limit:.1f})")
    if args.root:
        print(f"full CelebA ({CELEBA_FULL:,} images) projected at this rate: {CELEBA_FULL / build_rate:.0f} s on "
              f"{cores} cores (goal: under 75 s on 2 cores); from the CPU time per image, on {cores} cores "
              f"kept busy (an idle machine): {CELEBA_FULL * build_cpu / n / cores:.0f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: main {peak:.0f} MiB, largest worker {peak_children:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
