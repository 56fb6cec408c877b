"""Step throughput of `facegan.loop.train` against bare PyTorch loops, measured in one run.

    .venv/bin/python benchmarks/bench_loop.py --threads 1                    # DCGAN 64x64, batch 64
    .venv/bin/python benchmarks/bench_loop.py --threads 1 --repeats 2        # twice, with the spread
    .venv/bin/python benchmarks/bench_loop.py --family wgangp --threads 1    # WGAN-GP (n_critic 5)
    .venv/bin/python benchmarks/bench_loop.py --family classifier --threads 1   # the attribute classifier
    .venv/bin/python benchmarks/bench_loop.py --profile                      # + where facegan's step time goes
    .venv/bin/python benchmarks/bench_loop.py --threads 1 --augment diffaugment   # facegan with augment.kind diffaugment

The DCGAN baseline is pytorch/examples dcgan/main.py: D on a real batch, D on fake.detach(),
optimizer step, then the G step on the same fakes; Adam(2e-4, betas 0.5/0.999), BCE (with logits:
all loops use the same nets, facegan.families.dcgan.nets.build_dcgan + dcgan_init_ from seed 0,
which end in a raw logit). Its three `.item()` logging calls per step are kept, its periodic image
saving is not. Every loop streams the same synthetic 64x64 JPEG shards through its own
`facegan.data.stream.train_loader` with the same batch size, seed, shuffle buffer and loader
workers (0 by default: decoding runs in the training process, at the same cost for all), at the
same torch thread count.

Baselines beside "bare" (each skipped with its flag):
  bare + fused Adam   the same bare loop with torch's fused Adam (what facegan uses by default, on
                      CPU too): facegan / this is the loop's own cost, with the optimizer kernel
                      the same on both sides; facegan / bare also counts fused Adam's speed-up.
  bare + fresh z      (DCGAN) G under no_grad for the D step and again on a new z for the G step,
                      as facegan's DCGAN phases once did: the price of a second G forward.
  bare + DiffAugment  (DCGAN) the bare loop with every D input (real, fake in the D step, fake in
                      the G step) through facegan.augpipe's DiffAugment (color, translation,
                      cutout): the pipe's own cost per step, against the same loop without it.

`--augment diffaugment|ada` gives facegan's run that `augment.kind` (default none): the pipe's
cost inside facegan is facegan/bare with it against facegan/bare with none (two runs; the bare
loop is the common yardstick). Targets: DiffAugment adds <= 10% to the step time; the loop with
none keeps >= 0.97x the bare loop.

Interleaved, so that load from other processes falls on all loops alike: facegan trains with a
tick every `--tick-steps` steps, and inside each `Hooks.report` every baseline runs that many
steps of its own. facegan's time for a tick runs from leaving one report to entering the next,
so it holds all of the loop's per-step work (EMA update, finiteness flags, stats) and its tick
work (reading the step flags and losses back, stats reduce, EMA sample grid, two PNGs, JSON
lines), but not the baselines. The first tick is warm-up for every loop (start-up excluded),
then each runs `--steps` measured steps; `--repeats` does it all again with a fresh facegan run.
A tick every 16 steps is ~4x as often as the default `train.tick_kimg` (4) at batch 64, which
counts extra tick work against facegan; checkpoints (`train.checkpoint_kimg`) and the per-epoch
loss plot (`--count` keeps an epoch longer than the run) fall outside the window. Printed: each
loop's best (fastest) tick, the one least slowed by other processes, and its rate over all ticks;
the ratios of both, per-tick ratios (min..max) and per-repeat ratios; the load average before and
after, and the share of a core this process got. With other jobs on the machine use
`--threads 1`: two OpenMP threads fighting for cores under load slow every loop several-fold.

`--family wgangp` runs the wgangp family (n_critic 5, lambda 10) against `BareWGANGP`, a plain
loop computing the same critic and G updates; a "step" is then n_critic critic updates and one G
update, and images count the real batches of every critic update, as facegan counts them.
`--family classifier` runs the classifier family (report_cnn, masked BCE over the attributes whose
train labels vary, Adam 1e-3) against `BareClassifier`, the usual supervised loop with one
`.item()` per step.

Target: facegan >= 0.97x the bare loop, on best ticks and on all ticks.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from facegan.config import from_dict
from facegan.data.recipe import ShardRecipe
from facegan.data.stream import ShardSet, train_loader
from facegan.data.writer import build_shards
from facegan.families import RunConfig
from facegan.families.dcgan.nets import DCGANGenerator, build_dcgan, dcgan_init_
from facegan.hooks import Hooks
from facegan.loop import train

TARGET = 0.97
BARE = "bare (reference loop)"
FUSED = "bare + fused Adam"
FRESH = "bare + fresh z"
AUG = "bare + DiffAugment"
OURS = "facegan.loop.train"


class BareDCGAN:
    """The pytorch/examples dcgan/main.py training step on facegan's nets and loader."""

    def __init__(self, shard_set: ShardSet, args: argparse.Namespace, *, fresh_z: bool = False,
                 fused: bool = False, augment: bool = False) -> None:
        from facegan.augpipe import AugmentPipe
        from facegan.config import AugmentConfig

        torch.manual_seed(0)
        # DiffAugment on what D sees (augment=True), from a generator of its own; identity otherwise.
        pipe = AugmentPipe(AugmentConfig(kind="diffaugment" if augment else "none"))
        gen = torch.Generator().manual_seed(0)
        self.aug = lambda x: pipe(x, generator=gen)
        nets = build_dcgan(resolution=args.resolution, z_dim=args.z_dim, base_channels=args.base_channels)
        for net in nets.values():
            dcgan_init_(net)
        self.G, self.D = nets["G"].train(), nets["D"].train()
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=fused or None)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=fused or None)
        self.criterion = nn.BCEWithLogitsLoss()
        self.loader = train_loader(shard_set, batch_size=args.batch_size, num_workers=args.workers, seed=0,
                                   shuffle_buffer=args.shuffle_buffer)
        self.z_dim, self.fresh_z = args.z_dim, fresh_z

    def run(self, num_steps: int) -> tuple[int, float]:
        """(images, seconds) of num_steps training steps."""
        G, D, z_dim = self.G, self.D, self.z_dim
        images, t0 = 0, time.perf_counter()
        for _ in range(num_steps):
            real = next(self.loader)["image"]
            b = real.shape[0]
            ones, zeros = torch.ones(b), torch.zeros(b)
            # (1) D: maximize log(D(x)) + log(1 - D(G(z)))
            D.zero_grad()
            out = D(self.aug(real))
            err_real = self.criterion(out, ones)
            err_real.backward()
            d_x = out.sigmoid().mean().item()
            if self.fresh_z:
                with torch.no_grad():
                    fake = G(torch.randn(b, z_dim))
            else:
                fake = G(torch.randn(b, z_dim))
            out = D(self.aug(fake.detach()))
            err_fake = self.criterion(out, zeros)
            err_fake.backward()
            d_g_z1 = out.sigmoid().mean().item()
            self.opt_D.step()
            # (2) G: maximize log(D(G(z)))
            G.zero_grad()
            if self.fresh_z:
                fake = G(torch.randn(b, z_dim))
            out = D(self.aug(fake))
            err_g = self.criterion(out, ones)
            err_g.backward()
            d_g_z2 = out.sigmoid().mean().item()
            self.opt_G.step()
            del d_x, d_g_z1, d_g_z2
            images += b
        return images, time.perf_counter() - t0


class BareWGANGP:
    """A plain WGAN-GP step (Gulrajani et al.'s algorithm 1) on facegan's nets and loader: n_critic
    critic updates, each on a fresh real batch, then one G update. It computes exactly what the
    wgangp family computes (one critic forward on reals, fakes and interpolates; the penalty's
    gradient with respect to the interpolates; Adam(1e-4, betas (0, 0.9))), so the ratio measures
    the loop, not the maths; one `.item()` per critic update logs the Wasserstein estimate."""

    def __init__(self, shard_set: ShardSet, args: argparse.Namespace, *, fused: bool = False) -> None:
        from facegan.families.wgangp.nets import build_wgangp

        torch.manual_seed(0)
        nets = build_wgangp(resolution=args.resolution, z_dim=args.z_dim, base_channels=args.base_channels)
        self.G, self.D = nets["G"].train(), nets["D"].train()
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=1e-4, betas=(0.0, 0.9), fused=fused or None)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=1e-4, betas=(0.0, 0.9), fused=fused or None)
        self.loader = train_loader(shard_set, batch_size=args.batch_size, num_workers=args.workers, seed=0,
                                   shuffle_buffer=args.shuffle_buffer)
        self.z_dim, self.n_critic = args.z_dim, args.n_critic

    def run(self, num_steps: int) -> tuple[int, float]:
        G, D, z_dim = self.G, self.D, self.z_dim
        images, t0 = 0, time.perf_counter()
        for _ in range(num_steps):
            for _ in range(self.n_critic):
                real = next(self.loader)["image"]
                b = real.shape[0]
                with torch.no_grad():
                    fake = G(torch.randn(b, z_dim))
                eps = torch.rand(b, 1, 1, 1)
                x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
                scores = D(torch.cat([real, fake, x_hat]))
                (grad,) = torch.autograd.grad(scores[2 * b:].sum(), x_hat, create_graph=True)
                gp = 10.0 * ((grad.flatten(1).square().sum(1) + 1e-12).sqrt() - 1).square().mean()
                w = scores[:b].mean() - scores[b:2 * b].mean()
                self.opt_D.zero_grad()
                (gp - w).backward()
                self.opt_D.step()
                w.item()
                images += b
            self.opt_G.zero_grad()
            (-D(G(torch.randn(b, z_dim))).mean()).backward()
            self.opt_G.step()
        return images, time.perf_counter() - t0


class BareClassifier:
    """The usual supervised loop on the classifier family's net (report_cnn) and loader: logits,
    BCE over the scored attributes (those whose train labels vary, as the family picks them), Adam
    (1e-3), and one `.item()` per step for the running loss."""

    def __init__(self, shard_set: ShardSet, args: argparse.Namespace, *, fused: bool = False) -> None:
        from facegan.data.labels import label_counts
        from facegan.families.classifier.nets import CLASSIFIERS
        from facegan.families.classifier.scoring import scored_attrs

        torch.manual_seed(0)
        names = list(shard_set.attr_names)
        pos, count = label_counts(shard_set, "train")
        scored = scored_attrs(names, [], pos, count)
        self.mask = torch.tensor([a in scored for a in names])
        self.C = CLASSIFIERS["report_cnn"](num_attrs=len(names), resolution=args.resolution).train()
        self.opt = torch.optim.Adam(self.C.parameters(), lr=1e-3, fused=fused or None)
        self.loader = train_loader(shard_set, batch_size=args.batch_size, num_workers=args.workers, seed=0,
                                   shuffle_buffer=args.shuffle_buffer)

    def run(self, num_steps: int) -> tuple[int, float]:
        import torch.nn.functional as F

        images, t0 = 0, time.perf_counter()
        for _ in range(num_steps):
            batch = next(self.loader)
            x, y = batch["image"], batch["attrs"]
            logits = self.C(x)
            loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")[:, self.mask].mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            loss.item()
            images += x.shape[0]
        return images, time.perf_counter() - t0


def facegan_config(shards: Path, out: Path, args: argparse.Namespace) -> RunConfig:
    per_step = args.batch_size * (args.n_critic if args.family == "wgangp" else 1)   # real images per step
    tick_images = args.tick_steps * per_step
    model = {"family": args.family, "resolution": args.resolution, "z_dim": args.z_dim,
             "base_channels": args.base_channels}
    sections = {}
    if args.family == "wgangp":
        optim = {"g_lr": 1e-4, "d_lr": 1e-4, "beta1": 0.0, "beta2": 0.9}
        gan = {"lambda_gp": 10.0, "n_critic": args.n_critic}
    elif args.family == "classifier":
        optim, gan, model = {"lr": 1e-3}, {}, {"family": "classifier", "resolution": args.resolution}
        sections["eval"] = {"splits": ["val"]}   # scored once, after the window (should_stop ends the run)
    else:
        optim, gan = {"g_lr": 2e-4, "d_lr": 2e-4, "beta1": 0.5, "beta2": 0.999}, {}
    if args.augment != "none":
        sections["augment"] = {"kind": args.augment}
    return from_dict(RunConfig, {
        "data": {"shards": str(shards), "batch_size": args.batch_size, "num_workers": args.workers,
                 "shuffle_buffer": args.shuffle_buffer},
        "model": model,
        "optim": optim, "gan": gan, **sections,
        # total_kimg lies beyond the window: should_stop ends the run, so no final checkpoint. fp32
        # and NCHW like the bare loops (train.precision: auto would pick bf16 on a CPU with bf16 units).
        "train": {"precision": "fp32", "channels_last": False, "total_kimg": (args.tick_steps + args.steps) * per_step * 2 / 1000,
                  "tick_kimg": tick_images / 1000, "checkpoint_kimg": 1e6, "device": "cpu",
                  "num_threads": args.threads, "seed": 0, "out_dir": str(out)},
        "wandb": {"enabled": False},
    })


def interleaved(shards: Path, out: Path, args: argparse.Namespace,
                baselines: dict[str, BareDCGAN | BareWGANGP | BareClassifier],
                cpu: dict[str, float] | None = None) -> dict[str, list[tuple[int, float]]]:
    """facegan.loop.train, with every baseline run for one tick's steps inside each Hooks.report.

    Returns (images, seconds) per tick for each loop. facegan's tick k is the time from leaving
    report k-1 to entering report k, so the baselines' time inside report is not counted. `cpu`
    gets each loop's process CPU seconds over the measured ticks added (with one torch thread and
    no loader workers, the work itself: far less sensitive than wall time to other processes).
    """
    cpu = {} if cpu is None else cpu
    num_ticks = args.steps // args.tick_steps
    times: dict[str, list[tuple[int, float]]] = {name: [] for name in [*baselines, OURS]}
    state = {"left": 0.0, "images": 0, "reports": 0, "cpu_left": 0.0}

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        entered, images, cpu_in = time.perf_counter(), int(metrics["images_seen"]), time.process_time()
        warm = state["reports"] > 0
        if warm:
            times[OURS].append((images - state["images"], entered - state["left"]))
            cpu[OURS] = cpu.get(OURS, 0.0) + cpu_in - state["cpu_left"]
        state["reports"] += 1
        for name, loop in baselines.items():
            c0 = time.process_time()
            n, dt = loop.run(args.tick_steps)
            if warm:  # the first call is the baselines' warm-up
                times[name].append((n, dt))
                cpu[name] = cpu.get(name, 0.0) + time.process_time() - c0
        state["left"], state["images"], state["cpu_left"] = time.perf_counter(), images, time.process_time()

    hooks = Hooks(report=report, should_stop=lambda: state["reports"] > num_ticks)
    train(facegan_config(shards, out, args), hooks=hooks)
    return times


PROFILE_ROWS = [  # (label, file suffix, function): facegan step parts by cumulative time
    ("loader next()", "facegan/data/stream.py", "__next__"),
    ("d_step forwards (G + 2x D)", "facegan/families/dcgan/steps.py", "d_step"),
    ("g_step forward (D on the carried fakes)", "facegan/families/dcgan/steps.py", "g_step"),
    ("  G forward (all calls)", "facegan/families/dcgan/nets.py", "forward@G"),
    ("backward (both phases)", "torch/_tensor.py", "backward"),
    ("Adam steps", "torch/optim/adam.py", "step"),
    ("finiteness flags (finite_flag)", "facegan/runtime.py", "finite_flag"),
    ("EMA update", "facegan/loop.py", "update_ema"),
    ("stats add", "facegan/stats.py", "add"),
    ("tick: step flags + losses read back, reduce", "facegan/stats.py", "reduce|pop_steps"),
    ("tick: EMA grid (G forward)", "facegan/families/steps.py", "tick_images"),
    ("tick: grid PNG", "facegan/images.py", "save_grid_png"),
    ("loss arrays + curve (epochs, run end)", "facegan/stats.py", "save_loss_arrays|plot_loss_curves"),
]


def print_profile(prof: cProfile.Profile, *, steps: int) -> None:
    g_line = inspect.getsourcelines(DCGANGenerator.forward)[1]
    table = pstats.Stats(prof).stats  # {(file, line, func): (cc, ncalls, tottime, cumtime, callers)}
    total = max(ct for (_, _, _, ct, _) in table.values())
    print(f"\nfacegan.loop.train under cProfile ({steps} steps incl. start-up): {total:.1f} s, "
          f"{1000 * total / steps:.0f} ms/step")
    print(f"{'part':<38} {'calls':>6} {'ms/call':>8} {'ms/step':>8} {'share':>6}")
    for label, suffix, func in PROFILE_ROWS:
        names = func.split("|")
        calls, ct = 0, 0.0
        for (file, line, name), (_, nc, _, c, _) in table.items():
            if not file.endswith(suffix):
                continue
            if name in names or (func == "forward@G" and name == "forward" and line == g_line):
                calls, ct = calls + nc, ct + c
        print(f"{label:<38} {calls:>6} {1000 * ct / max(calls, 1):8.1f} {1000 * ct / steps:8.1f} {ct / total:6.1%}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="dcgan", choices=["dcgan", "wgangp", "classifier"],
                    help="dcgan: against pytorch/examples' loop; wgangp: a bare WGAN-GP loop; classifier: a bare "
                         "supervised loop")
    ap.add_argument("--n-critic", type=int, default=5, help="wgangp: critic steps per G step")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--base-channels", type=int, default=64)
    ap.add_argument("--z-dim", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, all loops")
    ap.add_argument("--workers", type=int, default=0, help="loader worker processes, all loops")
    ap.add_argument("--shuffle-buffer", type=int, default=1000)
    ap.add_argument("--count", type=int, default=0,
                    help="synthetic faces, 80%% train (default: an epoch longer than the run, so no loss plot)")
    ap.add_argument("--format", default="jpg", choices=["jpg", "png", "raw"])
    ap.add_argument("--tick-steps", type=int, default=16, help="steps per facegan tick; also the warm-up")
    ap.add_argument("--steps", type=int, default=48, help="measured steps per loop (a multiple of --tick-steps)")
    ap.add_argument("--repeats", type=int, default=1, help="whole measurements, each with a fresh facegan run")
    ap.add_argument("--no-fresh-z", action="store_true", help="skip the 'bare + fresh z' baseline (DCGAN)")
    ap.add_argument("--no-fused-baseline", action="store_true", help="skip the 'bare + fused Adam' baseline")
    ap.add_argument("--augment", default="none", choices=["none", "diffaugment", "ada"],
                    help="facegan's augment.kind (dcgan, wgangp: diffaugment only)")
    ap.add_argument("--no-augment-baseline", action="store_true", help="skip the 'bare + DiffAugment' baseline")
    ap.add_argument("--profile", action="store_true", help="then one facegan run alone under cProfile")
    args = ap.parse_args()
    if args.steps < args.tick_steps or args.steps % args.tick_steps:
        ap.error(f"--steps must be a positive multiple of --tick-steps ({args.tick_steps}), got {args.steps}")
    torch.set_num_threads(args.threads)
    per_step = args.n_critic if args.family == "wgangp" else 1
    count = args.count or int((args.tick_steps + args.steps + 8) * per_step * args.batch_size / 0.75)
    load_before, cpu0, wall0 = os.getloadavg(), time.process_time(), time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        recipe = from_dict(ShardRecipe, {"source": "synthetic", "count": count, "resolution": args.resolution,
                                         "shard_size": 250, "format": args.format})
        build_shards(recipe, root=None, out=shards, progress=False)
        shard_set = ShardSet.open(str(shards))
        per_epoch = shard_set.count("train") // (args.batch_size * per_step)
        name = {"dcgan": "DCGAN", "wgangp": f"WGAN-GP (n_critic {args.n_critic})",
                "classifier": "attribute classifier (report_cnn)"}[args.family]
        print(f"{args.resolution}x{args.resolution} {name} (base {args.base_channels}, z {args.z_dim}), batch "
              f"{args.batch_size}, {args.threads} torch threads, {args.workers} loader workers, "
              f"{shard_set.count('train')} synthetic {args.format} train images ({per_epoch} steps/epoch); "
              f"{args.tick_steps} warm-up + {args.steps} measured steps per loop, interleaved per tick, "
              f"x{args.repeats}; load average {load_before[0]:.1f} (1 min), {load_before[1]:.1f} (5 min) "
              f"on {os.cpu_count()} cores", flush=True)
        if per_epoch <= args.tick_steps + args.steps:
            print(f"note: an epoch ({per_epoch} steps) ends inside the run: facegan's loss plot is in the window")

        fused = not args.no_fused_baseline
        if args.family == "wgangp":
            baselines: dict[str, BareDCGAN | BareWGANGP | BareClassifier] = {BARE: BareWGANGP(shard_set, args)}
            if fused:
                baselines[FUSED] = BareWGANGP(shard_set, args, fused=True)
        elif args.family == "classifier":
            baselines = {BARE: BareClassifier(shard_set, args)}
            if fused:
                baselines[FUSED] = BareClassifier(shard_set, args, fused=True)
        else:
            baselines = {BARE: BareDCGAN(shard_set, args)}
            if fused:
                baselines[FUSED] = BareDCGAN(shard_set, args, fused=True)
            if not args.no_fresh_z:
                baselines[FRESH] = BareDCGAN(shard_set, args, fresh_z=True)
            if not args.no_augment_baseline:
                baselines[AUG] = BareDCGAN(shard_set, args, augment=True)
        cpu: dict[str, float] = {}
        runs = [interleaved(shards, Path(tmp) / f"run{r}", args, baselines, cpu) for r in range(args.repeats)]
        del baselines

        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            interleaved(shards, Path(tmp) / "profile", args, {})
            prof.disable()
    load_after, cpu_share = os.getloadavg(), (time.process_time() - cpu0) / (time.perf_counter() - wall0)

    ticks = args.steps // args.tick_steps
    times = {name: [seg for run in runs for seg in run[name]] for name in runs[0]}
    print(f"\n{'img/s per tick':<24} " + " ".join(f"{f'r{r + 1}t{k + 2}':>6}" for r in range(args.repeats)
                                                   for k in range(ticks))
          + f" {'images':>7} {'seconds':>8} {'img/s':>7} {'ms/step':>8} {'best':>6}")
    rate, best = {}, {}
    for name, segs in times.items():
        n, dt = sum(s[0] for s in segs), sum(s[1] for s in segs)
        rate[name], best[name] = n / dt, max(sn / sdt for sn, sdt in segs)
        print(f"{name:<24} " + " ".join(f"{sn / sdt:6.1f}" for sn, sdt in segs)
              + f" {n:>7} {dt:8.2f} {n / dt:7.1f} {1000 * dt / (n / args.batch_size / per_step):8.1f} "
              f"{best[name]:6.1f}")

    def ratios(ours: str, base: str) -> str:
        per_tick = sorted(f[0] / f[1] / (b[0] / b[1]) for f, b in zip(times[ours], times[base]))
        per_run = [sum(s[0] for s in run[ours]) / sum(s[1] for s in run[ours])
                   / (sum(s[0] for s in run[base]) / sum(s[1] for s in run[base])) for run in runs]
        return (f"{best[ours] / best[base]:.3f}x best tick, {rate[ours] / rate[base]:.3f}x all ticks "
                f"(per tick {per_tick[0]:.3f}..{per_tick[-1]:.3f}"
                + (f"; per repeat {', '.join(f'{r:.3f}' for r in per_run)}" if len(runs) > 1 else "") + ")")

    verdict = min(best[OURS] / best[BARE], rate[OURS] / rate[BARE])
    aug_note = f" (facegan with augment.kind {args.augment})" if args.augment != "none" else ""
    print(f"\nfacegan vs bare{aug_note}: {ratios(OURS, BARE)}"
          + (f"; target >= {TARGET}x on both: {'met' if verdict >= TARGET else 'NOT met'}" if not aug_note else ""))
    if FUSED in rate:
        print(f"facegan vs bare + fused Adam: {ratios(OURS, FUSED)} (the loop's own cost, same optimizer kernel)")
        print(f"bare + fused Adam vs bare: {ratios(FUSED, BARE)} (fused Adam's speed-up)")
    if FRESH in rate:
        print(f"bare + fresh z vs bare: {ratios(FRESH, BARE)} (the second G forward)")
    if AUG in rate:
        print(f"bare + DiffAugment vs bare: {ratios(AUG, BARE)}: DiffAugment adds "
              f"{100 * (rate[BARE] / rate[AUG] - 1):.1f}% to the step time over all ticks "
              f"({100 * (best[BARE] / best[AUG] - 1):.1f}% on best ticks; target <= 10%)")
        if args.augment == "diffaugment":
            print(f"facegan (diffaugment) vs bare + DiffAugment: {ratios(OURS, AUG)} (the loop's cost with the pipe on)")
    steps_per_loop = args.steps * args.repeats
    print("CPU time per step (this process; robust to other processes' load): "
          + ", ".join(f"{name} {1000 * c / steps_per_loop:.0f} ms" for name, c in cpu.items()))
    if AUG in cpu:
        print(f"DiffAugment's CPU time: +{100 * (cpu[AUG] / cpu[BARE] - 1):.1f}% per bare step (target <= 10%)")
    print(f"facegan / bare CPU time per step: {cpu[OURS] / cpu[BARE]:.3f}"
          + (f" (augment.kind {args.augment})" if args.augment != "none" else " (target <= 1 / 0.97 = 1.031)"))
    if abs(best[OURS] / best[BARE] - rate[OURS] / rate[BARE]) > 0.03:
        print("note: best and all ticks disagree by > 0.03: other processes took CPU; rerun with a larger --steps")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (1 min; {os.cpu_count()} cores); "
          f"this process got {cpu_share:.2f} of a core on average")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if args.profile and args.family == "dcgan":
        print_profile(prof, steps=args.tick_steps + args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
