"""GPU throughput of `facegan.loop.train` (DCGAN 64x64) against a bare loop and the shard stream,
all measured in one run, so one run answers "how far from the bare loop, and is data the bottleneck".

    .venv/bin/python benchmarks/bench_gpu.py                    # ~6-8 min on one GPU
    .venv/bin/python benchmarks/bench_gpu.py --batches 256 --no-compile --out /tmp/gpu.json
    .venv/bin/python benchmarks/bench_gpu.py --shards data/celeba64   # real shards instead of synthetic

On a machine without CUDA it prints that nothing was measured and exits 0. `--cpu-smoke` runs
every code path on the CPU at toy size instead (what the tests run; its figures are no GPU figures).

Three measurements, each printed with img/s and peak GPU memory (torch.cuda.max_memory_allocated):

  facegan   `facegan.loop.train` as a run uses it: the shard stream (JPEG shards, `--workers` loader
            processes, uint8 pinned batches normalised on the GPU, channels_last), fused Adam, EMA,
            finiteness flags, stats, and its tick work at the default `train.tick_kimg` (4) with the
            default 64-image EMA grid and its PNG. img/s is the loop's own per-tick figure, over the
            ticks after the first (start-up and compilation), at batch 128/256/512 x compile
            (`train.compile`) off/on x bf16 autocast (`train.precision: bf16`) off/on.
  bare      the same nets, losses and fused Adam in a plain loop on one fixed batch already on the
            GPU: no data, no EMA, no checks, no host sync until the end (the pytorch/examples DCGAN
            step without its `.item()` logging): the compute ceiling for the same settings.
  augmented facegan with `augment.kind: diffaugment` (facegan.augpipe on every D input) at batch
            256, bf16, eager, against the same configuration without: the pipe's cost on the GPU.
  stream    `facegan.data.stream.train_loader` alone, as the loop configures it (uint8, pinned,
            channels_last), with 1 and `--workers` loader processes: img/s per loader process, and
            whether the stream keeps up with each facegan configuration.

facegan / bare is the loop's cost over the compute; facegan close to the stream rate (and below
bare) means the data is the bottleneck: add loader workers or cores. The stream rate per worker
gives the loader cores a GPU needs at the measured facegan rate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def no_cuda_message() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return ("bench_gpu: no CUDA device (torch.cuda.is_available() is False): nothing measured. "
                "Run it on a GPU machine.")
    return None


def build_synthetic(out: Path, *, count: int, workers: int) -> Path:
    from facegan.config import from_dict
    from facegan.data.recipe import ShardRecipe
    from facegan.data.writer import build_shards

    recipe = from_dict(ShardRecipe, {"source": "synthetic", "count": count, "resolution": 64, "shard_size": 1000,
                                     "workers": workers, "seed": 0})
    build_shards(recipe, root=None, out=out, progress=False)
    return out


def measure_stream(shards: str, *, batch: int, workers: int, seconds: float, pin: bool) -> float:
    """img/s of the loop's loader configuration alone (no GPU work)."""
    from facegan.data.stream import ShardSet, train_loader

    loader = train_loader(ShardSet.open(shards), batch_size=batch, num_workers=workers, seed=0, pin_memory=pin,
                          normalize=False, channels_last=True)
    for _ in range(max(2, 2 * workers)):   # start-up: worker spawn, first shards
        next(loader)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += next(loader)["image"].shape[0]
    rate = n / (time.perf_counter() - t0)
    del loader
    return rate


def sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_mib(dev: Any) -> float:
    import torch

    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")


def bare_loop(*, dev: Any, batch: int, bf16: bool, compile: bool, channels_last: bool, seconds: float,
              base_channels: int = 64) -> dict[str, float]:
    """The DCGAN step on one fixed device batch, fused Adam, no host sync inside the timed steps."""
    import torch
    from torch import nn

    from facegan.families.dcgan.nets import build_dcgan, dcgan_init_

    torch.manual_seed(0)
    nets = build_dcgan(resolution=64, z_dim=100, base_channels=base_channels)
    for net in nets.values():
        dcgan_init_(net)
        net.to(dev)
        if channels_last:
            net.to(memory_format=torch.channels_last)
    G, D = nets["G"].train(), nets["D"].train()
    opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    Gc, Dc = (torch.compile(G), torch.compile(D)) if compile else (G, D)
    real = torch.rand(batch, 3, 64, 64, device=dev) * 2 - 1
    if channels_last:
        real = real.contiguous(memory_format=torch.channels_last)
    ones, zeros = torch.ones(batch, device=dev), torch.zeros(batch, device=dev)
    bce = nn.BCEWithLogitsLoss()
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with autocast:
            fake = Gc(torch.randn(batch, 100, device=dev))
            err_d = bce(Dc(real).float(), ones) + bce(Dc(fake.detach()).float(), zeros)
        opt_D.zero_grad(set_to_none=True)
        err_d.backward()
        opt_D.step()
        with autocast:
            err_g = bce(Dc(fake).float(), ones)
        opt_G.zero_grad(set_to_none=True)
        err_g.backward()
        opt_G.step()

    reset_peak(dev)
    t0 = time.perf_counter()
    for _ in range(3):          # compilation, cuDNN autotuning
        step()
    sync(dev)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    sync(dev)
    per_step = (time.perf_counter() - t0) / 3
    n = max(3, int(seconds / max(per_step, 1e-6)))
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(dev)
    dt = time.perf_counter() - t0
    return {"img_per_sec": n * batch / dt, "peak_mem_mb": peak_mib(dev), "warmup_s": warm, "steps": n}


def facegan_loop(*, dev: Any, shards: str, out: Path, batch: int, bf16: bool, compile: bool, channels_last: bool,
                 workers: int, seconds: float, min_ticks: int, tick_kimg: float = 4.0,
                 base_channels: int = 64, threads: int = 0, augment: str = "none") -> dict[str, float]:
    """facegan.loop.train for one warm-up tick and then >= min_ticks ticks and >= `seconds`."""
    import torch

    from facegan.config import from_dict
    from facegan.families import RunConfig
    from facegan.hooks import Hooks
    from facegan.loop import train

    cfg = from_dict(RunConfig, {
        "data": {"shards": shards, "batch_size": batch, "num_workers": workers},
        "model": {"family": "dcgan", "resolution": 64, "z_dim": 100, "base_channels": base_channels},
        "train": {"total_kimg": 100_000, "tick_kimg": tick_kimg, "checkpoint_kimg": 1_000_000, "device": dev.type,
                  "precision": "bf16" if bf16 else "fp32", "compile": compile, "channels_last": channels_last,
                  "num_threads": threads, "out_dir": str(out)},
        "augment": {"kind": augment},
        "wandb": {"enabled": False},
    })
    ticks: list[dict[str, float]] = []
    state = {"t0": time.perf_counter(), "measured_from": 0.0}

    def report(metrics: dict[str, float], checkpoint_dir: Any) -> None:
        ticks.append(dict(metrics, at=time.perf_counter()))
        if len(ticks) == 1:
            state["measured_from"] = time.perf_counter()

    def should_stop() -> bool:
        return len(ticks) > min_ticks and time.perf_counter() - state["measured_from"] >= seconds

    reset_peak(dev)
    train(cfg, hooks=Hooks(report=report, should_stop=should_stop))
    measured = ticks[1:]
    images = sum(t["images_seen"] - p["images_seen"] for p, t in zip(ticks, ticks[1:]))
    span = ticks[-1]["at"] - ticks[0]["at"]
    return {"img_per_sec": images / span, "best_tick_img_per_sec": max(t["img_per_sec"] for t in measured),
            "peak_mem_mb": peak_mib(dev),
            "warmup_s": ticks[0]["at"] - state["t0"], "ticks": len(measured)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--no-compile", action="store_true", help="skip the compile-on configurations")
    ap.add_argument("--workers", type=int, default=0, help="loader processes (default: cores - 2, at most 12)")
    ap.add_argument("--shards", help="64x64 shard set to stream (default: synthetic JPEG shards built here)")
    ap.add_argument("--count", type=int, default=20_000, help="synthetic faces to build (80%% train)")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per configuration")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="stop starting configurations after this many seconds (the run stays under 8 min)")
    ap.add_argument("--out", help="also write the figures as JSON here")
    ap.add_argument("--base-channels", type=int, default=64, help="DCGAN width (64: the DCGAN paper's)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="every code path on the CPU at toy size (batch 8, width 8, 400 faces): a test, not a figure")
    args = ap.parse_args()
    if args.cpu_smoke:
        args.batches, args.count, args.seconds, args.base_channels, args.threads = [8], 400, 0.5, 8, 1
    else:
        message = no_cuda_message()
        if message:
            print(message)
            return 0

    import torch
    import torch._dynamo

    # The nets' forward code is shared by every configuration: let dynamo keep each variant.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    dev = torch.device("cpu" if args.cpu_smoke else "cuda")
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    cores = os.cpu_count() or 1
    workers = args.workers or max(1, min(12, cores - 2))
    dev_name = "CPU (smoke run: not GPU figures)" if args.cpu_smoke else torch.cuda.get_device_name(0)
    results: dict[str, Any] = {"device": dev_name, "torch": torch.__version__, "cores": cores, "workers": workers,
                               "facegan": [], "bare": [], "stream": {}, "skipped": []}
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards
        if not shards:
            t0 = time.perf_counter()
            shards = str(build_synthetic(Path(tmp) / "shards", count=args.count, workers=min(cores, 16)))
            print(f"built {args.count} synthetic 64x64 JPEG faces in {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"{dev_name}, torch {torch.__version__}, {cores} CPU cores, {workers} loader workers; "
              f"DCGAN 64x64 (base {args.base_channels}, z 100)", flush=True)

        for w in sorted({1, workers}):
            rate = measure_stream(shards, batch=min(256, 8 * args.batches[0]), workers=w,
                                  seconds=min(args.seconds, 4.0), pin=dev.type == "cuda")
            results["stream"][str(w)] = rate
            print(f"stream, {w:>2} loader workers: {rate:9.0f} img/s ({rate / w:.0f} per worker)", flush=True)

        configs = [(b, c, bf) for b in args.batches for c in ([False] if args.no_compile else [False, True])
                   for bf in (False, True)]
        # One extra: channels_last off at batch 256, bf16, eager (what the memory format buys).
        extra = [(256 if 256 in args.batches else args.batches[0], False, True, False)]
        header = f"{'batch':>5} {'compile':>7} {'bf16':>5} {'ch_last':>7}  {'facegan img/s':>13} {'best tick':>9} " \
                 f"{'peak MiB':>8} {'warm s':>6}  {'bare img/s':>10} {'peak MiB':>8} {'warm s':>6}  {'ratio':>5}"
        print("\n" + header, flush=True)
        for batch, comp, bf16, *rest in [(*c, True) for c in configs] + extra:
            channels_last = rest[0]
            if time.perf_counter() - t_start > args.budget_s:
                results["skipped"].append({"batch": batch, "compile": comp, "bf16": bf16, "channels_last": channels_last})
                continue
            key = {"batch": batch, "compile": comp, "bf16": bf16, "channels_last": channels_last}
            ours = facegan_loop(dev=dev, shards=shards, out=Path(tmp) / f"run-{batch}-{comp}-{bf16}-{channels_last}",
                                batch=batch, bf16=bf16, compile=comp, channels_last=channels_last,
                                workers=workers, seconds=args.seconds, min_ticks=3,
                                tick_kimg=0.016 if args.cpu_smoke else 4.0, base_channels=args.base_channels,
                                threads=args.threads)
            base = bare_loop(dev=dev, batch=batch, bf16=bf16, compile=comp, channels_last=channels_last,
                             seconds=args.seconds, base_channels=args.base_channels)
            results["facegan"].append(dict(key, **ours))
            results["bare"].append(dict(key, **base))
            print(f"{batch:>5} {str(comp):>7} {str(bf16):>5} {str(channels_last):>7}  {ours['img_per_sec']:13.0f} "
                  f"{ours['best_tick_img_per_sec']:9.0f} {ours['peak_mem_mb']:8.0f} {ours['warmup_s']:6.1f}  "
                  f"{base['img_per_sec']:10.0f} {base['peak_mem_mb']:8.0f} {base['warmup_s']:6.1f}  "
                  f"{ours['img_per_sec'] / base['img_per_sec']:5.2f}", flush=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()

        # The augmented arm: DiffAugment on every D input, against the same configuration's row.
        plain = next((r for r in results["facegan"] if r["batch"] == extra[0][0] and not r["compile"] and r["bf16"]
                      and r["channels_last"]), None)
        if plain is not None and time.perf_counter() - t_start <= args.budget_s:
            aug = facegan_loop(dev=dev, shards=shards, out=Path(tmp) / "run-augmented", batch=plain["batch"],
                               bf16=True, compile=False, channels_last=True, workers=workers, seconds=args.seconds,
                               min_ticks=3, tick_kimg=0.016 if args.cpu_smoke else 4.0,
                               base_channels=args.base_channels, threads=args.threads, augment="diffaugment")
            results["augmented"] = dict(batch=plain["batch"], kind="diffaugment", **aug)
            print(f"\naugment.kind diffaugment, batch {plain['batch']}, bf16, eager: {aug['img_per_sec']:.0f} img/s "
                  f"against {plain['img_per_sec']:.0f} without: DiffAugment adds "
                  f"{100 * (plain['img_per_sec'] / aug['img_per_sec'] - 1):.1f}% to the step time", flush=True)

    stream_rate = results["stream"][str(workers)]
    per_worker = results["stream"]["1"]
    print(f"\nstream with {workers} workers: {stream_rate:.0f} img/s; one worker {per_worker:.0f} img/s, so "
          f"{1000 / per_worker:.2f} loader cores per 1,000 img/s of GPU throughput")
    for row, base in zip(results["facegan"], results["bare"]):
        need = row["img_per_sec"] / per_worker
        verdict = ("data-bound: the stream is the limit" if row["img_per_sec"] > 0.9 * stream_rate
                   else "compute/loop-bound: the stream keeps up")
        print(f"batch {row['batch']:>3} compile {str(row['compile']):<5} bf16 {str(row['bf16']):<5} "
              f"ch_last {str(row['channels_last']):<5}: facegan/bare {row['img_per_sec'] / base['img_per_sec']:.2f}, "
              f"needs {need:.1f} loader cores at its rate; {verdict}")
    if results["skipped"]:
        print(f"not measured (--budget-s {args.budget_s:g} reached): {results['skipped']}")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
