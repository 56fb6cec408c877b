"""The training loop: one function for every family, run in-process or inside a Ray Train worker.

    facegan train configs/dcgan_demo.yaml --no-ray        # in-process, this loop directly
    facegan train configs/wgangp_celeba64.yaml            # Ray Train workers, each running this loop
    facegan classifier train configs/classifier_demo.yaml # the classifier is a family too

The loop knows no family by name. It builds the family's nets, one Adam per declared optimizer,
the family's `Steps`, and per step runs the declared phases in order (StyleGAN2-ADA's phase list):
a phase runs `repeat` times, draws a fresh real batch when it uses data, and steps its optimizer
with the loss its method returns. Progress is counted in images seen over all ranks (kimg), not
epochs: the shard stream is endless and every rank runs the same number of steps. Periodic work
happens at ticks (`train.tick_kimg`: reduced metrics, grids) and checkpoints
(`train.checkpoint_kimg`). This module imports neither Ray nor W&B; it talks to its runner through
`facegan.hooks.Hooks`.

`train` reads top to bottom; the parts it hands off to, in the order they run:

    build_run      the run's state: nets, EMA copies, optimizers, scaler, Steps, RNG, counters, and
                   the one facegan.runstate.RunState that checkpoints them (save and resume alike)
    resume_run     checks a checkpoint fits, then RunState.load
    place, enter_stage, wrap_nets   device and memory format, the growth stage, DDP wrapping
    run_phases     one step's phases, under SkipNonFinite (the one rule for non-finite losses)
    finish_step    family state, rate factors, EMA, the step's scalars
    TickWork       rows and metrics to the sinks, evaluations, grids
    Every          the schedule of every "each N kimg" event (ticks, checkpoints, evaluations)
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from facegan.augpipe import AugmentedNet, AugmentPipe
from facegan.checkpoint import check_compatible
from facegan.config import ConfigError, to_dict
from facegan.data.labels import fixed_attrs
from facegan.data.stream import ShardSet, eval_loader, train_loader
from facegan.errors import CheckpointError
from facegan.families import FAMILIES, RunConfig
from facegan.families.base import DataInfo, Family, OptimizerSpec, Phase
from facegan.families.loading import read_checkpoint
from facegan.families.steps import StepContext, Steps, mean_over_ranks
from facegan.hooks import Hooks
from facegan.images import save_grid_png
from facegan.runstate import Progress, RankRNG, RunState
from facegan.runtime import (BadSteps, agree, all_ranks_finite, bare, check_writable_dir, distributed, finite_flag,
                             resume_dir, setup_torch)
from facegan.stats import JsonlSink, Sink, Stats, plot_loss_curves, save_loss_arrays

log = logging.getLogger(__name__)


def check_shards(cfg: RunConfig, shards: ShardSet, *, world_size: int = 1) -> None:
    """The shard set fits cfg: its resolution, labels for families that need them, eval splits, and
    a global batch that the train split and this machine's memory can hold. Run before Ray starts
    (facegan.launch.trainer.preflight, with ray.num_workers) and again in every worker."""
    from facegan.runtime import memory_bytes

    family = FAMILIES[cfg.model.family]
    if tuple(shards.resolution) != tuple(cfg.model.size):
        raise ConfigError(f"model.resolution {cfg.model.resolution} does not match the shards in {cfg.data.shards} "
                          f"({shards.resolution[0]}x{shards.resolution[1]})")
    if family.needs_labels and not shards.attr_names:
        raise ConfigError(f"model.family {family.name!r} needs attribute labels, but the shards in "
                          f"{cfg.data.shards} carry none (manifest attr_names is empty)")
    missing = [s for s in getattr(cfg.eval, "splits", []) if not shards.count(s)]
    if missing:
        raise ConfigError(f"eval.splits: {cfg.data.shards} has no {', '.join(missing)} split")
    batch = cfg.data.batch_size
    if batch * world_size > shards.count("train"):
        raise ConfigError(f"data.batch_size {batch} x {world_size} rank{'s' if world_size > 1 else ''} is more than the "
                          f"{shards.count('train')} training samples in {cfg.data.shards}")
    h, w = shards.resolution
    # A float32 batch, its pinned copy and the loader's prefetched batches: refuse what cannot fit.
    need = batch * 3 * h * w * 4 * (4 + 2 * cfg.data.num_workers)
    if need > memory_bytes() // 4:
        raise ConfigError(f"data.batch_size {batch} at {h}x{w} needs about {need / 2**30:.1f} GiB for its batches "
                          f"alone; this machine has {memory_bytes() / 2**30:.1f} GiB: use a smaller batch")


def data_info(cfg: RunConfig, shards: ShardSet) -> DataInfo:
    """What the family learns about its data (label counts only for families that need labels)."""
    pos: tuple[int, ...] | None = None
    count = 0
    if FAMILIES[cfg.model.family].needs_labels:
        from facegan.data.labels import label_counts

        pos_A, count = label_counts(shards, "train")
        pos = tuple(int(p) for p in pos_A)
    return DataInfo(attr_names=tuple(shards.attr_names), train_positives=pos, train_count=count,
                    shard_recipe=dict(shards.manifest.get("recipe", {})), resolution=tuple(shards.resolution))


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, *, beta: float, ok: torch.Tensor | None = None) -> None:
    """ema = beta * ema + (1 - beta) * net for parameters (one foreach op); buffers copied.

    `ok`: the step's finiteness flag as a 0-dim device tensor (1: the step ran, 0: it was skipped,
    the parameters left as they were): the weight becomes ok * (1 - beta), so a skipped step leaves
    the EMA where it was without the host reading the flag."""
    ema_params = [p for p in ema.parameters()]
    if ema_params:
        src = [p.detach() for p in net.parameters()]
        if ok is None:
            torch._foreach_lerp_(ema_params, src, 1.0 - beta)
        else:
            weight = ok * (1.0 - beta)
            torch._foreach_lerp_(ema_params, src, [weight] * len(ema_params))
    ema_bufs = [b for b in ema.buffers()]
    if ema_bufs:
        torch._foreach_copy_(ema_bufs, [b for b in net.buffers()])


def fixed_reals(shards: ShardSet, n: int, *, split: str = "val") -> torch.Tensor:
    """The first `n` images of `split` (a fixed real batch for reconstruction grids)."""
    if shards.count(split) == 0:
        split = "train"
    with torch.random.fork_rng(devices=[]):
        batch = next(iter(eval_loader(shards, split=split, batch_size=n)))
    return batch["image"][:n]


def _optimizer_to(opt: torch.optim.Optimizer, *, fused: bool) -> None:
    """Optimizer state on its parameters' device and in their memory layout (channels_last nets),
    and the run's `fused` choice in every param group: a checkpoint's groups carry the choice they
    were saved with, and fused Adam keeps its step counts on the parameters' device."""
    for group in opt.param_groups:
        group["fused"] = True if fused else None
        for p in group["params"]:
            state = opt.state.get(p) or {}
            for k, v in state.items():
                if not isinstance(v, torch.Tensor):
                    continue
                if k == "step":
                    state[k] = v.to(device=p.device, dtype=torch.float32) if fused else v.to("cpu")
                elif v.shape == p.shape:
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)   # p's device and strides
                else:
                    state[k] = v.to(p.device)


def device_batch(batch: dict, device: torch.device, *, normalize: bool = False,
                 keys: tuple[str, ...] = ("image", "attrs")) -> dict[str, torch.Tensor]:
    """The tensors a phase sees, on `device` (asynchronously from pinned memory). `normalize`: the
    loader sent uint8 images (a quarter of the bytes over PCIe); map them to [-1, 1] here, with the
    loader's own arithmetic (x / 127.5 - 1), so the values are the same bit for bit."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor) and k in keys}
    if normalize:
        out["image"] = out["image"].to(torch.float32).div_(127.5).sub_(1.0)
    return out


class Every:
    """The schedule of one "every N kimg" event (ticks, checkpoints, evaluations): due once the
    images seen reach the next multiple of `images`, then moved past where it fired. `images` 0:
    never due."""

    def __init__(self, images: int, *, images_seen: int) -> None:
        self.images = images
        self.next: int | None = None
        self.advance(images_seen)

    def due(self, images_seen: int) -> bool:
        return self.next is not None and images_seen >= self.next

    def advance(self, images_seen: int) -> None:
        if self.images > 0:
            self.next = (images_seen // self.images + 1) * self.images


def every_kimg(kimg: float, *, batch_total: int, images_seen: int) -> Every:
    """`kimg` (a config value; <= 0: never) as a schedule of whole steps: at least one global batch."""
    return Every(max(batch_total, int(kimg * 1000)) if kimg > 0 else 0, images_seen=images_seen)


class SkipNonFinite:
    """The one rule for non-finite losses: a step is good when every phase's loss is finite on
    every rank. At the first phase whose loss is not (on any rank), that phase's and every later
    phase's optimizer update is skipped on every rank (the updates of the phases before it stand);
    a skipped step runs no `Steps.after_step`, no `lr_factors`, no EMA update, and its losses stay
    out of the means; `BadSteps` counts it and stops the run after `train.max_bad_steps` in a row.

    How the decision is taken, chosen once per run (parameters, optimizer state and counts end
    the same either way):
      on the device: fused Adam without fp16's GradScaler. The loss's finiteness, agreed over ranks
        (`finite_flag`), reaches fused Adam as `found_inf`, which skips the update where it is 1;
        later phases still run (their updates skipped, though their forwards still move batch-norm
        running statistics), so no host sync is needed. The host reads
        the flag after the step only when the family keeps host-side state per step (`after_step`,
        `lr_factors`), else at the next tick with the losses.
      on the host: one `all_ranks_finite` sync per phase; the step stops at the first non-finite
        phase (every rank alike: a rank skipping backward while others run it would hang DDP).
        Under fp16 the GradScaler also skips updates with inf gradients and is updated after a
        good step.
    """

    def __init__(self, scaler: torch.amp.GradScaler, *, fused: bool, host_needs_flag: bool) -> None:
        self.scaler, self.host_needs_flag = scaler, host_needs_flag
        self.on_device = fused and not scaler.is_enabled()
        self.begin()

    def begin(self) -> None:
        self.flag: torch.Tensor | None = None   # on the device: the step's finiteness so far
        self.skipped = False                   # on the host: a phase was not finite
        self.ok_host: bool | None = True       # whether the step ran; None: only the device knows

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> bool:
        """Backward `loss` and step `opt` under the rule; False: the step stops here."""
        if self.on_device:
            flag = finite_flag(loss)
            self.flag = flag if self.flag is None else self.flag * flag
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.found_inf = 1.0 - self.flag   # once a phase failed, the rest of the step is skipped
            opt.step()
            return True
        if not all_ranks_finite(loss):
            self.skipped = True
            return False
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)
        return True

    def end(self) -> None:
        if self.scaler.is_enabled() and not self.skipped:
            self.scaler.update()
        if self.flag is not None:
            self.ok_host = bool(self.flag.item() > 0) if self.host_needs_flag else None
        else:
            self.ok_host = not self.skipped

    @property
    def device_flag(self) -> torch.Tensor | None:
        """The flag for device-side consumers (the EMA update) when the host does not know."""
        return self.flag if self.ok_host is None else None

    @property
    def ok(self) -> torch.Tensor | bool:
        """For Stats: the host's answer, or the device flag read back at the tick."""
        return self.flag if self.ok_host is None else bool(self.ok_host)


class Feed:
    """The phases' real batches: each one drawn moves the stream position and the images seen."""

    def __init__(self, loader: Any, progress: Progress, *, batch_total: int, device: torch.device,
                 normalize: bool) -> None:
        self.loader, self.progress, self.batch_total = loader, progress, batch_total
        self.device, self.normalize = device, normalize
        self.skipped_samples = 0
        self.epoch_ended = False   # since the last pop_epoch_end

    def next(self) -> dict[str, torch.Tensor]:
        batch = next(self.loader)
        self.progress.batches += 1
        self.progress.images_seen += self.batch_total
        self.skipped_samples += batch["num_skipped"]
        self.epoch_ended = self.epoch_ended or self.loader.batches_seen % self.loader.batches_per_epoch == 0
        return device_batch(batch, self.device, normalize=self.normalize)

    def pop_epoch_end(self) -> bool:
        ended, self.epoch_ended = self.epoch_ended, False
        return ended

    @property
    def epoch(self) -> int:
        """The last complete epoch."""
        return self.loader.batches_seen // self.loader.batches_per_epoch - 1


@dataclass
class Run:
    """The run's parts as the loop uses them; `state` is the same parts as one checkpoint."""

    nets: dict[str, nn.Module]
    emas: dict[str, nn.Module]
    opts: dict[str, torch.optim.Optimizer]
    specs: dict[str, OptimizerSpec]
    scaler: torch.amp.GradScaler
    steps: Steps
    pipe: AugmentPipe
    gen: torch.Generator
    progress: Progress
    bad: BadSteps
    state: RunState


def build_run(cfg: RunConfig, data: DataInfo, *, device: torch.device, amp_dtype: torch.dtype | None,
              rank: int, world: int) -> Run:
    """The family's nets (the same initial weights on every rank: DDP broadcasts rank 0's, but EMA
    copies must agree too), their EMA copy, one Adam per declared optimizer, the loss scaler, the
    family's Steps, the augmentation pipe (augment:; ADA's p is its state), this rank's RNG, the
    counters, and the one RunState they are checkpointed as."""
    tc, family = cfg.train, FAMILIES[cfg.model.family]
    torch.manual_seed(tc.seed)
    nets = family.build_nets(cfg, data)
    emas = {f"{family.ema}_ema": copy.deepcopy(nets[family.ema]).eval().requires_grad_(False)} if family.ema else {}
    specs = family.optimizers(cfg)
    opts = {name: torch.optim.Adam([p for n in spec.nets for p in nets[n].parameters()], lr=spec.lr,
                                   betas=spec.betas, weight_decay=spec.weight_decay, fused=tc.fused_adam or None)
            for name, spec in specs.items()}
    steps = family.build_steps(cfg, data)
    pipe = AugmentPipe(cfg.augment)
    unknown = sorted({p.opt for p in family.phases(cfg)} - set(opts))
    if unknown:
        raise ConfigError(f"model.family {family.name}: phases step optimizers {unknown} it does not declare")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    torch.manual_seed(tc.seed * 1000 + rank)
    gen = torch.Generator(device=device).manual_seed(tc.seed * 1000 + rank)
    progress = Progress(loader={"seed": tc.seed, "num_workers": cfg.data.num_workers,
                                "batch_size": cfg.data.batch_size})
    bad = BadSteps(max_in_row=tc.max_bad_steps, rank=rank, advice="Lower the learning rates or check the data.")
    # Everything a checkpoint holds, by its key in state.pt: a new piece of training state is one
    # more entry here (facegan.runstate says what it must provide).
    components = {**nets, **emas, **{f"opt_{name}": opt for name, opt in opts.items()}, "scaler": scaler,
                  "family": steps, "augment": pipe, "rng": RankRNG(gen, device, rank=rank, world_size=world)}

    def info() -> dict[str, Any]:
        return {"family": family.name, "model": to_dict(cfg.model), "world_size": world, "config": to_dict(cfg),
                **data.to_meta(), **steps.meta()}

    state = RunState(components, counters=(progress, bad), info=info)
    return Run(nets=nets, emas=emas, opts=opts, specs=specs, scaler=scaler, steps=steps, pipe=pipe, gen=gen,
               progress=progress, bad=bad, state=state)


def resume_run(run: Run, path: Path, cfg: RunConfig) -> None:
    """Restore `run` from the checkpoint at `path` (format 1 upgraded), after checking it fits."""
    family = FAMILIES[cfg.model.family]
    state, meta, saved_family, _ = read_checkpoint(path)
    if saved_family.name != family.name:
        raise CheckpointError(f"{path}: a {saved_family.name} checkpoint; this run trains {family.name}")
    check_compatible(meta, to_dict(cfg.model), keys=family.shape_keys, where=path)
    run.steps.check_resume(meta, where=path)
    run.state.load(state, meta, where=path)


def place(run: Run, tc: Any, device: torch.device, *, channels_last: bool) -> None:
    """Nets, EMA copies, optimizer state and the family's state on the run's device (and memory
    format: channels_last moves 4-d parameters and buffers in place, the same objects)."""
    for net in (*run.nets.values(), *run.emas.values()):
        net.to(device)
        if channels_last:
            net.to(memory_format=torch.channels_last)
    for opt in run.opts.values():
        _optimizer_to(opt, fused=tc.fused_adam)
    run.steps.to(device)
    run.pipe.to(device)


def enter_stage(run: Run, family: Family, stage: int, *, clear_moments: bool) -> None:
    """Switch the nets to `stage`; clear the Adam moments where the family restarts them there."""
    run.steps.enter_stage(run.nets, stage)
    if clear_moments and family.reset_optimizers_on_stage:
        for opt in run.opts.values():
            opt.state.clear()


def wrap_nets(run: Run, hooks: Hooks, device: torch.device, cfg: RunConfig) -> dict[str, nn.Module]:
    """The training nets: DDP-wrapped (hooks.wrap_model) where they have trainable parameters, in
    train mode. DDP registers the parameters that require grad when it wraps, so a structure change
    (nets that grow) re-wraps on every rank at once."""
    ddp_options = cfg.ray.ddp_options()
    wrapped = {name: hooks.wrap_model(net, device, **ddp_options) if any(p.requires_grad for p in net.parameters())
               else net for name, net in run.nets.items()}
    for net in wrapped.values():
        if cfg.train.compile:
            # In place (Module.compile): state_dict keys stay. Under DDP the wrapper is compiled, so
            # dynamo's DDPOptimizer splits the graph at bucket boundaries and the all-reduce still
            # overlaps backward.
            net.compile()
        net.train()
    return wrapped


def phase_nets(run: Run, wrapped: dict[str, nn.Module], family: Family) -> dict[str, nn.Module]:
    """The nets a phase sees (ctx.nets): the family's augment_nets take their image input through
    the augmentation pipe (the training nets themselves for augment.kind none)."""
    return run.pipe.wrap(wrapped, family.augment_nets, generator=run.gen)


def run_phases(run: Run, phases: list[Phase], ctx: StepContext, *, feed: Feed, guard: SkipNonFinite,
               synced_from: list[set[str]], autocast: Any) -> dict[str, torch.Tensor]:
    """One training step: each phase `repeat` times, a fresh real batch for each run of a phase
    that uses data, its loss backpropagated and its optimizer stepped under `guard`'s rule.
    Returns the phases' scalars (device tensors)."""
    scalars: dict[str, torch.Tensor] = {}
    for i, phase in enumerate(phases):
        opt = run.opts[phase.opt]
        # Gradients of nets that neither this phase nor a later one of the step updates are never
        # used (their own phase zeroes them first): DDP skips their all-reduce. A net stepped by a
        # later phase stays synced, since a graph built here may be backpropagated there.
        unsynced = [ddp for name, net in ctx.nets.items() if name not in synced_from[i] and isinstance(
            ddp := net.module if isinstance(net, AugmentedNet) else net, nn.parallel.DistributedDataParallel)]
        for _ in range(phase.repeat):
            if phase.uses_data or not ctx.batch:
                ctx.batch = feed.next()
            with contextlib.ExitStack() as no_sync:
                for net in unsynced:
                    no_sync.enter_context(net.no_sync())
                with autocast:
                    loss, sc = run.steps.run(phase.name, ctx)
                if not guard.step(loss, opt):
                    return scalars
            scalars.update(sc)
    return scalars


def finish_step(run: Run, ctx: StepContext, scalars: dict[str, torch.Tensor], *, guard: SkipNonFinite,
               tc: Any, family: Family, batch_total: int, step_images: int, stats: Stats) -> None:
    """What follows a step: the family's adaptive state and rate factors (good steps), ADA's p (from
    r_t averaged over ranks, weighted by the step's flag), the EMA update (on the device, weighted by
    the flag, where only the device knows), the step's scalars."""
    p = run.progress
    run.pipe.observe(scalars, ok=guard.ok, step=p.step, images=step_images, reduce=mean_over_ranks)
    scalars = {**scalars, **run.pipe.step_scalars()}
    if guard.ok_host:
        run.steps.after_step(ctx)
        for name, factor in run.steps.lr_factors().items():
            for group in run.opts[name].param_groups:
                group["lr"] = run.specs[name].lr * factor
    if run.emas and guard.ok_host is not False:
        ema_nimg = tc.ema_kimg * 1000
        if tc.ema_kimg > 0 and tc.ema_rampup > 0:
            ema_nimg = min(ema_nimg, p.images_seen * tc.ema_rampup)
        beta = 0.5 ** (batch_total / max(ema_nimg, 1e-8)) if tc.ema_kimg > 0 else 0.0
        update_ema(run.emas[f"{family.ema}_ema"], bare(ctx.nets[family.ema]), beta=beta, ok=guard.device_flag)
    stats.add(scalars, step=p.step, images_seen=p.images_seen, ok=guard.ok)


class TickWork:
    """What happens at ticks (train.tick_kimg), epoch ends and the end: per-step rows to the sinks
    and the skipped-step count, the reduced metrics, evaluations (eval.every_kimg and the end),
    sample grids and the family's tick side effects; rank 0 writes the files and feeds the sinks."""

    def __init__(self, cfg: RunConfig, run: Run, *, shards: ShardSet, hooks: Hooks, device: torch.device,
                 autocast: Any) -> None:
        self.cfg, self.run, self.hooks, self.device, self.autocast = cfg, run, hooks, device, autocast
        self.family = FAMILIES[cfg.model.family]
        self.curves = self.family.curves + run.pipe.curves
        self.rank, self.world = hooks.rank, hooks.world_size
        tc, self.out = cfg.train, Path(cfg.train.out_dir)
        steps = run.steps
        self.stats = Stats()
        self.sinks: tuple[Sink, ...] = (JsonlSink(self.out / "losses.jsonl"),) + tuple(hooks.sinks) if self.rank == 0 else ()
        self.epoch_rows: list[dict[str, float]] = []
        self.grid_latent = self.grid_attrs = self.grid_real = None
        grid_size = getattr(tc, "grid_size", 0)
        if self.family.generator is not None and grid_size:
            self.grid_latent = steps.latent(grid_size, generator=torch.Generator().manual_seed(tc.seed + 7)).to(device)
            self.grid_attrs = fixed_attrs(shards, grid_size).to(device) if self.family.takes_attrs else None
            # Grids are drawn on rank 0 only, and real images only for families that reconstruct them:
            # the other ranks read no shard outside their share.
            if self.rank == 0 and steps.grid_uses_real:
                self.grid_real = fixed_reals(shards, min(grid_size, 64)).to(device)
        self.periodic_eval = None
        # Sample metrics (fid_attr, ...) when eval.metrics names any; a family's own scoring
        # (steps.evaluate) runs at the same ticks either way.
        if self.family.generator is not None and cfg.eval.every_kimg > 0 and cfg.eval.metrics:
            from facegan.evaluation.periodic import PeriodicEval

            self.periodic_eval = PeriodicEval(cfg.eval, shards=cfg.data.shards, seed=tc.seed)
        self.final_eval_done = False
        self.t_tick, self.img_tick = time.perf_counter(), run.progress.images_seen

    def eval_nets(self, wrapped: dict[str, nn.Module]) -> dict[str, nn.Module]:
        """The nets to sample and score with: EMA copies where the family keeps one."""
        return {name: self.run.emas.get(f"{name}_ema", bare(net)) for name, net in wrapped.items()}

    def log_steps(self, *, epoch_end: bool, epoch: int, last_ckpt: Path | None) -> None:
        """Per-step rows to the sinks. Reading them back also reads the steps' flags: skipped steps
        are counted here, on every rank alike, and too many in a row stop the run before a
        checkpoint is written."""
        popped = self.stats.pop_steps()
        for row in popped:
            self.run.bad.record(row.ok, step=row.step, images_seen=row.images_seen, last_ckpt=last_ckpt)
        if self.rank != 0:
            return
        rows = [dict(r.values, kind="step", step=r.step, kimg=r.images_seen / 1000) for r in popped if r.ok]
        for sink in self.sinks:
            sink.log_rows(rows)
        self.epoch_rows += rows
        if epoch_end:
            save_loss_arrays(self.epoch_rows, self.out / "losses", epoch=epoch)
            self.epoch_rows = []
            plot_loss_curves(self.out / "losses.jsonl", self.out / "loss_curve.png", panels=self.curves)

    def metrics(self, *, skipped_samples: int) -> dict[str, float]:
        p = self.run.progress
        dt = time.perf_counter() - self.t_tick
        metrics = self.stats.reduce()
        metrics.update(kimg=p.kimg, step=p.step, images_seen=p.images_seen,
                       img_per_sec=(p.images_seen - self.img_tick) / max(dt, 1e-9), bad_steps=self.run.bad.total,
                       skipped_samples=skipped_samples, **self.run.steps.tick_metrics(p.kimg),
                       **self.run.pipe.tick_metrics())
        if self.device.type == "cuda":
            metrics["peak_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return metrics

    def evaluate(self, wrapped: dict[str, nn.Module], *, final: bool, last_ckpt: Path | None) -> dict[str, float]:
        """Sample metrics (every rank draws its share; rank 0 gets the scores) and the family's own."""
        t_eval, metrics = time.perf_counter(), {}
        if self.periodic_eval is not None:
            fam = self.family
            G = self.eval_nets(wrapped)[fam.generator]
            D = bare(wrapped[fam.discriminator]) if fam.discriminator else None
            metrics.update(self.periodic_eval(G=G, D=D, steps=self.run.steps, device=self.device, rank=self.rank,
                                              world_size=self.world, attrs=self.grid_attrs))
        scores = self.family_eval(wrapped, final=final, last_ckpt=last_ckpt)
        self.final_eval_done = self.final_eval_done or final
        if self.periodic_eval is not None or scores:
            metrics.update(scores, eval_seconds=time.perf_counter() - t_eval)
        return metrics

    def family_eval(self, wrapped: dict[str, nn.Module], *, final: bool, last_ckpt: Path | None) -> dict[str, float]:
        p = self.run.progress
        with torch.no_grad():
            return self.run.steps.evaluate(self.eval_nets(wrapped), final=final, rank=self.rank, world_size=self.world,
                                           out_dir=self.out, kimg=p.kimg, step=p.step, images_seen=p.images_seen,
                                           checkpoint=last_ckpt, autocast=self.autocast)

    def publish(self, wrapped: dict[str, nn.Module], metrics: dict[str, float]) -> None:
        """Rank 0: the tick's grids and the family's tick files, then the metrics to every sink."""
        self.t_tick, self.img_tick = time.perf_counter(), self.run.progress.images_seen
        if self.rank != 0:
            return
        images, seen, steps = {}, self.run.progress.images_seen, self.run.steps
        if self.grid_latent is not None:
            with torch.no_grad(), self.autocast:
                grids = steps.tick_images(self.eval_nets(wrapped), latent=self.grid_latent, attrs=self.grid_attrs,
                                          real=self.grid_real)
            for key, img in grids.items():
                name = "grid" if key == "samples" else key
                path = self.out / "samples" / f"{name}-{seen:09d}.png"
                save_grid_png(img, path)
                # The same bytes: a copy, not a second PNG encode (~40 ms of CPU for a 64-image grid).
                shutil.copyfile(path, self.out / "samples" / ("latest.png" if key == "samples" else f"{name}-latest.png"))
                images[key] = path
            with torch.no_grad():
                steps.on_tick(self.eval_nets(wrapped), out_dir=self.out, kimg=seen / 1000, images_seen=seen)
        for sink in self.sinks:
            sink.log(metrics, step=self.run.progress.step, images=images)
        log.info("kimg %.1f step %d: %s", metrics["kimg"], self.run.progress.step,
                 " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if "/" in k and "/acc/" not in k))

    def finish(self) -> None:
        if self.rank == 0:
            plot_loss_curves(self.out / "losses.jsonl", self.out / "loss_curve.png", panels=self.curves)
            self.run.steps.finish(out_dir=self.out)
            for sink in self.hooks.sinks:
                sink.close()


def train(cfg: RunConfig, *, hooks: Hooks | None = None) -> dict[str, float]:
    """Train cfg.model.family on cfg.data.shards until cfg.train.total_kimg; returns the last tick's metrics."""
    hooks = hooks or Hooks()
    rank, world = hooks.rank, hooks.world_size
    tc, family = cfg.train, FAMILIES[cfg.model.family]
    out = Path(tc.out_dir)
    device, prec = setup_torch(tc, hooks, family)
    amp_dtype = prec.amp_dtype
    shards = ShardSet.open(cfg.data.shards)
    check_shards(cfg, shards, world_size=world)
    if rank == 0:
        check_writable_dir(out, field="train.out_dir")
    data = data_info(cfg, shards)

    # Set up the run's state, then resume it: one definition for both (Run.state).
    run = build_run(cfg, data, device=device, amp_dtype=amp_dtype, rank=rank, world=world)
    progress = run.progress
    resume = resume_dir(tc.resume, hooks, out / "checkpoints")
    if resume is not None:
        resume_run(run, resume, cfg)
        if rank == 0:
            log.info("resumed from %s at step %d (%.1f kimg)", resume, progress.step, progress.kimg)
    place(run, tc, device, channels_last=prec.channels_last)
    saved_stage, stage = progress.stage, run.steps.stage(progress.kimg)
    # A checkpoint that ends where a stage begins: clear the moments as an uninterrupted run does there.
    enter_stage(run, family, stage, clear_moments=saved_stage is not None and saved_stage != stage)
    progress.stage = stage
    wrapped = wrap_nets(run, hooks, device, cfg)
    nets = phase_nets(run, wrapped, family)

    # On a GPU the loader sends uint8 (4x fewer bytes to pin and copy) and the device normalises.
    on_gpu = device.type == "cuda"
    loader = train_loader(shards, batch_size=cfg.data.batch_size, rank=rank, world_size=world,
                          num_workers=cfg.data.num_workers, seed=tc.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                          start_batch=progress.batches, pin_memory=on_gpu, normalize=not on_gpu,
                          channels_last=prec.channels_last)
    batch_total = cfg.data.batch_size * world
    feed = Feed(loader, progress, batch_total=batch_total, device=device, normalize=on_gpu)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    ticker = TickWork(cfg, run, shards=shards, hooks=hooks, device=device, autocast=autocast)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        # What `auto` became on this machine sits beside the config as written.
        resolved = {"precision": prec.name, "channels_last": prec.channels_last, "why": prec.why}
        (out / "config.json").write_text(json.dumps({**to_dict(cfg), "resolved": resolved}, indent=1))
    ticks = every_kimg(tc.tick_kimg, batch_total=batch_total, images_seen=progress.images_seen)
    ckpts = every_kimg(tc.checkpoint_kimg, batch_total=batch_total, images_seen=progress.images_seen)
    evals = every_kimg(cfg.eval.every_kimg, batch_total=batch_total, images_seen=progress.images_seen)
    total_images = int(round(tc.total_kimg * 1000))
    phases = family.phases(cfg)
    # Per phase: the nets whose optimizer this phase or a later one in the step steps.
    synced_from = [{n for later in phases[i:] for n in run.specs[later.opt].nets} for i in range(len(phases))]
    # A family with per-step host-side state (after_step, lr_factors) must know whether the step
    # ran: one host sync per step for it, after the step's phases, instead of one per phase.
    host_state = type(run.steps).after_step is not Steps.after_step or type(run.steps).lr_factors is not Steps.lr_factors
    guard = SkipNonFinite(run.scaler, fused=tc.fused_adam, host_needs_flag=host_state)
    last_ckpt: Path | None = resume
    metrics: dict[str, float] = {}
    progress.start_clock()

    while progress.images_seen < total_images:
        stage = run.steps.stage(progress.kimg)
        if stage != progress.stage:
            progress.stage = stage
            enter_stage(run, family, stage, clear_moments=True)
            wrapped = wrap_nets(run, hooks, device, cfg)
            nets = phase_nets(run, wrapped, family)
            if rank == 0:
                log.info("stage %d at %.1f kimg", stage, progress.kimg)
        # The step: its phases, then what follows a step.
        ctx = StepContext(nets=nets, batch={}, kimg=progress.kimg, generator=run.gen,
                          augment=lambda x: run.pipe(x, generator=run.gen), step=progress.step)
        step_start = progress.images_seen
        guard.begin()
        scalars = run_phases(run, phases, ctx, feed=feed, guard=guard, synced_from=synced_from, autocast=autocast)
        ctx.carry.clear()  # a skipped phase must not keep a graph alive into the next step
        guard.end()
        progress.step += 1
        for sink in ticker.sinks:
            sink.progress(progress.images_seen)
        finish_step(run, ctx, scalars, guard=guard, tc=tc, family=family, batch_total=batch_total,
                    step_images=progress.images_seen - step_start, stats=ticker.stats)

        # Tick work.
        seen = progress.images_seen
        at_tick = ticks.due(seen) or seen >= total_images
        # The time budget is checked on rank 0 only at ticks and shared, so all ranks stop together.
        out_of_time = at_tick and tc.max_minutes > 0 and agree(progress.seconds() > tc.max_minutes * 60)
        finishing = seen >= total_images or out_of_time
        at_ckpt = ckpts.due(seen) or finishing
        epoch_end = feed.pop_epoch_end()
        # Per-step rows reach the log by every checkpoint too: a run resumed from one never redoes
        # the steps before it, so rows still held back then would be lost for good.
        if at_tick or epoch_end or at_ckpt:
            ticker.log_steps(epoch_end=epoch_end, epoch=feed.epoch, last_ckpt=last_ckpt)
        if not (at_tick or at_ckpt):
            continue
        metrics = ticker.metrics(skipped_samples=feed.skipped_samples)

        # Checkpoint: every rank takes part (RNG states are gathered); rank 0 writes.
        ckpt_dir = None
        if at_ckpt:
            ckpt_dir = run.state.save(out / "checkpoints" / f"ckpt-{seen:09d}", keep=tc.keep_checkpoints, rank=rank)
            last_ckpt = ckpt_dir or last_ckpt
            ckpts.advance(seen)
            if distributed():
                dist.barrier()  # the checkpoint exists on disk before anyone reports it
        if evals.due(seen) or finishing:
            metrics.update(ticker.evaluate(wrapped, final=finishing, last_ckpt=last_ckpt))
            evals.advance(seen)
        ticker.publish(wrapped, metrics)
        ticks.advance(seen)
        hooks.report(metrics, ckpt_dir)
        if out_of_time:
            log.info("train.max_minutes=%g reached at %.1f kimg: stopping", tc.max_minutes, progress.kimg)
            break
        if hooks.should_stop():
            break

    if not ticker.final_eval_done:
        # Stopped by the runner, or resumed from a checkpoint at the end: the family's last word.
        metrics = dict(metrics, **ticker.family_eval(wrapped, final=True, last_ckpt=last_ckpt))
    ticker.finish()
    return metrics
