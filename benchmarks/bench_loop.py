"""Step throughput of `facegan.loop.train` against a bare PyTorch DCGAN loop, measured in one run.

    .venv/bin/python benchmarks/bench_loop.py                       # 64x64, batch 64, 2 threads, ~2.5 min
    .venv/bin/python benchmarks/bench_loop.py --steps 96 --rounds 3  # longer, steadier
    .venv/bin/python benchmarks/bench_loop.py --profile             # + where facegan's step time goes

The baseline is pytorch/examples dcgan/main.py: D on a real batch, D on fake.detach(), optimizer
step, then the G step on the same fakes; Adam(2e-4, betas 0.5/0.999), BCE (with logits: both loops
use the same nets, FAMILIES["dcgan"].build + init_weights from seed 0, which end in a raw logit);
its three `.item()` logging calls per step are kept, its periodic image saving is not. Both loops
stream the same synthetic 64x64 JPEG shards through `facegan.data.stream.train_loader` with the
same batch size, seed, shuffle buffer and loader workers (0 by default: decoding runs in the
training process for both), and run with the same torch thread count.

Start-up is excluded: the first tick's steps (`--tick-steps`) are warm-up, then both loops run the
same number of steps (`--steps`). facegan is timed between two `Hooks.report` calls, so its
window holds all of the loop's per-step work (EMA update, two finite checks, stats) and the tick
work (stats reduce, EMA sample grid, two PNGs, JSON lines) of every tick in it. Ticks come every
`--tick-steps` steps, ~8x more often than the default `train.tick_kimg` (4) at batch 64, which
counts tick work against facegan; checkpoints (`train.checkpoint_kimg`) and loss-curve epochs
(`--count` keeps an epoch longer than the run) fall outside the window.

A third row, "bare + fresh z", is the baseline doing what facegan's DCGAN phases do: G runs under
no_grad for the D step and again, on a new z, for the G step (the examples reuse the D step's
fakes). facegan / "bare + fresh z" is the loop's own overhead; the rest is that extra forward.
Rounds alternate the three (bare, bare + fresh z, facegan, then again) so that load from other
processes hits all of them; ratios use images / seconds summed over rounds.

Target: facegan >= 0.95x the bare loop.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from facegan.config import RunConfig, from_dict
from facegan.data.recipe import ShardRecipe
from facegan.data.stream import ShardSet, train_loader
from facegan.data.writer import build_shards
from facegan.hooks import Hooks
from facegan.loop import train
from facegan.models import FAMILIES
from facegan.models.dcgan import DCGANGenerator

TARGET = 0.95


def bare_dcgan(shard_set: ShardSet, args: argparse.Namespace, *, fresh_z: bool) -> tuple[int, float]:
    """(images, seconds) of the measured steps of the pytorch/examples DCGAN loop."""
    torch.set_num_threads(args.threads)
    spec = FAMILIES["dcgan"]
    torch.manual_seed(0)
    nets = spec.build(resolution=args.resolution, z_dim=args.z_dim, base_channels=args.base_channels)
    for net in nets.values():
        spec.init_weights(net)
    G, D = nets["G"], nets["D"]
    opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    criterion = nn.BCEWithLogitsLoss()
    loader = train_loader(shard_set, batch_size=args.batch_size, num_workers=args.workers, seed=0,
                          shuffle_buffer=args.shuffle_buffer)
    G.train()
    D.train()
    images, t0 = 0, 0.0
    for i in range(args.tick_steps + args.steps):
        if i == args.tick_steps:
            images, t0 = 0, time.perf_counter()
        real = next(loader)["image"]
        b = real.shape[0]
        ones, zeros = torch.ones(b), torch.zeros(b)
        # (1) D: maximize log(D(x)) + log(1 - D(G(z)))
        D.zero_grad()
        out = D(real)
        err_real = criterion(out, ones)
        err_real.backward()
        d_x = out.sigmoid().mean().item()
        if fresh_z:
            with torch.no_grad():
                fake = G(torch.randn(b, args.z_dim))
        else:
            fake = G(torch.randn(b, args.z_dim))
        out = D(fake.detach())
        err_fake = criterion(out, zeros)
        err_fake.backward()
        d_g_z1 = out.sigmoid().mean().item()
        opt_D.step()
        # (2) G: maximize log(D(G(z)))
        G.zero_grad()
        if fresh_z:
            fake = G(torch.randn(b, args.z_dim))
        out = D(fake)
        err_g = criterion(out, ones)
        err_g.backward()
        d_g_z2 = out.sigmoid().mean().item()
        opt_G.step()
        del d_x, d_g_z1, d_g_z2
        images += b
    return images, time.perf_counter() - t0


def facegan_config(shards: Path, out: Path, args: argparse.Namespace) -> RunConfig:
    tick_images = args.tick_steps * args.batch_size
    return from_dict(RunConfig, {
        "data": {"shards": str(shards), "batch_size": args.batch_size, "num_workers": args.workers,
                 "shuffle_buffer": args.shuffle_buffer},
        "model": {"family": "dcgan", "resolution": args.resolution, "z_dim": args.z_dim,
                  "base_channels": args.base_channels},
        "optim": {"g_lr": 2e-4, "d_lr": 2e-4, "beta1": 0.5, "beta2": 0.999},
        # total_kimg lies beyond the window: should_stop ends the run, so no final checkpoint.
        "train": {"total_kimg": (args.tick_steps + args.steps) * args.batch_size * 2 / 1000,
                  "tick_kimg": tick_images / 1000, "checkpoint_kimg": 1e6, "device": "cpu",
                  "num_threads": args.threads, "seed": 0, "out_dir": str(out)},
        "wandb": {"enabled": False},
    })


def facegan_loop(shards: Path, out: Path, args: argparse.Namespace) -> tuple[int, float, float]:
    """(images, seconds) between the first tick's report and the last measured one, and the
    loop's own mean `img_per_sec` over those ticks."""
    num_ticks = args.steps // args.tick_steps
    seen: list[tuple[float, int, float]] = []

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        seen.append((time.perf_counter(), int(metrics["images_seen"]), metrics["img_per_sec"]))

    hooks = Hooks(report=report, should_stop=lambda: len(seen) > num_ticks)
    train(facegan_config(shards, out, args), hooks=hooks)
    if len(seen) != num_ticks + 1:
        raise RuntimeError(f"expected {num_ticks + 1} ticks from facegan.loop.train, got {len(seen)}")
    (t0, n0, _), (t1, n1, _) = seen[0], seen[-1]
    own = sum(r for _, _, r in seen[1:]) / num_ticks
    return n1 - n0, t1 - t0, own


PROFILE_ROWS = [  # (label, file suffix, function): facegan step parts by cumulative time
    ("loader next()", "facegan/data/stream.py", "__next__"),
    ("d_step forwards (G no_grad + 2x D)", "facegan/steps/dcgan.py", "d_step"),
    ("g_step forwards (G + D)", "facegan/steps/dcgan.py", "g_step"),
    ("  G forward (all calls)", "facegan/models/dcgan.py", "forward@G"),
    ("backward (both phases)", "torch/_tensor.py", "backward"),
    ("Adam steps", "torch/optim/adam.py", "step"),
    ("finite checks (_all_ranks_finite)", "facegan/loop.py", "_all_ranks_finite"),
    ("EMA update", "facegan/loop.py", "update_ema"),
    ("stats add", "facegan/stats.py", "add"),
    ("tick: stats reduce + pop_steps", "facegan/stats.py", "reduce|pop_steps"),
    ("tick: grid PNGs", "facegan/loop.py", "save_grid_png"),
    ("epoch: loss arrays + curve", "facegan/stats.py", "save_loss_arrays|plot_loss_curves"),
]


def print_profile(prof: cProfile.Profile, *, steps: int) -> None:
    g_line = inspect.getsourcelines(DCGANGenerator.forward)[1]
    table = pstats.Stats(prof).stats  # {(file, line, func): (cc, ncalls, tottime, cumtime, callers)}
    total = max(ct for (_, _, _, ct, _) in table.values())
    print(f"\nfacegan.loop.train under cProfile ({steps} steps incl. start-up): {total:.1f} s, "
          f"{1000 * total / steps:.0f} ms/step")
    print(f"{'part':<38} {'calls':>6} {'ms/step':>8} {'share':>6}")
    for label, suffix, func in PROFILE_ROWS:
        names = func.split("|")
        calls, ct = 0, 0.0
        for (file, line, name), (_, nc, _, c, _) in table.items():
            if not file.endswith(suffix):
                continue
            if name in names or (func == "forward@G" and name == "forward" and line == g_line):
                calls, ct = calls + nc, ct + c
        print(f"{label:<38} {calls:>6} {1000 * ct / steps:8.1f} {ct / total:6.1%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--base-channels", type=int, default=64)
    ap.add_argument("--z-dim", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, both loops")
    ap.add_argument("--workers", type=int, default=0, help="loader worker processes, both loops")
    ap.add_argument("--shuffle-buffer", type=int, default=1000)
    ap.add_argument("--count", type=int, default=4000,
                    help="synthetic faces (80%% train); an epoch longer than the run keeps loss plots out")
    ap.add_argument("--format", default="jpg", choices=["jpg", "png", "raw"])
    ap.add_argument("--tick-steps", type=int, default=8, help="steps per facegan tick; also the warm-up")
    ap.add_argument("--steps", type=int, default=32, help="measured steps per run (a multiple of --tick-steps)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-fresh-z", action="store_true", help="skip the 'bare + fresh z' row")
    ap.add_argument("--profile", action="store_true", help="then one facegan run under cProfile")
    args = ap.parse_args()
    if args.steps < args.tick_steps or args.steps % args.tick_steps:
        ap.error(f"--steps must be a positive multiple of --tick-steps ({args.tick_steps}), got {args.steps}")

    loops = ["bare (pytorch examples)"] + ([] if args.no_fresh_z else ["bare + fresh z"]) + ["facegan.loop.train"]
    rows: list[tuple[str, int, int, float]] = []
    own_rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        recipe = from_dict(ShardRecipe, {"source": "synthetic", "count": args.count, "resolution": args.resolution,
                                         "shard_size": 250, "format": args.format})
        build_shards(recipe, root=None, out=shards, progress=False)
        shard_set = ShardSet.open(str(shards))
        per_epoch = shard_set.count("train") // args.batch_size
        print(f"{args.resolution}x{args.resolution} DCGAN (base {args.base_channels}, z {args.z_dim}), batch "
              f"{args.batch_size}, {args.threads} torch threads, {args.workers} loader workers, "
              f"{shard_set.count('train')} synthetic {args.format} train images ({per_epoch} steps/epoch); "
              f"{args.tick_steps} warm-up + {args.steps} measured steps per run")
        if per_epoch <= args.tick_steps + args.steps:
            print(f"note: an epoch ({per_epoch} steps) ends inside the run: facegan's loss plot is in the window")

        for rnd in range(1, args.rounds + 1):
            for name in loops:
                if name == "facegan.loop.train":
                    n, dt, own = facegan_loop(shards, Path(tmp) / f"run{rnd}", args)
                    own_rates.append(own)
                else:
                    n, dt = bare_dcgan(shard_set, args, fresh_z=name == "bare + fresh z")
                rows.append((name, rnd, n, dt))
                print(f"  round {rnd}: {name:<24} {n / dt:7.1f} img/s", flush=True)

        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            facegan_loop(shards, Path(tmp) / "profile", args)
            prof.disable()

    print(f"\n{'loop':<24} {'round':>5} {'images':>7} {'seconds':>8} {'img/s':>8} {'ms/step':>8}")
    for name, rnd, n, dt in rows:
        print(f"{name:<24} {rnd:>5} {n:>7} {dt:8.2f} {n / dt:8.1f} {1000 * dt / (n / args.batch_size):8.1f}")
    rate = {name: sum(n for nm, _, n, _ in rows if nm == name) / sum(dt for nm, _, _, dt in rows if nm == name)
            for name in loops}
    bare, ours = rate["bare (pytorch examples)"], rate["facegan.loop.train"]
    per_round = [(sum(n for nm, r, n, _ in rows if nm == "facegan.loop.train" and r == rnd)
                  / sum(dt for nm, r, _, dt in rows if nm == "facegan.loop.train" and r == rnd))
                 / (sum(n for nm, r, n, _ in rows if nm == "bare (pytorch examples)" and r == rnd)
                    / sum(dt for nm, r, _, dt in rows if nm == "bare (pytorch examples)" and r == rnd))
                 for rnd in range(1, args.rounds + 1)]
    print(f"\nall rounds: bare {bare:.1f} img/s, facegan {ours:.1f} img/s = {ours / bare:.3f}x the bare loop "
          f"(per round {', '.join(f'{r:.3f}' for r in per_round)}); "
          f"target >= {TARGET}x: {'met' if ours / bare >= TARGET else 'NOT met'}")
    if "bare + fresh z" in rate:
        fresh = rate["bare + fresh z"]
        print(f"bare + fresh z {fresh:.1f} img/s = {fresh / bare:.3f}x bare (the second G forward); "
              f"facegan = {ours / fresh:.3f}x bare + fresh z (the loop's own overhead)")
    print(f"facegan's own img_per_sec metric over the same ticks: {sum(own_rates) / len(own_rates):.1f} img/s")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.profile:
        print_profile(prof, steps=args.tick_steps + args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
