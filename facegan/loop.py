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
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from facegan.augpipe import AugmentPipe
from facegan.checkpoint import check_compatible, prune_checkpoints, save_checkpoint
from facegan.config import ConfigError, to_dict
from facegan.data.labels import fixed_attrs
from facegan.data.stream import ShardSet, eval_loader, train_loader
from facegan.errors import CheckpointError
from facegan.families import FAMILIES, RunConfig
from facegan.families.base import DataInfo
from facegan.families.loading import read_checkpoint
from facegan.families.steps import StepContext, Steps, mean_over_ranks
from facegan.hooks import Hooks
from facegan.images import save_grid_png
from facegan.runtime import (BadSteps, agree, all_ranks_finite, bare, check_writable_dir, distributed, finite_flag,
                             gather_rng, resume_dir, setup_torch)
from facegan.stats import JsonlSink, Stats, plot_loss_curves, save_loss_arrays

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


def train(cfg: RunConfig, *, hooks: Hooks | None = None) -> dict[str, float]:
    """Train cfg.model.family on cfg.data.shards until cfg.train.total_kimg; returns the last tick's metrics."""
    hooks = hooks or Hooks()
    rank, world = hooks.rank, hooks.world_size
    tc = cfg.train
    out = Path(tc.out_dir)
    ckpt_root = out / "checkpoints"
    device, amp_dtype = setup_torch(tc, hooks)
    family = FAMILIES[cfg.model.family]

    shards = ShardSet.open(cfg.data.shards)
    check_shards(cfg, shards, world_size=world)
    if rank == 0:
        check_writable_dir(out, field="train.out_dir")
    data = data_info(cfg, shards)

    # Same initial weights on every rank (DDP also broadcasts rank 0's, but EMA copies must agree).
    torch.manual_seed(tc.seed)
    nets = family.build_nets(cfg, data)
    ema_name = family.ema
    emas = {f"{ema_name}_ema": copy.deepcopy(nets[ema_name]).eval().requires_grad_(False)} if ema_name else {}
    opt_specs = family.optimizers(cfg)
    fused = tc.fused_adam
    opts = {name: torch.optim.Adam([p for n in spec.nets for p in nets[n].parameters()], lr=spec.lr,
                                   betas=spec.betas, weight_decay=spec.weight_decay, fused=fused or None)
            for name, spec in opt_specs.items()}
    steps = family.build_steps(cfg, data)
    # What D sees goes through the augmentation pipe (augment:); its p (ADA) is run state like the family's.
    pipe = AugmentPipe(cfg.augment)
    curves = family.curves + pipe.curves
    phases = family.phases(cfg)
    unknown = sorted({p.opt for p in phases} - set(opts))
    if unknown:
        raise ConfigError(f"model.family {family.name}: phases step optimizers {unknown} it does not declare")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    torch.manual_seed(tc.seed * 1000 + rank)
    gen = torch.Generator(device=device).manual_seed(tc.seed * 1000 + rank)

    step, images_seen, batches, bad_total = 0, 0, 0, 0
    trained_seconds = 0.0  # training time before this attempt (from the checkpoint): max_minutes spans restarts
    saved_stage: int | None = None  # the stage the checkpoint's last step ran in
    resume = resume_dir(cfg.train.resume, hooks, ckpt_root)
    if resume is not None:
        state, meta, saved_family, _ = read_checkpoint(resume)
        if saved_family.name != family.name:
            raise CheckpointError(f"{resume}: a {saved_family.name} checkpoint; this run trains {family.name}")
        check_compatible(meta, to_dict(cfg.model), keys=family.shape_keys, where=resume)
        steps.check_resume(meta, where=resume)
        try:
            for name, net in {**nets, **emas}.items():
                net.load_state_dict(state[name])
            for name, opt in opts.items():
                opt.load_state_dict(state[f"opt_{name}"])
            scaler.load_state_dict(state["scaler"])
            steps.load_state_dict(state.get("family", {}))
            pipe.load_state_dict(state.get("augment", {}))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{resume}: does not fit this model: {exc}") from None
        step, images_seen, bad_total = meta["step"], meta["images_seen"], meta.get("bad_steps", 0)
        batches = int(meta.get("loader", {}).get("start_batch", step))
        trained_seconds = float(meta.get("train_seconds", 0.0))
        saved_stage = meta.get("stage")
        rng = state.get("rng", {})
        if meta.get("world_size") == world and f"torch_rank{rank}" in rng:
            torch.set_rng_state(rng[f"torch_rank{rank}"])
            gen.set_state(rng[f"gen_rank{rank}"])
            if device.type == "cuda" and f"cuda_rank{rank}" in rng:
                torch.cuda.set_rng_state(rng[f"cuda_rank{rank}"], device)
        else:
            log.warning("resuming with %d ranks from a %s-rank checkpoint: RNG streams restart",
                        world, meta.get("world_size"))
        if rank == 0:
            log.info("resumed from %s at step %d (%.1f kimg)", resume, step, images_seen / 1000)

    for net in (*nets.values(), *emas.values()):
        net.to(device)
        if tc.channels_last:
            net.to(memory_format=torch.channels_last)   # 4-d parameters and buffers; the same objects
    for opt in opts.values():
        _optimizer_to(opt, fused=fused)
    steps.to(device)
    pipe.to(device)
    # Nets are wrapped (DDP) for the current stage: DDP registers the parameters that require grad
    # when it wraps, so a structure change (nets that grow) re-wraps on every rank at once.
    stage = steps.stage(images_seen / 1000)
    steps.enter_stage(nets, stage)
    if family.reset_optimizers_on_stage and saved_stage is not None and saved_stage != stage:
        # The checkpoint ends where a stage begins: clear the moments as an uninterrupted run does there.
        for opt in opts.values():
            opt.state.clear()

    ddp_options = cfg.ray.ddp_options()

    def wrap_all() -> dict[str, nn.Module]:
        out = {name: hooks.wrap_model(net, device, **ddp_options) if any(p.requires_grad for p in net.parameters())
               else net for name, net in nets.items()}
        if tc.compile:
            # In place (Module.compile): state_dict keys stay. Under DDP the wrapper is compiled, so
            # dynamo's DDPOptimizer splits the graph at bucket boundaries and the all-reduce still
            # overlaps backward.
            for net in out.values():
                net.compile()
        return out

    wrapped = wrap_all()

    def step_nets() -> dict[str, nn.Module]:
        """The nets a phase sees: the family's augment_nets take their image input through the pipe."""
        return pipe.wrap(wrapped, family.augment_nets, generator=gen)

    def augment(x: torch.Tensor) -> torch.Tensor:
        return pipe(x, generator=gen)

    phase_nets = step_nets()

    # On a GPU the loader sends uint8 (4x fewer bytes to pin and copy) and the device normalises.
    normalize_on_device = device.type == "cuda"
    loader = train_loader(shards, batch_size=cfg.data.batch_size, rank=rank, world_size=world,
                          num_workers=cfg.data.num_workers, seed=tc.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                          start_batch=batches, pin_memory=device.type == "cuda", normalize=not normalize_on_device,
                          channels_last=tc.channels_last)
    grid_size = getattr(tc, "grid_size", 0)
    grid_latent = grid_attrs = grid_real = None
    if family.generator is not None and grid_size:
        grid_latent = steps.latent(grid_size, generator=torch.Generator().manual_seed(tc.seed + 7)).to(device)
        grid_attrs = fixed_attrs(shards, grid_size).to(device) if family.takes_attrs else None
        # Grids are drawn on rank 0 only, and real images only for families that reconstruct them:
        # the other ranks read no shard outside their share.
        if rank == 0 and steps.grid_uses_real:
            grid_real = fixed_reals(shards, min(grid_size, 64)).to(device)

    periodic_eval = None
    # Sample metrics (fid_attr, ...) when eval.metrics names any; a family's own scoring
    # (steps.evaluate) runs at the same ticks either way.
    if family.generator is not None and cfg.eval.every_kimg > 0 and cfg.eval.metrics:
        from facegan.evaluation.periodic import PeriodicEval

        periodic_eval = PeriodicEval(cfg.eval, shards=cfg.data.shards, seed=tc.seed)
    batch_total = cfg.data.batch_size * world
    total_images = int(round(tc.total_kimg * 1000))
    tick_images = max(batch_total, int(tc.tick_kimg * 1000))
    ckpt_images = max(batch_total, int(tc.checkpoint_kimg * 1000))
    next_tick = (images_seen // tick_images + 1) * tick_images
    next_ckpt = (images_seen // ckpt_images + 1) * ckpt_images
    eval_images = max(batch_total, int(cfg.eval.every_kimg * 1000)) if cfg.eval.every_kimg > 0 else 0
    next_eval = (images_seen // eval_images + 1) * eval_images if eval_images else None
    stats = Stats()
    sinks = (JsonlSink(out / "losses.jsonl"),) + tuple(hooks.sinks) if rank == 0 else ()
    progress_sinks = [sink for sink in sinks if hasattr(sink, "progress")]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    epoch_rows: list[dict[str, float]] = []
    skipped_samples = 0
    bad = BadSteps(max_in_row=tc.max_bad_steps, rank=rank, total=bad_total,
                   advice="Lower the learning rates or check the data.")
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    # Non-finite losses are skipped without a host sync when fused Adam can take the flag (not
    # under fp16's GradScaler, which sets found_inf itself).
    deferred = fused and not scaler.is_enabled()
    # A family with per-step host-side state (after_step, lr_factors) must know whether the step
    # ran: one host sync per step for it, after the step's phases, instead of one per phase.
    host_state_per_step = (type(steps).after_step is not Steps.after_step
                           or type(steps).lr_factors is not Steps.lr_factors)
    # Per phase: the nets whose optimizer this phase or a later one in the step steps.
    synced_from = [{n for later in phases[i:] for n in opt_specs[later.opt].nets} for i in range(len(phases))]
    t_tick, img_tick = time.perf_counter(), images_seen
    t_start = time.perf_counter() - trained_seconds
    last_ckpt: Path | None = resume
    metrics: dict[str, float] = {}
    final_eval_done = False
    for net in wrapped.values():
        net.train()

    def eval_nets() -> dict[str, nn.Module]:
        """The nets to sample and score with: EMA copies where the family keeps one."""
        return {name: emas.get(f"{name}_ema", bare(net)) for name, net in wrapped.items()}

    def write_checkpoint() -> Path | None:
        rng = gather_rng(gen, device)
        if rank != 0:
            return None
        meta = {"family": family.name, "model": to_dict(cfg.model), "step": step, "images_seen": images_seen,
                "kimg": images_seen / 1000, "world_size": world,
                "loader": {"seed": tc.seed, "start_batch": batches, "num_workers": cfg.data.num_workers,
                           "batch_size": cfg.data.batch_size},
                "bad_steps": bad.total, "train_seconds": time.perf_counter() - t_start, "config": to_dict(cfg),
                "stage": stage,
                **data.to_meta(), **steps.meta()}
        state = {**{name: bare(net).state_dict() for name, net in wrapped.items()},
                 **{name: ema.state_dict() for name, ema in emas.items()},
                 **{f"opt_{name}": opt.state_dict() for name, opt in opts.items()},
                 "scaler": scaler.state_dict(), "family": steps.state_dict(), "augment": pipe.state_dict(),
                 "rng": rng}
        path = save_checkpoint(ckpt_root / f"ckpt-{images_seen:09d}", state=state, meta=meta)
        prune_checkpoints(ckpt_root, keep=tc.keep_checkpoints)
        return path

    def family_eval(final: bool) -> dict[str, float]:
        with torch.no_grad():
            return steps.evaluate(eval_nets(), final=final, rank=rank, world_size=world, out_dir=out,
                                  kimg=images_seen / 1000, step=step, images_seen=images_seen,
                                  checkpoint=last_ckpt, autocast=autocast)

    while images_seen < total_images:
        new_stage = steps.stage(images_seen / 1000)
        if new_stage != stage:
            stage = new_stage
            steps.enter_stage(nets, stage)
            wrapped = wrap_all()
            phase_nets = step_nets()
            if family.reset_optimizers_on_stage:
                for opt in opts.values():
                    opt.state.clear()
            for net in wrapped.values():
                net.train()
            if rank == 0:
                log.info("stage %d at %.1f kimg", stage, images_seen / 1000)
        ctx = StepContext(nets=phase_nets, batch={}, kimg=images_seen / 1000, generator=gen, augment=augment,
                          step=step)
        step_images = images_seen
        scalars: dict[str, torch.Tensor] = {}
        skipped, at_epoch = False, False
        ok_dev: torch.Tensor | None = None   # the step's finiteness flag on the device (deferred checks)
        for i, phase in enumerate(phases):
            opt = opts[phase.opt]
            # Gradients of nets that neither this phase nor a later one of the step updates are never
            # used (their own phase zeroes them first): DDP skips their all-reduce. A net stepped by a
            # later phase stays synced, since a graph built here may be backpropagated there.
            unsynced = [net for name, net in wrapped.items()
                        if name not in synced_from[i] and isinstance(net, nn.parallel.DistributedDataParallel)]
            for _ in range(phase.repeat):
                if phase.uses_data or not ctx.batch:
                    batch = next(loader)
                    batches += 1
                    images_seen += batch_total
                    skipped_samples += batch["num_skipped"]
                    at_epoch = at_epoch or loader.batches_seen % loader.batches_per_epoch == 0
                    ctx.batch = device_batch(batch, device, normalize=normalize_on_device)
                with contextlib.ExitStack() as no_sync:
                    for net in unsynced:
                        no_sync.enter_context(net.no_sync())
                    with autocast:
                        loss, sc = steps.run(phase.name, ctx)
                    if deferred:
                        # No host sync: the flag (agreed over ranks) reaches fused Adam as found_inf,
                        # which skips the update and its step count where it is 1, on the device.
                        # Every rank runs backward either way, so DDP's all-reduces stay matched.
                        flag = finite_flag(loss)
                        ok_dev = flag if ok_dev is None else ok_dev * flag
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.found_inf = 1.0 - ok_dev   # once a phase failed, the rest of the step is skipped
                        opt.step()
                    else:
                        # Every rank takes the same branch: a rank skipping backward while others run it hangs DDP.
                        if not all_ranks_finite(loss):
                            skipped = True
                            break
                        opt.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                scalars.update(sc)
            if skipped:
                break
        ctx.carry.clear()  # a skipped phase must not keep a graph alive into the next step
        if scaler.is_enabled() and not skipped:
            scaler.update()
        step += 1
        pipe.observe(scalars, ok=ok_dev if ok_dev is not None else not skipped, step=step,
                     images=images_seen - step_images, reduce=mean_over_ranks)
        scalars.update(pipe.step_scalars())
        for sink in progress_sinks:
            sink.progress(images_seen)
        # ok_host: whether the step ran, where the host must know it now (None: only the device knows,
        # until the tick reads the flags back with the losses).
        if ok_dev is not None:
            ok_host = bool(ok_dev.item() > 0) if host_state_per_step else None
        else:
            ok_host = not skipped
        if ok_host:
            steps.after_step(ctx)
            for name, factor in steps.lr_factors().items():
                for group in opts[name].param_groups:
                    group["lr"] = opt_specs[name].lr * factor
        if emas and ok_host is not False:
            ema_nimg = tc.ema_kimg * 1000
            if tc.ema_kimg > 0 and tc.ema_rampup > 0:
                ema_nimg = min(ema_nimg, images_seen * tc.ema_rampup)
            beta = 0.5 ** (batch_total / max(ema_nimg, 1e-8)) if tc.ema_kimg > 0 else 0.0
            update_ema(emas[f"{ema_name}_ema"], bare(wrapped[ema_name]), beta=beta,
                       ok=ok_dev if ok_host is None else None)
        stats.add(scalars, step=step, images_seen=images_seen, ok=ok_dev if ok_host is None else ok_host)

        at_tick = images_seen >= next_tick or images_seen >= total_images
        # The time budget is checked on rank 0 only at ticks and shared, so all ranks stop together.
        out_of_time = at_tick and tc.max_minutes > 0 and agree(time.perf_counter() - t_start > tc.max_minutes * 60)
        finishing = images_seen >= total_images or out_of_time
        at_ckpt = images_seen >= next_ckpt or finishing
        # Per-step rows reach the log by every checkpoint too: a run resumed from one never redoes
        # the steps before it, so rows still held back then would be lost for good. Reading them
        # back also reads the steps' flags: skipped steps are counted here, on every rank alike,
        # and too many in a row stop the run before a checkpoint is written.
        if at_tick or at_epoch or at_ckpt:
            popped = stats.pop_steps()
            for row in popped:
                bad.record(row.ok, step=row.step, images_seen=row.images_seen, last_ckpt=last_ckpt)
            if rank == 0:
                rows = [dict(r.values, kind="step", step=r.step, kimg=r.images_seen / 1000) for r in popped if r.ok]
                for sink in sinks:
                    sink.log_rows(rows)
                epoch_rows += rows
                if at_epoch:
                    save_loss_arrays(epoch_rows, out / "losses",
                                     epoch=loader.batches_seen // loader.batches_per_epoch - 1)
                    epoch_rows = []
                    plot_loss_curves(out / "losses.jsonl", out / "loss_curve.png", panels=curves)
        if not (at_tick or at_ckpt):
            continue
        dt = time.perf_counter() - t_tick
        metrics = stats.reduce()
        metrics.update(kimg=images_seen / 1000, step=step, images_seen=images_seen,
                       img_per_sec=(images_seen - img_tick) / max(dt, 1e-9), bad_steps=bad.total,
                       skipped_samples=skipped_samples, **steps.tick_metrics(images_seen / 1000),
                       **pipe.tick_metrics())
        if device.type == "cuda":
            metrics["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        ckpt_dir = None
        if at_ckpt:
            ckpt_dir = write_checkpoint()
            if ckpt_dir is not None:
                last_ckpt = ckpt_dir
            next_ckpt = (images_seen // ckpt_images + 1) * ckpt_images
            if distributed():
                dist.barrier()  # the checkpoint exists on disk before anyone reports it
        eval_due = next_eval is not None and images_seen >= next_eval
        if eval_due or finishing:
            t_eval = time.perf_counter()
            if periodic_eval is not None:
                # Every rank draws its share of the samples; rank 0 gets the scores.
                G = eval_nets()[family.generator]
                D = bare(wrapped[family.discriminator]) if family.discriminator else None
                metrics.update(periodic_eval(G=G, D=D, steps=steps, device=device, rank=rank, world_size=world,
                                             attrs=grid_attrs))
            scores = family_eval(final=finishing)
            final_eval_done = final_eval_done or finishing
            if periodic_eval is not None or scores:
                metrics.update(scores, eval_seconds=time.perf_counter() - t_eval)
            if next_eval is not None:
                next_eval = (images_seen // eval_images + 1) * eval_images
        t_tick, img_tick = time.perf_counter(), images_seen
        if rank == 0:
            images = {}
            if grid_latent is not None:
                with torch.no_grad(), autocast:
                    grids = steps.tick_images(eval_nets(), latent=grid_latent, attrs=grid_attrs, real=grid_real)
                for key, img in grids.items():
                    name = "grid" if key == "samples" else key
                    path = out / "samples" / f"{name}-{images_seen:09d}.png"
                    save_grid_png(img, path)
                    # The same bytes: a copy, not a second PNG encode (~40 ms of CPU for a 64-image grid).
                    shutil.copyfile(path, out / "samples" / ("latest.png" if key == "samples" else f"{name}-latest.png"))
                    images[key] = path
            if grid_latent is not None:
                with torch.no_grad():
                    steps.on_tick(eval_nets(), out_dir=out, kimg=images_seen / 1000, images_seen=images_seen)
            for sink in sinks:
                sink.log(metrics, step=step, images=images)
            log.info("kimg %.1f step %d: %s", metrics["kimg"], step,
                     " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if "/" in k and "/acc/" not in k))
        next_tick = (images_seen // tick_images + 1) * tick_images
        hooks.report(metrics, ckpt_dir)
        if out_of_time:
            log.info("train.max_minutes=%g reached at %.1f kimg: stopping", tc.max_minutes, images_seen / 1000)
            break
        if hooks.should_stop():
            break

    if not final_eval_done:
        # Stopped by the runner, or resumed from a checkpoint at the end: the family's last word.
        extra = family_eval(final=True)
        metrics = dict(metrics, **extra)
    if rank == 0:
        plot_loss_curves(out / "losses.jsonl", out / "loss_curve.png", panels=curves)
        steps.finish(out_dir=out)
        for sink in hooks.sinks:
            sink.close()
    return metrics
