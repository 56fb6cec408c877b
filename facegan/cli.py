"""The `facegan` command line.

    facegan shards build shards/synthetic_demo.yaml --out data/shards/demo
    facegan shards build --source celeba --root ~/celeba --out data/shards/celeba64 --resolution 64
    facegan shards verify data/shards/demo
    facegan shards inspect data/shards/demo --preview preview.png
    facegan shards stream data/shards/demo --batches 50
    facegan train configs/dcgan_demo.yaml [--set train.total_kimg=4] [--no-ray]
    facegan classifier train configs/classifier_demo.yaml [--set k=v ...] [--no-ray]
    facegan classifier eval --checkpoint demo_out/classifier --shards demo_out/shards --split test
    facegan eval --checkpoint demo_out/run --shards demo_out/shards --classifier demo_out/classifier
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from facegan.config import ConfigError, apply_overrides, from_dict, read_yaml
from facegan.checkpoint import CheckpointError
from facegan.data.records import DataError
from facegan.metrics.features import InceptionWeightsError

# Flags of `shards build` that map one-to-one onto ShardRecipe fields.
_RECIPE_FLAGS: dict[str, tuple[type, str]] = {
    "source": (str, "celeba | utkface | folder | synthetic"),
    "resolution": (str, "output size: N or HxW (e.g. 64, 218x178)"),
    "crop": (str, "square | none | N | HxW (centred, in source pixels)"),
    "shard_size": (int, "samples per shard"),
    "workers": (int, "parallel processes (0 = all cores)"),
    "format": (str, "jpg | png | raw"),
    "quality": (int, "JPEG quality"),
    "seed": (int, "seed for split, order and synthetic faces"),
    "count": (int, "synthetic: number of faces"),
    "annotations": (str, "celeba: folder with list_attr_celeba.txt etc. (default: --root)"),
    "labels_csv": (str, "folder: CSV of labels"),
    "limit": (int, "keep only the first N items (smoke runs)"),
    "val_fraction": (float, "validation share where the source has no partition"),
    "test_fraction": (float, "test share where the source has no partition"),
}


def _recipe_from_args(args: argparse.Namespace) -> Any:
    from facegan.data.recipe import ShardRecipe

    data: dict[str, Any] = read_yaml(args.recipe) if args.recipe else {}
    for name in _RECIPE_FLAGS:
        value = getattr(args, name)
        if value is not None:
            data[name] = value
    data = apply_overrides(data, args.set)
    if "source" not in data:
        raise ConfigError("source: not given (pass a recipe file or --source)")
    try:
        return from_dict(ShardRecipe, data)
    except ConfigError as exc:
        raise ConfigError(f"{args.recipe}: {exc}" if args.recipe else str(exc)) from None


def cmd_shards_build(args: argparse.Namespace) -> int:
    from facegan.data.writer import build_shards

    recipe = _recipe_from_args(args)
    result = build_shards(recipe, root=args.root, out=args.out, progress=not args.no_progress)
    m = result.manifest
    n = m["counts"]["total"]
    print(f"wrote {args.out}: {n} samples "
          f"(train {m['counts']['train']}, val {m['counts']['val']}, test {m['counts']['test']}) "
          f"in {len(m['shards'])} shards at {m['resolution'][0]}x{m['resolution'][1]} {m['image_ext']}")
    print(f"  built {len(result.built)} shards, kept {len(result.kept)} from an earlier run, "
          f"{result.seconds:.1f} s ({n / max(result.seconds, 1e-9):.0f} img/s)")
    print(f"  skipped inputs: {m['num_skipped']}; annotation rows without an image: {m['rows_without_image']}"
          + (f"; names with missing fields (parsed partially): {m['num_partial_labels']}"
             if m["num_partial_labels"] else ""))
    for s in m["skipped"][:10]:
        print(f"    skipped {s['input']}: {s['reason']}")
    if m["num_skipped"] > 10:
        print(f"    ... and {m['num_skipped'] - 10} more (all listed in manifest.json)")
    return 0


def cmd_shards_verify(args: argparse.Namespace) -> int:
    from facegan.data.writer import load_manifest, verify_shards

    manifest = load_manifest(args.dir)
    problems = verify_shards(args.dir)
    if problems:
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        bad = sorted({p.split(":", 1)[0] for p in problems})
        print(f"verify failed: {len(bad)} of {len(manifest['shards'])} shards bad: {', '.join(bad)}",
              file=sys.stderr)
        return 1
    print(f"ok: {len(manifest['shards'])} shards, {manifest['counts']['total']} samples, "
          "checksums match and every sample decodes")
    return 0


def cmd_shards_inspect(args: argparse.Namespace) -> int:
    from facegan.data.writer import inspect_shards

    report = inspect_shards(args.dir, preview=args.preview)
    c = report["counts"]
    print(f"{args.dir}: {c['total']} samples (train {c['train']}, val {c['val']}, test {c['test']}), "
          f"{report['resolution'][0]}x{report['resolution'][1]}")
    print(f"skipped inputs {report['num_skipped']}, annotation rows without image {report['rows_without_image']}")
    if report["attr_frequencies"]:
        print("attribute frequencies (share of samples with the attribute):")
        for name, f in sorted(report["attr_frequencies"].items(), key=lambda kv: -kv[1]):
            print(f"  {name:<22} {f:6.3f}")
    for name, hist in report["label_histograms"].items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in sorted(hist.items())))
    if "preview" in report:
        print(f"preview grid: {report['preview']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def cmd_shards_stream(args: argparse.Namespace) -> int:
    """Stream batches the way a training rank would and print the rate."""
    from facegan.data.stream import ShardSet, train_loader

    shards = ShardSet.open(args.dir)
    loader = train_loader(shards, batch_size=args.batch_size, rank=args.rank, world_size=args.world_size,
                          num_workers=args.workers, seed=args.seed)
    n_img = skipped = 0
    t0 = time.time()
    for i in range(args.batches):
        batch = next(loader)
        if i == 0:
            t0 = time.time()  # leave worker start-up out of the rate
            img = batch["image"]
            print(f"batch shape {tuple(img.shape)} {img.dtype} range [{img.min():.2f}, {img.max():.2f}]"
                  + (f", attrs {tuple(batch['attrs'].shape)}" if "attrs" in batch else ""))
        else:
            n_img += batch["image"].shape[0]
        skipped += batch["num_skipped"]
    dt = time.time() - t0
    print(f"streamed {args.batches} batches of {args.batch_size} from {args.dir} "
          f"({loader.batches_per_epoch} batches per epoch per rank): {n_img / max(dt, 1e-9):.0f} img/s, "
          f"{skipped} samples skipped")
    return 0


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


def cmd_classifier_train(args: argparse.Namespace) -> int:
    from facegan.classify import EVAL_JSON, format_table
    from facegan.config import ClassifierRunConfig, load_yaml, to_dict

    cfg = load_yaml(ClassifierRunConfig, args.config, overrides=args.set)
    if args.no_ray:
        from facegan.classify import train_classifier
        from facegan.hooks import Hooks

        sinks = make_sinks(cfg)
        metrics = train_classifier(cfg, hooks=Hooks(sinks=sinks))
        wandb_dir = sinks[0].run_dir if sinks else ""
    else:
        from facegan.classify import train_classifier
        from facegan.launch.trainer import run_training

        result = run_training(cfg, config_dict=to_dict(cfg), train_fn=train_classifier)
        metrics = result.get("metrics", {})
        wandb_dir = result.get("wandb_dir", "")
    from facegan.checkpoint import list_checkpoints

    out = Path(cfg.train.out_dir)
    ckpts = list_checkpoints(out / "checkpoints")
    print(f"trained classifier {cfg.model.arch} to {metrics.get('kimg', 0):.1f} kimg "
          f"({metrics.get('img_per_sec', 0):.0f} img/s in the last tick)")
    print(f"  checkpoint:   {ckpts[-1] if ckpts else '(none)'}")
    print(f"  evaluation:   {out / EVAL_JSON}   (per step: {out / 'losses.jsonl'})")
    if wandb_dir:
        print(f"  W&B run:      {wandb_dir}")
    evaluation = out / EVAL_JSON
    if evaluation.is_file():  # rank 0 wrote it; on a multi-node cluster it may be on another machine
        for result in json.loads(evaluation.read_text())["splits"].values():
            print()
            print(format_table(result))
    return 0


def cmd_classifier_eval(args: argparse.Namespace) -> int:
    from facegan.classify import evaluate_classifier, format_table, load_classifier

    model = load_classifier(args.checkpoint)
    result = evaluate_classifier(model, args.shards, args.split, batch_size=args.batch_size)
    result["checkpoint"] = model.checkpoint
    print(format_table(result))
    out = Path(args.json) if args.json else Path(model.checkpoint) / f"eval_{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facegan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    shards = sub.add_parser("shards", help="build, verify, inspect and stream shard sets")
    ssub = shards.add_subparsers(dest="shards_command", required=True)

    b = ssub.add_parser("build", help="write a shard set from CelebA, UTKFace, a folder or synthetic faces")
    b.add_argument("recipe", nargs="?", help="recipe YAML (shards/*.yaml); flags override it")
    b.add_argument("--root", help="source folder (not needed for synthetic)")
    b.add_argument("--out", required=True, help="output folder, fsspec URL, or 'pipe:CMD {name}'")
    for name, (tp, help_text) in _RECIPE_FLAGS.items():
        b.add_argument(f"--{name.replace('_', '-')}", dest=name, type=tp, default=None, help=help_text)
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=cmd_shards_build)

    v = ssub.add_parser("verify", help="check checksums and decode every sample")
    v.add_argument("dir")
    v.set_defaults(func=cmd_shards_verify)

    i = ssub.add_parser("inspect", help="counts, attribute frequencies and a preview grid")
    i.add_argument("dir")
    i.add_argument("--preview", help="write a preview grid PNG here")
    i.add_argument("--json", help="write the report as JSON here")
    i.set_defaults(func=cmd_shards_inspect)

    s = ssub.add_parser("stream", help="stream training batches and report the rate")
    s.add_argument("dir")
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--batches", type=int, default=50)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--rank", type=int, default=0)
    s.add_argument("--world-size", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_shards_stream)

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

    c = sub.add_parser("classifier", help="train and evaluate face-attribute classifiers")
    csub = c.add_subparsers(dest="classifier_command", required=True)
    ct = csub.add_parser("train", help="train an attribute classifier (Ray Train DDP, or in-process)")
    ct.add_argument("config", help="classifier config YAML (configs/classifier_*.yaml)")
    ct.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set model.arch=resnet18")
    ct.add_argument("--no-ray", action="store_true", help="run the loop in this process (one rank)")
    ct.set_defaults(func=cmd_classifier_train)
    ce = csub.add_parser("eval", help="per-attribute accuracy against the majority baseline")
    ce.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run folder (its newest)")
    ce.add_argument("--shards", required=True, help="shard set; its train split gives the majority baseline")
    ce.add_argument("--split", default="test", choices=("train", "val", "test"))
    ce.add_argument("--batch-size", type=int, default=256)
    ce.add_argument("--json", help="write the result here (default: <checkpoint>/eval_<split>.json)")
    ce.set_defaults(func=cmd_classifier_eval)

    from facegan.evaluate import add_eval_parser
    from facegan.blend_cli import add_control_parsers
    from facegan.sweep_cli import add_sweep_parsers

    add_eval_parser(sub)
    add_sweep_parsers(sub)
    add_control_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, InceptionWeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
