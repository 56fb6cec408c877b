"""`facegan train` and `facegan sample`: train a family on shards (Ray Train or in-process), draw samples.

    facegan train configs/dcgan_demo.yaml [--set train.total_kimg=4] [--no-ray]
    facegan sample --checkpoint runs/dcgan -n 16 --out grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from facegan.config import ConfigError

def load_run_config(path: str, overrides: list[str]) -> Any:
    """RunConfig from YAML + --set overrides; every error names the file and field."""
    from facegan.config import RunConfig, load_yaml

    return load_yaml(RunConfig, path, overrides=overrides)


def make_sinks(cfg: Any) -> tuple[Any, ...]:
    """Rank-0 metric sinks besides the JSON-lines file: W&B when enabled."""
    if not cfg.wandb.enabled or cfg.wandb.mode == "disabled":
        return ()
    from facegan.config import to_dict
    from facegan.stats import WandbSink

    w = cfg.wandb
    return (WandbSink(project=w.project, entity=w.entity, group=w.group, name=w.name or Path(cfg.train.out_dir).name,
                      mode=w.mode, config=to_dict(cfg), out_dir=Path(cfg.train.out_dir)),)


def cmd_train(args: argparse.Namespace) -> int:
    from facegan.config import to_dict

    cfg = load_run_config(args.config, args.set)
    if args.no_ray:
        from facegan.hooks import Hooks
        from facegan.loop import train

        sinks = make_sinks(cfg)
        metrics = train(cfg, hooks=Hooks(sinks=sinks))
        wandb_dir = sinks[0].run_dir if sinks else ""
    else:
        from facegan.launch.trainer import run_training

        result = run_training(cfg, config_dict=to_dict(cfg))
        metrics = result.get("metrics", {})
        wandb_dir = result.get("wandb_dir", "")
    print(summarize_run(cfg, metrics, wandb_dir=wandb_dir))
    return 0


def summarize_run(cfg: Any, metrics: dict[str, float], *, wandb_dir: str = "") -> str:
    from facegan.checkpoint import list_checkpoints

    out = Path(cfg.train.out_dir)
    ckpts = list_checkpoints(out / "checkpoints")
    lines = [f"trained {cfg.model.family} to {metrics.get('kimg', 0):.1f} kimg "
             f"({metrics.get('img_per_sec', 0):.0f} img/s in the last tick)",
             f"  sample grid:  {out / 'samples' / 'latest.png'}",
             f"  loss curves:  {out / 'loss_curve.png'}  (per step: {out / 'losses.jsonl'}, per epoch: {out / 'losses'}/)",
             f"  checkpoint:   {ckpts[-1] if ckpts else '(none)'}"]
    if wandb_dir:
        lines.append(f"  W&B run:      {wandb_dir}")
    losses = {k: v for k, v in metrics.items() if "/" in k or k.startswith("D(")}
    if losses:
        lines.append("  last tick:    " + "  ".join(f"{k}={v:.3f}" for k, v in sorted(losses.items())))
    return "\n".join(lines)


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from facegan.checkpoint import load_checkpoint
    from facegan.config import RunConfig, from_dict
    from facegan.loop import build_nets, save_grid_png

    from facegan.models import FAMILIES

    state, meta = load_checkpoint(Path(args.checkpoint))
    cfg = from_dict(RunConfig, meta["config"])
    if FAMILIES[cfg.model.family].uses_attrs:
        # Attribute families draw each face's attributes from the training rates (facegan generate
        # with no --attrs); `facegan generate` chooses them.
        from facegan.control import generate_faces, load_generator

        bundle = load_generator(args.checkpoint, ema=not args.no_ema)
        img = generate_faces(bundle, {}, n=args.n, seed=args.seed)
    else:
        G, _ = build_nets(cfg)
        G.load_state_dict(state["G" if args.no_ema else "G_ema"])
        G.eval()
        z = torch.randn(args.n, cfg.model.z_dim, generator=torch.Generator().manual_seed(args.seed))
        with torch.no_grad():
            img = G(z)
    if not args.out and not args.out_dir:
        raise ConfigError("sample: give --out GRID.png and/or --out-dir DIR")
    where = []
    if args.out:
        save_grid_png(img, Path(args.out))
        where.append(args.out)
    if args.out_dir:
        from PIL import Image

        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        u8 = ((img.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for i, arr in enumerate(u8):
            Image.fromarray(arr).save(out_dir / f"sample_{args.seed:04d}_{i:05d}.png")
        where.append(f"{out_dir}/ ({len(u8)} PNG files)")
    print(f"wrote {args.n} samples from {args.checkpoint} ({meta['kimg']:.1f} kimg, "
          f"{'G' if args.no_ema else 'EMA G'}) to {' and '.join(where)}")
    return 0



def register(sub: Any) -> None:
    t = sub.add_parser("train", help="train a model family on a shard set (Ray Train DDP, or in-process)")
    t.add_argument("config", help="run config YAML (configs/*.yaml)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.total_kimg=50")
    t.add_argument("--no-ray", action="store_true", help="run the loop in this process (one rank)")
    t.set_defaults(func=cmd_train)

    sm = sub.add_parser("sample", help="draw a sample grid from a checkpoint")
    sm.add_argument("--checkpoint", required=True)
    sm.add_argument("-n", type=int, default=64)
    sm.add_argument("--out", default="", help="sample grid PNG")
    sm.add_argument("--out-dir", default="", help="also (or instead) one PNG per sample in this folder "
                                                   "(for `facegan eval --images`, `facegan blend`)")
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--no-ema", action="store_true", help="use the raw generator instead of its EMA")
    sm.set_defaults(func=cmd_sample)

