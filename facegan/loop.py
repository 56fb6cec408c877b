"""The training loop: one function, run in-process or inside a Ray Train worker.

    facegan train configs/dcgan_demo.yaml --no-ray        # in-process, this loop directly
    facegan train configs/dcgan_demo.yaml                 # Ray Train workers, each running this loop

Progress is counted in images seen over all ranks (kimg), not epochs: the shard stream is
endless and every rank runs the same number of steps. Periodic work happens at ticks
(`train.tick_kimg`: reduced metrics, sample grid) and checkpoints (`train.checkpoint_kimg`).
This module imports neither Ray nor W&B; it talks to its runner through `facegan.hooks.Hooks`.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from facegan.checkpoint import CheckpointError, check_compatible, load_checkpoint, prune_checkpoints, save_checkpoint
from facegan.config import ConfigError, RunConfig, to_dict
from facegan.data.stream import ShardSet, train_loader
from facegan.hooks import Hooks
from facegan.models import FAMILIES
from facegan.runtime import (BadSteps, agree, all_ranks_finite, bare, distributed, gather_rng, resume_dir,
                             setup_torch)
from facegan.stats import JsonlSink, Stats, plot_loss_curves, save_loss_arrays

log = logging.getLogger(__name__)


def check_shards(cfg: RunConfig, shards: ShardSet) -> None:
    """The shard set fits cfg: its resolution, and attribute labels for families that use them. Run
    before Ray starts (facegan.launch.trainer.preflight) and again in every worker."""
    if tuple(shards.resolution) != cfg.model.size:
        raise ConfigError(f"model.resolution {cfg.model.resolution} does not match the shards in {cfg.data.shards} "
                          f"({shards.resolution[0]}x{shards.resolution[1]})")
    if FAMILIES[cfg.model.family].uses_attrs and not shards.attr_names:
        raise ConfigError(f"model.family {cfg.model.family!r} needs attribute labels, but the shards in "
                          f"{cfg.data.shards} carry none (manifest attr_names is empty)")


def build_nets(cfg: RunConfig, *, num_attrs: int | None = None) -> tuple[nn.Module, nn.Module]:
    """G and D of cfg's family, initialised. Attribute families need `num_attrs` (the shards'
    attribute count; a checkpoint's meta has it as attr_names)."""
    family = FAMILIES[cfg.model.family]
    m = cfg.model
    kw: dict[str, Any] = {}
    if family.uses_attrs:
        if num_attrs is None:
            raise ValueError(f"build_nets: the {m.family} family needs num_attrs")
        kw["num_attrs"] = num_attrs
    resolution = m.resolution if isinstance(m.resolution, int) else m.size
    nets = family.build(resolution=resolution, z_dim=m.z_dim, base_channels=m.base_channels,
                        g_batchnorm=m.g_batchnorm, d_batchnorm=m.d_batchnorm, d_dropout=m.d_dropout, **kw)
    for net in nets.values():
        family.init_weights(net)
    return nets["G"], nets["D"]


@torch.no_grad()
def update_ema(ema: nn.Module, net: nn.Module, *, beta: float) -> None:
    for p_ema, p in zip(ema.parameters(), net.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(ema.buffers(), net.buffers()):
        b_ema.copy_(b)


def save_grid_png(img_BCHW: torch.Tensor, path: Path) -> None:
    from facegan.data.writer import save_grid

    u8 = ((img_BCHW.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    save_grid(u8, path)


def fixed_attrs(shards: ShardSet, n: int, *, split: str = "val") -> torch.Tensor:
    """Attribute rows of the first `n` samples of `split` (cycled if fewer): the same for every
    run on these shards, so conditional sample grids are comparable across ticks and resumes."""
    from facegan.data.stream import eval_loader

    if shards.count(split) == 0:
        split = "train"
    rows: list[torch.Tensor] = []
    for batch in eval_loader(shards, split=split, batch_size=min(n, 256)):
        rows.append(batch["attrs"])
        if sum(len(r) for r in rows) >= n:
            break
    attrs = torch.cat(rows).float()
    return attrs.repeat((n + len(attrs) - 1) // len(attrs), 1)[:n]


def train(cfg: RunConfig, *, hooks: Hooks | None = None) -> dict[str, float]:
    """Train cfg.model.family on cfg.data.shards until cfg.train.total_kimg; returns final metrics."""
    hooks = hooks or Hooks()
    rank, world = hooks.rank, hooks.world_size
    tc = cfg.train
    out = Path(tc.out_dir)
    ckpt_root = out / "checkpoints"
    device, amp_dtype = setup_torch(tc, hooks)

    shards = ShardSet.open(cfg.data.shards)
    check_shards(cfg, shards)
    family = FAMILIES[cfg.model.family]

    # Same initial weights on every rank (DDP also broadcasts rank 0's, but EMA copies must agree).
    torch.manual_seed(tc.seed)
    G, D = build_nets(cfg, num_attrs=len(shards.attr_names) if family.uses_attrs else None)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.optim.g_lr, betas=(cfg.optim.beta1, cfg.optim.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.optim.d_lr, betas=(cfg.optim.beta1, cfg.optim.beta2))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    torch.manual_seed(tc.seed * 1000 + rank)
    gen = torch.Generator(device=device).manual_seed(tc.seed * 1000 + rank)

    step, images_seen, bad_total = 0, 0, 0
    trained_seconds = 0.0  # training time before this attempt (from the checkpoint): max_minutes spans restarts
    resume = resume_dir(cfg.train.resume, hooks, ckpt_root)
    if resume is not None:
        state, meta = load_checkpoint(resume)
        check_compatible(meta, to_dict(cfg.model), where=resume)
        try:
            G.load_state_dict(state["G"])
            D.load_state_dict(state["D"])
            G_ema.load_state_dict(state["G_ema"])
            opt_G.load_state_dict(state["opt_G"])
            opt_D.load_state_dict(state["opt_D"])
            scaler.load_state_dict(state["scaler"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{resume}: does not fit this model: {exc}") from None
        step, images_seen, bad_total = meta["step"], meta["images_seen"], meta.get("bad_steps", 0)
        trained_seconds = float(meta.get("train_seconds", 0.0))
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

    G.to(device)
    D.to(device)
    G_ema.to(device)
    for opt in (opt_G, opt_D):  # optimizer state follows its parameters' device
        for s in opt.state.values():
            for k, v in s.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    s[k] = v.to(device)
    G_t = hooks.wrap_model(G, device)
    D_t = hooks.wrap_model(D, device)
    steps = FAMILIES[cfg.model.family].make_steps(**to_dict(cfg.gan))
    # Families whose G/D take the batch's attributes (conditional, alpha/beta overlay) say so with
    # `uses_attrs`; they may also hold modules of their own (a frozen classifier) to move.
    uses_attrs = family.uses_attrs
    if hasattr(steps, "to"):
        steps.to(device)
    attr_meta: dict[str, Any] = {}
    if uses_attrs and rank == 0:
        # generate/blend read names, train rates and the crop from the checkpoint, not the shards.
        from facegan.classify import label_counts

        pos_A, n = label_counts(shards, "train")
        attr_meta = {"attr_names": list(shards.attr_names),
                     "attr_prevalence": [float(p) / max(n, 1) for p in pos_A],
                     "shard_recipe": shards.manifest.get("recipe", {})}

    loader = train_loader(shards, batch_size=cfg.data.batch_size, rank=rank, world_size=world,
                          num_workers=cfg.data.num_workers, seed=tc.seed, shuffle_buffer=cfg.data.shuffle_buffer,
                          start_batch=step, pin_memory=device.type == "cuda")
    grid_z = torch.randn(tc.grid_size, cfg.model.z_dim, generator=torch.Generator().manual_seed(tc.seed + 7)).to(device)
    grid_attrs = fixed_attrs(shards, tc.grid_size).to(device) if uses_attrs else None

    periodic_eval = None
    if cfg.eval.every_kimg > 0:
        from facegan.evaluate import PeriodicEval

        periodic_eval = PeriodicEval(cfg.eval, shards=cfg.data.shards, z_dim=cfg.model.z_dim, seed=tc.seed)
    batch_total = cfg.data.batch_size * world
    total_images = int(round(tc.total_kimg * 1000))
    tick_images = max(batch_total, int(tc.tick_kimg * 1000))
    ckpt_images = max(batch_total, int(tc.checkpoint_kimg * 1000))
    next_tick = (images_seen // tick_images + 1) * tick_images
    next_ckpt = (images_seen // ckpt_images + 1) * ckpt_images
    eval_images = max(batch_total, int(cfg.eval.every_kimg * 1000))
    next_eval = (images_seen // eval_images + 1) * eval_images
    stats = Stats()
    sinks = (JsonlSink(out / "losses.jsonl"),) + tuple(hooks.sinks) if rank == 0 else ()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    epoch_rows: list[dict[str, float]] = []
    skipped_samples = 0
    bad = BadSteps(max_in_row=tc.max_bad_steps, rank=rank, total=bad_total,
                   advice="Lower the learning rates or check the data.")
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    t_tick, img_tick = time.perf_counter(), images_seen
    t_start = time.perf_counter() - trained_seconds
    last_ckpt: Path | None = resume
    metrics: dict[str, float] = {}
    G_t.train()
    D_t.train()

    def write_checkpoint() -> Path | None:
        rng = gather_rng(gen, device)
        if rank != 0:
            return None
        meta = {"family": cfg.model.family, "model": to_dict(cfg.model), "step": step,
                "images_seen": images_seen, "kimg": images_seen / 1000, "world_size": world,
                "loader": {"seed": tc.seed, "start_batch": step, "num_workers": cfg.data.num_workers,
                           "batch_size": cfg.data.batch_size},
                "bad_steps": bad.total, "train_seconds": time.perf_counter() - t_start, "config": to_dict(cfg),
                **attr_meta}
        state = {"G": bare(G_t).state_dict(), "D": bare(D_t).state_dict(), "G_ema": G_ema.state_dict(),
                 "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "scaler": scaler.state_dict(),
                 "rng": rng}
        path = save_checkpoint(ckpt_root / f"ckpt-{images_seen:09d}", state=state, meta=meta)
        prune_checkpoints(ckpt_root, keep=tc.keep_checkpoints)
        return path

    while images_seen < total_images:
        batch = next(loader)
        skipped_samples += batch["num_skipped"]
        real = batch["image"].to(device, non_blocking=True)
        cond = {"attrs_BA": batch["attrs"].to(device, torch.float32)} if uses_attrs else {}
        kimg = images_seen / 1000
        scalars: dict[str, torch.Tensor] = {}

        # One z per step, shared by the phases; `carry` lets d_step hand its fakes to g_step.
        z = torch.randn(real.shape[0], cfg.model.z_dim, generator=gen, device=device)
        carry: dict[str, torch.Tensor] = {}

        def phase(fn, opt: torch.optim.Optimizer, **kw: Any) -> bool:
            """Run one named phase; update `opt` only if the loss is finite on every rank."""
            with autocast:
                loss, sc = fn(G=G_t, D=D_t, z_BZ=z, kimg=kimg, generator=gen, carry=carry, **kw)
            if not all_ranks_finite(loss):
                return False
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scalars.update(sc)
            return True

        step_ok = phase(steps.d_step, opt_D, real_BCHW=real, **cond) and phase(steps.g_step, opt_G, **cond)
        carry.clear()  # a skipped g_step must not keep G's graph alive into the next step
        if scaler.is_enabled() and step_ok:
            scaler.update()

        step += 1
        images_seen += batch_total
        bad.record(step_ok, step=step, images_seen=images_seen, last_ckpt=last_ckpt)
        if step_ok:
            if tc.ema_kimg > 0:
                ema_nimg = tc.ema_kimg * 1000
                if tc.ema_rampup > 0:
                    ema_nimg = min(ema_nimg, images_seen * tc.ema_rampup)
                update_ema(G_ema, bare(G_t), beta=0.5 ** (batch_total / max(ema_nimg, 1e-8)))
            else:
                update_ema(G_ema, bare(G_t), beta=0.0)
            stats.add(scalars)

        at_tick = images_seen >= next_tick or images_seen >= total_images
        # The time budget is checked on rank 0 only at ticks and shared, so all ranks stop together.
        out_of_time = at_tick and tc.max_minutes > 0 and agree(time.perf_counter() - t_start > tc.max_minutes * 60)
        at_ckpt = images_seen >= next_ckpt or images_seen >= total_images or out_of_time
        at_epoch = loader.batches_seen % loader.batches_per_epoch == 0
        if rank == 0 and (at_tick or at_epoch):
            rows = stats.pop_steps()
            first = step - len(rows) + 1
            rows = [dict(r, kind="step", step=first + i, kimg=(first + i) * batch_total / 1000)
                    for i, r in enumerate(rows)]
            for sink in sinks:
                sink.log_rows(rows)
            epoch_rows += rows
            if at_epoch:
                save_loss_arrays(epoch_rows, out / "losses", epoch=loader.batches_seen // loader.batches_per_epoch - 1)
                epoch_rows = []
                plot_loss_curves(out / "losses.jsonl", out / "loss_curve.png")
        elif rank != 0 and (at_tick or at_epoch):
            stats.pop_steps()
        if at_tick or at_ckpt:
            dt = time.perf_counter() - t_tick
            metrics = stats.reduce()
            metrics.update(kimg=images_seen / 1000, step=step, images_seen=images_seen,
                           img_per_sec=(images_seen - img_tick) / max(dt, 1e-9), bad_steps=bad.total,
                           skipped_samples=skipped_samples, d_noise_std=steps.d_noise_std(images_seen / 1000))
            if device.type == "cuda":
                metrics["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            if periodic_eval is not None and (images_seen >= next_eval or images_seen >= total_images or out_of_time):
                # Every rank draws its share of the samples; rank 0 gets the scores.
                t_eval = time.perf_counter()
                metrics.update(periodic_eval(G=G_ema, D=bare(D_t), device=device, rank=rank, world_size=world,
                                             steps=steps if uses_attrs else None, attrs=grid_attrs))
                metrics["eval_seconds"] = time.perf_counter() - t_eval
                next_eval = (images_seen // eval_images + 1) * eval_images
            t_tick, img_tick = time.perf_counter(), images_seen
            images = {}
            if rank == 0:
                with torch.no_grad(), autocast:
                    grid = steps.generate(G_ema, grid_z, grid_attrs) if uses_attrs else G_ema(grid_z)
                grid_path = out / "samples" / f"grid-{images_seen:09d}.png"
                save_grid_png(grid, grid_path)
                save_grid_png(grid, out / "samples" / "latest.png")
                images["samples"] = grid_path
                for sink in sinks:
                    sink.log(metrics, step=step, images=images)
                log.info("kimg %.1f step %d: %s", metrics["kimg"], step,
                         " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if "/" in k))
            ckpt_dir = None
            if at_ckpt:
                ckpt_dir = write_checkpoint()
                if ckpt_dir is not None:
                    last_ckpt = ckpt_dir
                next_ckpt = (images_seen // ckpt_images + 1) * ckpt_images
                if distributed():
                    dist.barrier()  # the checkpoint exists on disk before anyone reports it
            next_tick = (images_seen // tick_images + 1) * tick_images
            hooks.report(metrics, ckpt_dir)
            if out_of_time:
                log.info("train.max_minutes=%g reached at %.1f kimg: stopping", tc.max_minutes, images_seen / 1000)
                break
            if hooks.should_stop():
                break

    if rank == 0:
        if epoch_rows:
            plot_loss_curves(out / "losses.jsonl", out / "loss_curve.png")
        for sink in hooks.sinks:
            sink.close()
    return metrics
