"""2-worker DDP on CPU (gloo) of `facegan.loop.train`: all-reduce share of the step, peak memory
per worker, and scaling against one process at the same per-rank batch, measured in one run.

    .venv/bin/python benchmarks/bench_ddp.py                          # per-rank batch 32, ~1.5 min idle
    .venv/bin/python benchmarks/bench_ddp.py --batch-size 64 --pairs 6

Three launches, each `facegan.loop.train` in processes from torch.multiprocessing.spawn, 1 torch
thread per process (the machine has 2 cores), 0 loader workers, the same synthetic 64x64 shards:

  single   1 process, no process group, per-rank batch B: the reference step time.
  pair     2 such processes at once, independent: what sharing the 2 cores costs without DDP.
  ddp      2 processes, gloo on 127.0.0.1, Hooks(rank=r, world_size=2); `Hooks.wrap_model` wraps
           G and D in DistributedDataParallel and registers a comm hook on each (loop.py unchanged).

(a) All-reduce share, two ways, on the same DDP run. The comm hook runs DDP's own
`default_hooks.allreduce_hook` and records, per gradient bucket, when the all-reduce was launched
and when its future completed; the union of those intervals over a tick is the time an all-reduce
was in flight ("in flight", which overlaps with backward). Ticks (every `--tick-steps` steps)
alternate the hook between that all-reduce and `debugging_hooks.noop_hook` (gradients left
unreduced: the ranks' weights drift apart, harmless for timing), so everything else DDP and the
loop do — buffer broadcasts, finite-check all-reduces, lockstep waits, tick work on rank 0 —
stays. (step with all-reduce - step with no-op) / step with all-reduce is what the all-reduce adds
to the step after overlap ("exposed"). Alternating per tick lets load from other processes fall on
both alike. The first tick is warm-up; start-up is not measured.
(b) Peak memory: every worker writes `resource.getrusage(RUSAGE_SELF).ru_maxrss` (and its RSS just
before train(): interpreter, torch, shards) to a JSON file that the parent reads.

Scaling efficiency = DDP img/s over both ranks / (2 x single-process img/s) = single step time /
DDP step time (with the all-reduce on). Step times are printed as the mean over all measured ticks
and as the best (fastest) tick of each process; the summary uses the best ticks, the ones least
slowed by other processes on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import debugging_hooks, default_hooks

from facegan.config import from_dict, to_dict
from facegan.data.recipe import ShardRecipe
from facegan.data.writer import build_shards
from facegan.hooks import Hooks
from facegan.loop import train
from facegan.families import RunConfig
from facegan.families.dcgan.nets import build_dcgan


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class CommProbe:
    """DDP wrapping for the loop, with a comm hook that times each bucket's all-reduce or, while
    `reduce` is False, hands the bucket back unreduced."""

    def __init__(self) -> None:
        self.reduce = True
        self.events: list[tuple[str, float, float, int]] = []   # (net, launched, completed, bytes)

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return module
        ddp = nn.parallel.DistributedDataParallel(module)
        ddp.register_comm_hook(type(module).__name__.replace("DCGAN", ""), self.hook)
        return ddp

    def hook(self, net, bucket):  # no hints: DDP rejects a hook whose hints are strings (PEP 563)
        if not self.reduce:
            return debugging_hooks.noop_hook(None, bucket)
        launched = time.perf_counter()
        nbytes = bucket.buffer().numel() * bucket.buffer().element_size()

        def completed(fut: torch.futures.Future[torch.Tensor]) -> torch.Tensor:
            self.events.append((net, launched, time.perf_counter(), nbytes))
            return fut.value()

        return default_hooks.allreduce_hook(None, bucket).then(completed)


def in_flight(events: list[tuple[str, float, float, int]], t0: float, t1: float) -> float:
    """Seconds of [t0, t1] during which at least one all-reduce was in flight."""
    spans = sorted((max(a, t0), min(b, t1)) for _, a, b, _ in events if b > t0 and a < t1)
    busy, end = 0.0, t0
    for a, b in spans:
        if b > end:
            busy += b - max(a, end)
            end = b
    return busy


def worker(index: int, world: int, cfg_dict: dict, num_ticks: int, result_file: str) -> None:
    """One process: train() with `world` ranks (index = rank), or alone when world is 1."""
    rank = index if world > 1 else 0
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)   # MASTER_ADDR/PORT from the parent
    rss_before = rss_mib()
    probe = CommProbe()
    marks: list[tuple[float, int, bool]] = []   # (entered report, images seen, tick ran with all-reduce)

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        marks.append((time.perf_counter(), int(metrics["images_seen"]), probe.reduce))
        # Tick 1 is warm-up with the all-reduce; then on, off, on, off... Every rank flips at the
        # same tick, so the ranks agree on which gradients are reduced.
        probe.reduce = len(marks) % 2 == 1

    hooks = Hooks(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"), wrap_model=probe.wrap,
                  report=report, should_stop=lambda: len(marks) > num_ticks)
    train(from_dict(RunConfig, cfg_dict), hooks=hooks)
    ticks = []
    for (t0, n0, _), (t1, n1, reduced) in zip(marks, marks[1:]):
        inside = [e for e in probe.events if t0 <= e[1] < t1]
        ticks.append({"allreduce": reduced, "images": n1 - n0, "seconds": t1 - t0,
                      "in_flight": in_flight(probe.events, t0, t1),
                      "bytes_G": sum(e[3] for e in inside if e[0] == "Generator"),
                      "bytes_D": sum(e[3] for e in inside if e[0] == "Discriminator"),
                      "calls_D": sum(1 for e in inside if e[0] == "Discriminator")})
    out = {"rank": rank, "world": world, "ticks": ticks, "rss_before_mib": rss_before,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(result_file.format(index=index)).write_text(json.dumps(out))
    if world > 1:
        dist.destroy_process_group()


def launch(name: str, *, nprocs: int, world: int, cfg: RunConfig, num_ticks: int, result_dir: Path) -> list[dict]:
    """Spawn nprocs processes (DDP ranks if world > 1, else independent runs); their results."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    result_file = str(result_dir / f"{name}-{{index}}.json")
    mp.spawn(worker, args=(world, to_dict(cfg), num_ticks, result_file), nprocs=nprocs, join=True)
    return [json.loads(Path(result_file.format(index=i)).read_text()) for i in range(nprocs)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=32, help="per rank")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--base-channels", type=int, default=64)
    ap.add_argument("--z-dim", type=int, default=100)
    ap.add_argument("--count", type=int, default=4000, help="synthetic faces (80%% train)")
    ap.add_argument("--tick-steps", type=int, default=4, help="steps per tick; the first tick is warm-up")
    ap.add_argument("--pairs", type=int, default=4, help="measured (all-reduce, no-op) tick pairs")
    args = ap.parse_args()
    num_ticks = 2 * args.pairs
    nets = build_dcgan(resolution=args.resolution, z_dim=args.z_dim, base_channels=args.base_channels)
    grads_mib = {k: sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20 for k, net in nets.items()}

    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        recipe = from_dict(ShardRecipe, {"source": "synthetic", "count": args.count, "resolution": args.resolution,
                                         "shard_size": 250})
        build_shards(recipe, root=None, out=shards, progress=False)

        def config(world: int) -> RunConfig:
            tick_images = args.tick_steps * args.batch_size * world
            return from_dict(RunConfig, {
                "data": {"shards": str(shards), "batch_size": args.batch_size, "num_workers": 0},
                "model": {"family": "dcgan", "resolution": args.resolution, "z_dim": args.z_dim,
                          "base_channels": args.base_channels},
                # should_stop ends the run before total_kimg and any checkpoint.
                "train": {"total_kimg": tick_images * (num_ticks + 3) / 1000, "tick_kimg": tick_images / 1000,
                          "checkpoint_kimg": 1e6, "device": "cpu", "num_threads": 1, "seed": 0,
                          "out_dir": str(Path(tmp) / f"run{world}")},
                "wandb": {"enabled": False},
            })

        print(f"{args.resolution}x{args.resolution} DCGAN (base {args.base_channels}, z {args.z_dim}), "
              f"per-rank batch {args.batch_size}, 1 torch thread per process, gloo on 127.0.0.1; "
              f"{args.tick_steps} warm-up + {num_ticks * args.tick_steps} measured steps per launch", flush=True)
        single = launch("single", nprocs=1, world=1, cfg=config(1), num_ticks=num_ticks, result_dir=Path(tmp))
        pair = launch("pair", nprocs=2, world=1, cfg=config(1), num_ticks=num_ticks, result_dir=Path(tmp))
        ddp = launch("ddp", nprocs=2, world=2, cfg=config(2), num_ticks=num_ticks, result_dir=Path(tmp))

    # Step seconds of a launch: the mean over all ticks, and over the best (fastest) tick of each
    # process, the one least slowed by other processes; the summary lines use the best ticks.
    def mean_s(procs: list[list[dict]]) -> float:
        return sum(sum(t["seconds"] for t in ticks) / len(ticks) for ticks in procs) / len(procs) / args.tick_steps

    def best_s(procs: list[list[dict]]) -> float:
        return sum(min(t["seconds"] for t in ticks) for ticks in procs) / len(procs) / args.tick_steps

    runs = {"single process": [single[0]["ticks"]],
            "2 single processes at once": [w["ticks"] for w in pair],
            "ddp x2, all-reduce": [[t for t in w["ticks"] if t["allreduce"]] for w in ddp],
            "ddp x2, no-op comm hook": [[t for t in w["ticks"] if not t["allreduce"]] for w in ddp]}
    imgs = {name: args.batch_size * (1 if name == "single process" else 2) for name in runs}
    print(f"\n{'run':<28} {'steps':>5} {'ms/step':>8} {'best':>6} {'img/s':>7}  per-tick ms/step (first process)")
    for name, procs in runs.items():
        print(f"{name:<28} {len(procs[0]) * args.tick_steps:>5} {1000 * mean_s(procs):8.1f} "
              f"{1000 * best_s(procs):6.1f} {imgs[name] / best_s(procs):7.1f}  "
              + " ".join(f"{1000 * t['seconds'] / args.tick_steps:.0f}" for t in procs[0]))

    t_one, t_two, t_on, t_off = (best_s(procs) for procs in runs.values())
    on, off = runs["ddp x2, all-reduce"], runs["ddp x2, no-op comm hook"]
    busy = sum(sum(t["in_flight"] for t in ticks) / sum(t["seconds"] for t in ticks) for ticks in on) / 2
    pairs = sorted((a["seconds"] - b["seconds"]) / a["seconds"] for a, b in zip(on[0], off[0]))
    steps_on = len(on[0]) * args.tick_steps
    mb_G = sum(t["bytes_G"] for t in on[0]) / steps_on / 2**20
    mb_D = sum(t["bytes_D"] for t in on[0]) / steps_on / 2**20
    calls_D = sum(t["calls_D"] for t in on[0]) / steps_on
    print(f"\n(a) gradient all-reduce: exposed {(t_on - t_off) / t_on:.1%} of the DDP step "
          f"({1000 * (t_on - t_off):.0f} ms of {1000 * t_on:.0f}); "
          f"all ticks {(mean_s(on) - mean_s(off)) / mean_s(on):.1%}, "
          f"per (all-reduce, no-op) tick pair {', '.join(f'{p:.1%}' for p in pairs)}")
    print(f"    in flight (bucket launch to completion, overlapping backward) {busy:.1%} of the step")
    print(f"    all-reduced per step: {mb_G + mb_D:.1f} MiB = G {mb_G:.1f} + D {mb_D:.1f}, which is "
          f"{mb_D / grads_mib['D']:.1f}x D's gradients ({calls_D:.1f} D bucket all-reduces per step: the G phase's "
          f"backward reduces D's grads too, and the next D phase zeroes them)")
    print(f"    rest of the DDP step over a lone process: {1000 * (t_off - t_one):.0f} ms = "
          f"{1000 * (t_two - t_one):.0f} ms from sharing the 2 cores (2 independent processes at once) + "
          f"{1000 * (t_off - t_two):.0f} ms of lockstep (buffer broadcasts, finite checks, waits)")
    rss = ", ".join(f"rank {w['rank']} {w['peak_rss_mib']:.0f} MiB ({w['rss_before_mib']:.0f} before train)"
                    for w in ddp)
    print(f"(b) peak RSS per DDP worker: {rss}; single process {single[0]['peak_rss_mib']:.0f} MiB "
          f"({single[0]['rss_before_mib']:.0f} before train)")
    img_one, img_ddp = args.batch_size / t_one, 2 * args.batch_size / t_on
    print(f"scaling: 2 workers {img_ddp:.1f} img/s vs 1 process {img_one:.1f} img/s: {img_ddp / img_one:.2f}x, "
          f"efficiency {img_ddp / (2 * img_one):.1%} (all ticks {mean_s(runs['single process']) / mean_s(on):.1%})")
    if abs(t_on / t_one - mean_s(on) / mean_s(runs["single process"])) > 0.05:
        print("note: best and all ticks disagree: other processes took CPU; rerun with a larger --pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
