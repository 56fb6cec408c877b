"""`facegan compare`: several runs side by side on one self-contained HTML page.

    facegan compare runs/dcgan runs/wgangp runs/vae --shards data/celeba64 \\
        --classifier runs/classifier_celeba64 --out compare.html
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facegan.errors import ConfigError


def register(sub: Any) -> None:
    c = sub.add_parser("compare", help="score several runs (any family with a generator) the same way and show "
                                       "them side by side: compare.html, compare.json, compare.csv")
    c.add_argument("runs", nargs="+", help="run folders or checkpoint folders (each run's newest checkpoint)")
    c.add_argument("--shards", required=True, help="real shard set the runs are scored against")
    c.add_argument("--classifier", required=True, help="attribute classifier checkpoint (or its run folder): "
                                                      "features for fid_attr & co. and the attribute rates")
    c.add_argument("--out", default="compare.html", help="HTML path (.html); .json, .csv and a _grids folder beside it")
    c.add_argument("--num-samples", type=int, default=1000, help="generated images per run")
    c.add_argument("--num-real", type=int, default=2000, help="at most this many real images per split")
    c.add_argument("--grid-size", type=int, default=36, help="images in each run's grid")
    c.add_argument("--attrs", default="", help="comma-separated attributes whose rates are compared (default: the "
                                                "CelebA report's Eyeglasses,Bangs,Wearing_Hat,Wavy_Hair)")
    c.add_argument("--labels", default="", help="comma-separated display names, one per run (default: folder names)")
    c.add_argument("--eval-split", default="val", help="real split the runs are compared with (default val)")
    c.add_argument("--seed", type=int, default=0, help="seed of the latents (the same for every run)")
    c.add_argument("--batch-size", type=int, default=64, help="images per generation/feature batch")
    c.add_argument("--no-ema", action="store_true", help="score the raw generators instead of their EMA")
    c.add_argument("--face", default="auto", choices=["auto", "on", "off"],
                   help="face-identity scores (fid_face, identity diversity, detection rate; dlib): "
                        "auto = when dlib-bin and face_recognition_models are installed")
    c.set_defaults(func=cmd_compare)


def cmd_compare(args: Any) -> int:
    from facegan.evaluation.compare import (REPORT_ATTRS, CompareRequest, compare_runs, format_compare_table,
                                            write_compare)

    if not str(args.out).endswith(".html") or Path(args.out).is_dir():
        raise ConfigError(f"--out: expected a .html file, got {args.out}")
    from facegan.data.paths import output_file
    from facegan.data.stream import ShardSet

    output_file(args.out, flag="--out", suffix=".html")
    attrs = [a.strip() for a in args.attrs.split(",") if a.strip()] or list(REPORT_ATTRS)
    known = ShardSet.open(args.shards).attr_names
    unknown = [a for a in attrs if a not in known]
    if args.attrs and unknown:
        raise ConfigError(f"--attrs: unknown attribute{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                          f"(the shard set's: {', '.join(known) or 'none'})")
    req = CompareRequest(runs=list(args.runs), shards=args.shards, classifier=args.classifier,
                         num_samples=args.num_samples, num_real=args.num_real, grid_size=args.grid_size,
                         attrs=attrs,
                         labels=[x.strip() for x in args.labels.split(",") if x.strip()],
                         eval_split=args.eval_split, seed=args.seed, batch_size=args.batch_size,
                         use_ema=not args.no_ema, face=args.face)
    if req.face == "auto":
        from facegan.metrics.face import face_available, skipped_note

        if not face_available():
            import sys

            print(skipped_note(), file=sys.stderr)
    result = compare_runs(req)
    print(format_compare_table(result))
    paths = write_compare(result, args.out)
    print(f"wrote {paths['html']}, {paths['json'].name}, {paths['csv'].name} and {paths['grids'].name}/")
    return 0
