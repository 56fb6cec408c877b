"""`facegan shards build|verify|inspect|stream`: write, check and read shard sets.

    facegan shards build shards/synthetic_demo.yaml --out data/shards/demo
    facegan shards build --source celeba --root ~/celeba --out data/shards/celeba64 --resolution 64
    facegan shards verify data/shards/demo
    facegan shards inspect data/shards/demo --preview preview.png
    facegan shards stream data/shards/demo --batches 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from facegan.config import ConfigError, apply_overrides, from_dict, read_yaml

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



def register(sub: Any) -> None:
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

