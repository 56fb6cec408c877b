"""`facegan train` and `facegan sample`: train a family on shards (Ray Train or in-process), draw samples.

    facegan train configs/dcgan_demo.yaml [--set train.total_kimg=4] [--no-ray]
    facegan sample --checkpoint runs/dcgan -n 16 --out grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from facegan.config import ConfigError
from facegan.errors import Interrupted


def run(cfg: Any, *, no_ray: bool, progress: bool = True, overwrite: bool = False) -> tuple[dict[str, float], str]:
    """Train cfg in this process or on Ray Train; (the last report's metrics, the W&B run folder).
    With `progress`, one updating line (kimg, img/s, ETA, losses) instead of log lines. The run
    folder is this command's alone while it runs (facegan.launch.rundir: a fresh run over an earlier
    one needs `overwrite`)."""
    from facegan.data.stream import ShardSet
    from facegan.launch.rundir import claim_run_dir
    from facegan.loop import check_shards

    # The config and its shard set first: a mistake there is named before the run folder's state.
    check_shards(cfg, ShardSet.open(cfg.data.shards), world_size=1 if no_ray else cfg.ray.num_workers)
    try:
        with claim_run_dir(cfg, overwrite=overwrite):
            return _run(cfg, no_ray=no_ray, progress=progress)
    except KeyboardInterrupt:
        from facegan.checkpoint import list_checkpoints

        found = list_checkpoints(Path(cfg.train.out_dir) / "checkpoints")
        raise Interrupted("interrupted; " + (f"the last checkpoint is {found[-1]}: rerun with --set "
                                             "train.resume=latest to continue" if found else
                                             "no checkpoint was written yet")) from None


def _run(cfg: Any, *, no_ray: bool, progress: bool) -> tuple[dict[str, float], str]:
    import logging

    from facegan.config import to_dict

    if progress:
        # The progress line replaces the per-tick INFO lines (and Ray's per-report ones); -v brings them back.
        for name in ("facegan.loop", "ray", "ray.train", "ray.tune"):
            if logging.getLogger().level > logging.INFO:
                logging.getLogger(name).setLevel(logging.WARNING)
    if no_ray:
        from facegan.hooks import Hooks
        from facegan.launch.sinks import make_sinks
        from facegan.loop import train
        from facegan.stats import ProgressSink

        sinks = make_sinks(cfg)
        bar = (ProgressSink(total_kimg=cfg.train.total_kimg, desc=cfg.model.family),) if progress else ()
        try:
            metrics = train(cfg, hooks=Hooks(sinks=sinks + bar))
        finally:
            for sink in bar:   # an error mid-run starts on a line of its own
                sink.close()
        return metrics, sinks[0].run_dir if sinks else ""
    from facegan.launch.trainer import run_training

    result = run_training(cfg, config_dict=to_dict(cfg), progress=progress)
    return result.get("metrics", {}), result.get("wandb_dir", "")


def cmd_train(args: argparse.Namespace) -> int:
    from facegan.families import load_run_config

    cfg = load_run_config(args.config, args.set)
    metrics, wandb_dir = run(cfg, no_ray=args.no_ray, progress=not args.no_progress, overwrite=args.overwrite)
    print(summarize_run(cfg, metrics, wandb_dir=wandb_dir))
    return 0


def summarize_run(cfg: Any, metrics: dict[str, float], *, wandb_dir: str = "") -> str:
    """What the run left, naming only files that exist."""
    from facegan.checkpoint import list_checkpoints

    out = Path(cfg.train.out_dir)
    ckpts = list_checkpoints(out / "checkpoints")
    lines = [f"trained {cfg.model.family} to {metrics.get('kimg', 0):.1f} kimg "
             f"({metrics.get('img_per_sec', 0):.0f} img/s in the last tick)"]
    grids = sorted((out / "samples").glob("*latest.png")) if (out / "samples").is_dir() else []
    for grid in grids:
        lines.append(f"  {'sample grid' if grid.name == 'latest.png' else grid.name.removesuffix('-latest.png') + ' grid'}:"
                     f"  {grid}")
    if (out / "loss_curve.png").is_file():
        lines.append(f"  loss curves:  {out / 'loss_curve.png'}")
    if (out / "losses.jsonl").is_file():
        per_epoch = f", per epoch: {out / 'losses'}/" if (out / "losses").is_dir() else ""
        lines.append(f"  losses:       per step: {out / 'losses.jsonl'}{per_epoch}")
    lines.append(f"  checkpoint:   {ckpts[-1] if ckpts else '(none)'}")
    lines += wandb_lines(wandb_dir)
    losses = {k: v for k, v in metrics.items() if ("/" in k or k.startswith("D(")) and "/acc/" not in k}
    if losses:
        lines.append("  last tick:    " + "  ".join(f"{k}={v:.3f}" for k, v in sorted(losses.items())))
    return "\n".join(lines)


def wandb_lines(wandb_dir: str) -> list[str]:
    """The run's W&B folder and, for an offline run, the command that uploads it."""
    if not wandb_dir:
        return []
    from facegan.launch.sinks import sync_command

    lines = [f"  W&B run:      {wandb_dir}"]
    if Path(wandb_dir).name.startswith("offline-run-"):
        lines.append(f"  W&B upload:   {sync_command(wandb_dir)}   (offline run; after `wandb login`)")
    return lines


def cmd_sample(args: argparse.Namespace) -> int:
    from facegan.data.limits import check_images
    from facegan.data.paths import output_dir, output_file
    from facegan.families.loading import load_generator
    from facegan.images import save_grid_png, save_pngs

    if not args.out and not args.out_dir:
        raise ConfigError("sample: give --out GRID.png and/or --out-dir DIR")
    if args.n < 1:
        raise ConfigError(f"-n: expected a positive number of samples, got {args.n}")
    if args.out and Path(args.out).suffix.lower() != ".png":
        raise ConfigError(f"--out: expected a .png file for the grid, got {args.out}")
    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"--out: {args.out} is a directory; give a .png file (or use --out-dir)")
    if args.out_dir:
        output_dir(args.out_dir, flag="--out-dir")
    if args.out:
        output_file(args.out, flag="--out", suffix=".png")
    gen = load_generator(args.checkpoint, ema=not args.no_ema)
    check_images(args.n, *gen.resolution, what="-n")   # before one allocation of n images
    # Attribute families draw each face's attributes at their training rates (`facegan generate` chooses).
    img = gen.sample(args.n, seed=args.seed)
    where = []
    if args.out:
        save_grid_png(img, Path(args.out))
        where.append(args.out)
    if args.out_dir:
        paths = save_pngs(img, args.out_dir, prefix=f"sample_{args.seed:04d}")
        where.append(f"{args.out_dir}/ ({len(paths)} PNG files)")
    print(f"wrote {args.n} samples from {gen.checkpoint} ({gen.kimg:.1f} kimg, "
          f"{'raw' if args.no_ema else 'EMA'} {gen.family.name} generator) to {' and '.join(where)}")
    return 0


def register(sub: Any) -> None:
    t = sub.add_parser("train", help="train a model family on a shard set (Ray Train DDP, or in-process)")
    t.add_argument("config", help="run config YAML (configs/*.yaml)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.total_kimg=50 (repeatable)")
    t.add_argument("--no-ray", action="store_true", help="run the loop in this process (one rank)")
    t.add_argument("--no-progress", action="store_true", help="no progress line (log lines with -v instead)")
    t.add_argument("--overwrite", action="store_true", help="start afresh in a train.out_dir that holds an earlier "
                                                           "run (its checkpoints, samples and losses are removed)")
    t.set_defaults(func=cmd_train)

    sm = sub.add_parser("sample", help="draw a sample grid from a checkpoint or run folder")
    sm.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run folder (its newest)")
    sm.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    sm.add_argument("--out", default="", help="sample grid PNG")
    sm.add_argument("--out-dir", default="", help="also (or instead) one PNG per sample in this folder "
                                                   "(for `facegan eval --images`, `facegan blend`)")
    sm.add_argument("--seed", type=int, default=0, help="seed of the latents")
    sm.add_argument("--no-ema", action="store_true", help="use the raw generator instead of its EMA")
    sm.set_defaults(func=cmd_sample)
