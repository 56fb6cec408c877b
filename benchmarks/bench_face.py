"""Throughput of the face extractor (facegan.metrics.face) against dlib's own per-image call, per
core and over processes.

    .venv/bin/python benchmarks/bench_face.py                         # facegan's rendered faces, 64 px
    .venv/bin/python benchmarks/bench_face.py --shards /tmp/celeba64 --n 256 --processes 1,2 --json bench_face.json

In one run, on the same images (uint8, `--resolution` px, upscaled to facegan.metrics.face.WORK_SIZE):

* bare dlib: per image, the shape predictor on the fixed face box and
  `face_recognition_model_v1.compute_face_descriptor(img, shape)` (dlib's per-image call, which
  warps the chip itself); the upscale is done for it the same way, so both sides do the same work;
* bare dlib, batched: `get_face_chip` per image, then one `compute_face_descriptor(chips)` per batch;
* facegan: `face_descriptors(img_BCHW, batch_size=B)` for each `--batch-sizes` B (the whole path:
  tensor -> uint8 HWC, upscale, landmarks, chip, batched descriptor, float32 out).

Rates are images per CPU-second of the measuring process (time.process_time), so they are per core
and much less disturbed by other load on the machine than wall-clock rates; the repeats are
interleaved and the median is kept. The ratio facegan / bare per-image rate is the target (>= 0.9).

Process scaling: `--processes` P worker processes (one thread each) split `--n` x P images;
they start together after loading the models, and the wall-clock rate over all of them is
compared with P x the one-process rate (linear scaling: efficiency 1.0). On a loaded machine the
wall-clock numbers include whatever else runs: the script prints the load average next to them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facegan.metrics import face as F  # noqa: E402

MAX_IMAGES = 20_000
MAX_PROCESSES = 64


def load_images(args: argparse.Namespace) -> torch.Tensor:
    """uint8 (N, 3, H, W): a shard split's first N images, or facegan's rendered faces."""
    if args.shards:
        from facegan.metrics import load_shard_images

        return load_shard_images(shards_dir=args.shards, split=args.split, max_images=args.n)
    from facegan.data.synthetic import render_face

    arr = np.stack([render_face(seed=1, index=i, height=args.resolution, width=args.resolution)
                    for i in range(args.n)])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def bare_per_image(models: F.FaceModels, hwc: list[np.ndarray]) -> np.ndarray:
    import dlib

    out = []
    for img in hwc:
        work = F._work_image(img)
        shape = models.landmarks(work, F._fixed_box(dlib, *work.shape[:2]))
        out.append(np.asarray(models.descriptor.compute_face_descriptor(work, shape, 0, F.CHIP_PADDING)))
    return np.asarray(out, dtype=np.float32)


def bare_batched(models: F.FaceModels, hwc: list[np.ndarray], batch: int) -> np.ndarray:
    import dlib

    chips = []
    for img in hwc:
        work = F._work_image(img)
        shape = models.landmarks(work, F._fixed_box(dlib, *work.shape[:2]))
        chips.append(dlib.get_face_chip(work, shape, size=F.CHIP_SIZE, padding=F.CHIP_PADDING))
    out = []
    for i in range(0, len(chips), batch):
        out += list(models.descriptor.compute_face_descriptor(chips[i:i + batch]))
    return np.asarray(out, dtype=np.float32)


def cpu_rate(fn, n: int) -> tuple[float, float, np.ndarray]:
    """(images per CPU-second, images per wall-second, result) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    result = fn()
    return n / (time.process_time() - c0), n / (time.perf_counter() - w0), result


def _worker(images: torch.Tensor, batch: int, barrier, queue) -> None:
    torch.set_num_threads(1)
    models = F.load_face_models()
    F.face_descriptors(images[:2], models=models)           # warm-up outside the timed part
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    F.face_descriptors(images, batch_size=batch, models=models)
    queue.put((t0, time.perf_counter(), time.process_time() - c0))


def process_rate(images: torch.Tensor, processes: int, batch: int) -> dict[str, float]:
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    shares = [images.roll(shifts=p * 7, dims=0) for p in range(processes)]   # same cost, not identical
    procs = [ctx.Process(target=_worker, args=(shares[p], batch, barrier, queue)) for p in range(processes)]
    for p in procs:
        p.start()
    times = [queue.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    wall = max(t[1] for t in times) - min(t[0] for t in times)
    n = images.shape[0] * processes
    return {"processes": processes, "images": n, "wall_s": wall, "img_per_s": n / wall,
            "cpu_s": sum(t[2] for t in times), "img_per_cpu_s": n / sum(t[2] for t in times),
            "load_avg_1min": os.getloadavg()[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="", help="shard set (default: facegan's rendered faces)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--resolution", type=int, default=64, help="rendered faces' size (without --shards)")
    ap.add_argument("--n", type=int, default=128, help="images per measurement (and per process)")
    ap.add_argument("--batch-sizes", default="1,16,64")
    ap.add_argument("--processes", default="1,2", help="process counts for the scaling measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default="", help="write the figures here")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    procs = [int(p) for p in args.processes.split(",") if p.strip()]
    if not 2 <= args.n <= MAX_IMAGES:
        ap.error(f"--n: expected 2..{MAX_IMAGES}, got {args.n}")
    if not batches or not all(1 <= b <= F.MAX_BATCH for b in batches):
        ap.error(f"--batch-sizes: expected integers in 1..{F.MAX_BATCH}, got {args.batch_sizes}")
    if not procs or not all(1 <= p <= MAX_PROCESSES for p in procs):
        ap.error(f"--processes: expected integers in 1..{MAX_PROCESSES}, got {args.processes}")
    if not 1 <= args.repeats <= 20:
        ap.error(f"--repeats: expected 1..20, got {args.repeats}")
    torch.set_num_threads(1)

    images = load_images(args)
    n = images.shape[0]
    hwc = F.as_face_images(images)
    models = F.load_face_models()
    bare_per_image(models, hwc[:2])                           # warm-up
    arms: dict[str, list[tuple[float, float]]] = {"bare dlib, per image": []}
    arms["bare dlib, batched (64)"] = []
    arms.update({f"facegan, batch {b}": [] for b in batches})
    reference = None
    for _ in range(args.repeats):                             # interleaved, so drifting load hits every arm
        cpu, wall, reference = cpu_rate(lambda: bare_per_image(models, hwc), n)
        arms["bare dlib, per image"].append((cpu, wall))
        cpu, wall, _ = cpu_rate(lambda: bare_batched(models, hwc, 64), n)
        arms["bare dlib, batched (64)"].append((cpu, wall))
        for b in batches:
            cpu, wall, ours = cpu_rate(lambda: F.face_descriptors(images, batch_size=b, models=models), n)
            arms[f"facegan, batch {b}"].append((cpu, wall))
            # The same descriptors as dlib's own call, not merely as fast.
            assert np.abs(ours - reference).max() < 1e-3, np.abs(ours - reference).max()
    base = statistics.median(c for c, _ in arms["bare dlib, per image"])
    rows = []
    for name, values in arms.items():
        cpu = statistics.median(c for c, _ in values)
        wall = statistics.median(w for _, w in values)
        rows.append({"arm": name, "img_per_cpu_s": cpu, "img_per_wall_s": wall, "vs_bare": cpu / base,
                     "cpu_s_per_1000": 1000 / cpu})
    source = args.shards or f"rendered faces {args.resolution}px"
    print(f"{n} images ({source}, {images.shape[-1]}px -> work size {F.WORK_SIZE}); median of {args.repeats}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'arm':<26} {'img/CPU-s':>10} {'img/wall-s':>11} {'vs bare':>8} {'CPU-s/1000 img':>15}")
    for r in rows:
        print(f"{r['arm']:<26} {r['img_per_cpu_s']:>10.1f} {r['img_per_wall_s']:>11.1f} {r['vs_bare']:>8.2f} "
              f"{r['cpu_s_per_1000']:>15.1f}")

    best_batch = max(batches, key=lambda b: next(r["img_per_cpu_s"] for r in rows if r["arm"] == f"facegan, batch {b}"))
    scaling = [process_rate(images, p, best_batch) for p in procs]
    one = next((s["img_per_s"] for s in scaling if s["processes"] == 1), None)
    print(f"\nprocesses (facegan, batch {best_batch}, {n} images each; wall clock, includes the machine's other load)")
    print(f"{'processes':>9} {'img/s':>8} {'img/CPU-s':>10} {'speed-up':>9} {'efficiency':>11} {'load avg':>9}")
    for s in scaling:
        s["speedup"] = s["img_per_s"] / one if one else float("nan")
        s["efficiency"] = s["speedup"] / s["processes"]
        print(f"{s['processes']:>9} {s['img_per_s']:>8.1f} {s['img_per_cpu_s']:>10.1f} {s['speedup']:>9.2f} "
              f"{s['efficiency']:>11.2f} {s['load_avg_1min']:>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"images": n, "source": source, "cores": os.cpu_count(),
                                               "arms": rows, "processes": scaling}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
