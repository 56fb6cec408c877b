"""`facegan predictor train`: train a latent predictor (the predictor family) for a trained GAN.

    facegan predictor train --checkpoint runs/infogan_celeba64 [--config configs/predictor_celeba64.yaml]
                            [--set gan.switch_kimg=100 ...] [--no-ray]

The run config is `--config` (default: the predictor family's defaults) with what the GAN's
checkpoint says put over it: gan.generator (the checkpoint), model.resolution and data.shards (the
GAN's), train.out_dir (<GAN run folder>/predictor); `--set` overrides any of it. The predictor's
checkpoints record the GAN checkpoint they belong to; facegan.families.predictor.load.load_predictor
loads one for GAN inversion.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from facegan.config import ConfigError


def predictor_config(gan_checkpoint: str, *, config: str = "", overrides: list[str] | None = None) -> Any:
    """The predictor's RunConfig for a GAN checkpoint or run folder (see the module docstring)."""
    from facegan.checkpoint import find_checkpoint
    from facegan.config import apply_overrides, from_dict, read_yaml
    from facegan.families import RunConfig

    ckpt = find_checkpoint(gan_checkpoint)
    meta = json.loads((Path(ckpt) / "meta.json").read_text())
    gan_cfg = meta.get("config") or {}
    res = (gan_cfg.get("model") or {}).get("resolution", meta.get("model", {}).get("resolution"))
    if not isinstance(res, int):
        raise ConfigError(f"--checkpoint: {ckpt} makes {res} images; the predictor needs a square power-of-two size")
    data = read_yaml(config) if config else {}
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    if model.get("family", "predictor") != "predictor":
        raise ConfigError(f"{config}: model.family is {model.get('family')!r}; `facegan predictor train` trains "
                          "predictor runs")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    # The GAN's values win over the config file's (a template for any GAN); --set wins over both.
    data["model"] = {**model, "family": "predictor", "resolution": res}
    data["gan"] = {**(data.get("gan") or {}), "generator": str(ckpt)}
    data["data"] = {**(data.get("data") or {}), "shards": (gan_cfg.get("data") or {}).get("shards", "")}
    data["train"] = {**(data.get("train") or {}), "out_dir": str(run_dir / "predictor")}
    data = apply_overrides(data, overrides)
    try:
        return from_dict(RunConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{config or 'predictor config'}: {exc}") from None


def cmd_predictor_train(args: argparse.Namespace) -> int:
    from facegan.cli.train import run, summarize_run

    cfg = predictor_config(args.checkpoint, config=args.config, overrides=args.set)
    metrics, wandb_dir = run(cfg, no_ray=args.no_ray, overwrite=args.overwrite)
    print(summarize_run(cfg, metrics, wandb_dir=wandb_dir))
    print(f"  predicts latents of: {cfg.gan.generator}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("predictor", help="latent predictors: image -> a GAN's latent (start of GAN inversion)")
    psub = p.add_subparsers(dest="predictor_command", required=True)
    t = psub.add_parser("train", help="train a latent predictor against a trained GAN's frozen generator")
    t.add_argument("--checkpoint", required=True, help="the GAN: a checkpoint folder, or a run folder (its newest)")
    t.add_argument("--config", default="", help="predictor run config YAML (default: the family's defaults)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set gan.switch_kimg=100 (repeatable)")
    t.add_argument("--no-ray", action="store_true", help="run the loop in this process (one rank)")
    t.add_argument("--overwrite", action="store_true", help="start afresh where an earlier predictor run is "
                                                           "(its checkpoints and losses are removed)")
    t.set_defaults(func=cmd_predictor_train)
