"""`facegan shards build|import|verify|inspect|stream`: write, adopt, check and read shard sets.

    facegan shards build shards/synthetic_demo.yaml --out data/shards/demo
    facegan shards build --source celeba --root ~/celeba --out data/shards/celeba64 --resolution 64
    facegan shards build shards/celeba64.yaml --root /shared/celeba --out /shared/shards/celeba64 --ray
    facegan shards import /data/wds --attrs Smiling,Male     # tars another tool wrote: adds manifest.json
    facegan shards verify data/shards/demo
    facegan shards inspect data/shards/demo --preview preview.png
    facegan shards stream data/shards/demo --batches 50

A mistake (a bad flag value, a missing folder, a damaged shard for `inspect`) prints one line
naming the flag, file or field and exits with status 2; Ctrl-C during a build exits with 130 and
the next run of the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from facegan.errors import ConfigError, DataError, UserError

# Flags of `shards build` that map one-to-one onto ShardRecipe fields.
_RECIPE_FLAGS: dict[str, tuple[type, str]] = {
    "source": (str, "celeba | utkface | folder | synthetic"),
    "resolution": (str, "output size: N or HxW (e.g. 64, 218x178), at most 4096 per side"),
    "crop": (str, "square | none | N | HxW (centred, in source pixels)"),
    "shard_size": (int, "samples per shard"),
    "workers": (int, "parallel processes (0 = all cores)"),
    "format": (str, "jpg | png | raw"),
    "quality": (int, "JPEG quality 1..100"),
    "seed": (int, "seed for split, order and synthetic faces"),
    "count": (int, "synthetic: number of faces"),
    "annotations": (str, "celeba: folder with list_attr_celeba.txt etc. (default: --root)"),
    "labels_csv": (str, "folder: CSV of labels"),
    "limit": (int, "keep only the first N items (smoke runs)"),
    "min_side": (int, "skip sources whose shorter side is below N px (default 32; 0 = off)"),
    "max_aspect": (float, "skip sources whose long/short side ratio is above R (default 4)"),
    "val_fraction": (float, "validation share where the source has no partition"),
    "test_fraction": (float, "test share where the source has no partition"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _recipe_from_args(args: argparse.Namespace) -> Any:
    from facegan.data.recipe import load_recipe

    return load_recipe(args.recipe, flags={name: getattr(args, name) for name in _RECIPE_FLAGS}, sets=args.set)


def cmd_shards_build(args: argparse.Namespace) -> int:
    from facegan.data.paths import refuse_overlap

    recipe = _recipe_from_args(args)
    refuse_overlap(args.out, out_flag="--out", inputs={"--root": args.root})
    progress = not args.no_progress and sys.stderr.isatty()   # no bar lines in logs and pipes
    try:
        if args.ray:
            from facegan.launch.shards import build_shards_on_ray

            result = build_shards_on_ray(recipe, root=args.root, out=args.out, progress=progress,
                                         overwrite=args.overwrite, address=args.address)
        else:
            from facegan.data.writer import build_shards

            result = build_shards(recipe, root=args.root, out=args.out, progress=progress,
                                  overwrite=args.overwrite)
    except KeyboardInterrupt:
        print("interrupted; rerun to resume", file=sys.stderr)
        return 130
    m = result.manifest
    n = m["counts"]["total"]
    print(f"wrote {args.out}: {n} samples "
          f"(train {m['counts']['train']}, val {m['counts']['val']}, test {m['counts']['test']}) "
          f"in {len(m['shards'])} shards at {m['resolution'][0]}x{m['resolution'][1]} {m['image_ext']}")
    print(f"  built {len(result.built)} shards, kept {len(result.kept)} from an earlier run, "
          f"{result.seconds:.1f} s ({n / max(result.seconds, 1e-9):.0f} img/s)"
          + (f" on {len(result.nodes)} Ray node(s)" if result.nodes else ""))
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
        print(f"verify failed: {len(bad)} shard file(s) bad of {len(manifest['shards'])} listed: {', '.join(bad)}",
              file=sys.stderr)
        return 1
    print(f"ok: {len(manifest['shards'])} shards, {manifest['counts']['total']} samples, "
          "checksums match and every sample decodes")
    return 0


def cmd_shards_inspect(args: argparse.Namespace) -> int:
    from facegan.data.paths import output_file
    from facegan.data.writer import inspect_shards

    if args.preview:
        output_file(args.preview, flag="--preview", suffix=".png")
    if args.json:
        output_file(args.json, flag="--json")
    report = inspect_shards(args.dir, preview=args.preview)
    c = report["counts"]
    print(f"{args.dir}: {c['total']} samples (train {c['train']}, val {c['val']}, test {c['test']}), "
          f"{report['resolution'][0]}x{report['resolution'][1]}; {report['samples_read']} read and checked")
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
    problems = report["problems"]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{args.dir}: damaged shard set, the figures above cover only what could be read: "
                        f"{problems[0]}{more}; run `facegan shards verify {args.dir}`")
    return 0


def _check_stream_flags(args: argparse.Namespace) -> None:
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--batches", args.batches, 1),
                             ("--world-size", args.world_size, 1), ("--workers", args.workers, 0),
                             ("--rank", args.rank, 0)):
        if value < low:
            raise ConfigError(f"{flag}: expected an integer >= {low}, got {value}")
    if args.rank >= args.world_size:
        raise ConfigError(f"--rank: expected 0 <= rank < --world-size ({args.world_size}), got {args.rank}")
    from facegan.data.limits import check_workers

    check_workers(args.workers, what="--workers")   # before any DataLoader forks them


def _last_line(exc: Exception) -> str:
    """A DataLoader worker's error reaches this process with the worker's traceback in its text."""
    line = str(exc).strip().splitlines()[-1] if str(exc).strip() else str(exc)
    head, sep, rest = line.partition(": ")
    return rest if sep and head.startswith("facegan.errors.") else line


def cmd_shards_stream(args: argparse.Namespace) -> int:
    """Stream batches the way a training rank would and print the rate."""
    from facegan.data.stream import ShardSet, train_loader

    _check_stream_flags(args)
    shards = ShardSet.open(args.dir)
    try:
        loader = train_loader(shards, batch_size=args.batch_size, rank=args.rank, world_size=args.world_size,
                              num_workers=args.workers, seed=args.seed)
    except UserError as exc:
        msg = str(exc)
        for field in ("batch_size", "world_size", "rank"):   # the library's names for these flags
            if msg.startswith(field):
                msg = _flag(field) + msg[len(field):]
                break
        raise type(exc)(msg) from None
    n_img = skipped = bad_shards = 0
    t0 = time.time()
    try:
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
            bad_shards += batch["num_bad_shards"]
    except UserError as exc:
        raise DataError(_last_line(exc)) from None
    dt = time.time() - t0
    print(f"streamed {args.batches} batches of {args.batch_size} from {args.dir} "
          f"({loader.batches_per_epoch} batches per epoch per rank): {n_img / max(dt, 1e-9):.0f} img/s, "
          f"{skipped} samples skipped, {bad_shards} shard reads failed (missing or truncated)")
    return 0


def cmd_shards_import(args: argparse.Namespace) -> int:
    """Write a manifest for WebDataset tars another tool wrote (facegan.data.importer)."""
    from facegan.data.importer import ImportOptions, import_shards

    def names(text: str | None) -> tuple[str, ...]:
        return tuple(n.strip() for n in text.split(",")) if text else ()

    opts = ImportOptions(attrs=names(args.attrs), cls_as=None if args.cls_as == "none" else args.cls_as,
                         split=args.split, val=tuple(args.val), test=tuple(args.test))
    m = import_shards(args.sources, out=args.out, opts=opts, progress=not args.no_progress and sys.stderr.isatty())
    where = args.out or (m.get("shard_location") or args.sources[0])
    c = m["counts"]
    print(f"imported {c['total']} samples (train {c['train']}, val {c['val']}, test {c['test']}) in "
          f"{len(m['shards'])} shards at {m['resolution'][0]}x{m['resolution'][1]} {m['image_ext']}; "
          f"labels: {', '.join(m['label_fields'] + (['attrs ' + ','.join(m['attr_names'])] if m['attr_names'] else [])) or 'none'}")
    print(f"  skipped samples: {m['num_skipped']}; shards left out: {len(m['skipped_shards'])}")
    for s in (m["skipped_shards"] + m["skipped"])[:10]:
        print(f"    skipped {s.get('name') or s['input']}: {s['reason']}")
    print(f"  manifest: {where.rstrip('/')}/manifest.json" if args.out else "  manifest written beside the shards")
    return 0


def register(sub: Any) -> None:
    shards = sub.add_parser("shards", help="build, verify, inspect and stream shard sets")
    ssub = shards.add_subparsers(dest="shards_command", required=True)

    b = ssub.add_parser("build", help="write a shard set from CelebA, UTKFace, a folder or synthetic faces")
    b.add_argument("recipe", nargs="?", help="recipe YAML (shards/*.yaml); flags override it")
    b.add_argument("--root", help="source folder (not needed for synthetic)")
    b.add_argument("--out", required=True,
                   help="output folder (new, empty or an earlier shard set), fsspec URL, or 'pipe:CMD {name}'")
    for name, (tp, help_text) in _RECIPE_FLAGS.items():
        b.add_argument(_flag(name), dest=name, type=tp, default=None, help=help_text)
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    b.add_argument("--overwrite", action="store_true",
                   help="build into a non-empty folder that holds no shard set (its unlisted .tar files go)")
    b.add_argument("--ray", action="store_true",
                   help="run the per-shard work as Ray tasks over a cluster (--root and --out on shared storage)")
    b.add_argument("--address", default="",
                   help="with --ray: the cluster to join (host:port or auto; default $RAY_ADDRESS, else a local one)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar (one is shown only when stderr is a terminal)")
    b.set_defaults(func=cmd_shards_build)

    v = ssub.add_parser("verify", help="check checksums and decode every sample")
    v.add_argument("dir", help="shard set folder or URL (holds manifest.json)")
    v.set_defaults(func=cmd_shards_verify)

    i = ssub.add_parser("inspect", help="counts, attribute frequencies and a preview grid")
    i.add_argument("dir", help="shard set folder or URL (holds manifest.json)")
    i.add_argument("--preview", help="write a preview grid PNG here")
    i.add_argument("--json", help="write the report as JSON here")
    i.set_defaults(func=cmd_shards_inspect)

    im = ssub.add_parser("import", help="adopt WebDataset tars another tool wrote (ShardWriter, img2dataset) as a set")
    im.add_argument("sources", nargs="+", metavar="DIR|URL",
                    help="folder or fsspec URL of .tar/.tar.gz/.tgz shards, a shard, or a brace pattern "
                         "('s3://b/set/shard-{000000..000009}.tar'); all in one folder")
    im.add_argument("--out", help="write manifest.json here instead of beside the shards (read-only sources)")
    im.add_argument("--attrs", help="comma-separated .json keys that become attributes (true or > 0 = 1)")
    im.add_argument("--cls-as", default="identity",
                    help="label field a .cls / integer .txt becomes: identity | partition | age | gender | race | none")
    im.add_argument("--split", default="train", help="split of shards not named train-/val-/test-... (default train)")
    im.add_argument("--val", action="append", default=[], metavar="GLOB", help="shard names (glob) that are the val split")
    im.add_argument("--test", action="append", default=[], metavar="GLOB", help="shard names (glob) that are the test split")
    im.add_argument("--no-progress", action="store_true", help="no progress bar")
    im.set_defaults(func=cmd_shards_import)

    s = ssub.add_parser("stream", help="stream training batches and report the rate")
    s.add_argument("dir", help="shard set folder or URL (holds manifest.json)")
    s.add_argument("--batch-size", type=int, default=128, help="samples per batch (at most the rank's share)")
    s.add_argument("--batches", type=int, default=50, help="batches to read")
    s.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (0 = in this process)")
    s.add_argument("--rank", type=int, default=0, help="which rank's share to read (0 .. world size - 1)")
    s.add_argument("--world-size", type=int, default=1, help="number of ranks the set is split over")
    s.add_argument("--seed", type=int, default=0, help="shuffle seed")
    s.set_defaults(func=cmd_shards_stream)
