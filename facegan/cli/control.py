"""`facegan blend` and `facegan generate`: attribute-controlled faces from a trained checkpoint.

    facegan blend me.jpg friend.png --checkpoint runs/overlay_celeba64 [--alpha 0.6 --beta 0.8] -n 16 --out grid.png
    facegan generate --checkpoint runs/overlay_celeba64 --attrs "Eyeglasses=1,Smiling=1,Male=0" -n 16 --out grid.png

`blend` is the "favorite face" report's use: the classifier reads the photos (any size; cropped
and resized the way the run's shards were built), its attribute probabilities are averaged into
o, and each face gets the overlay noise of o and a fresh standard-normal r. `generate` sets the
named attributes to 0/1 and leaves the rest at their training rate. Both take overlay and
conditional checkpoints (a conditional G gets o as its attribute input).

facegan.cli registers both through `register(sub)`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facegan.config import ConfigError
from facegan.data.limits import check_images


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _summary(names: list[str], values, *, top: int = 6) -> str:
    pairs = sorted(zip(names, values.tolist()), key=lambda p: -abs(p[1] - 0.5))[:top]
    return ", ".join(f"{n} {v:.2f}" for n, v in pairs)


def cmd_blend(args: argparse.Namespace) -> int:
    from facegan.families.classifier.scoring import load_classifier
    from facegan.control import blend_faces, load_control_generator, load_photos
    from facegan.images import save_grid_png

    bundle = load_control_generator(args.checkpoint, ema=not args.no_ema, alpha=args.alpha, beta=args.beta)
    h, w = bundle.resolution
    check_images(args.n, h, w, what="-n")
    photos = load_photos(args.photos, crop=bundle.crop, height=h, width=w)   # fail on bad photos first
    path = args.classifier or getattr(bundle.cfg.gan, "classifier", "")
    if not path:
        raise ConfigError("--classifier: this checkpoint names no attribute classifier; pass one "
                          "(a checkpoint or run folder of `facegan classifier train`)")
    classifier = load_classifier(path)
    faces, o_A = blend_faces(bundle, classifier, photos, n=args.n, seed=args.seed)
    save_grid_png(faces, Path(args.out))
    weights = (f", alpha {bundle.cfg.gan.alpha:g}, beta {bundle.cfg.gan.beta:g}"
               if hasattr(bundle.cfg.gan, "alpha") else "")
    print(f"wrote {args.n} faces to {args.out} ({bundle.family.name}{weights}, {bundle.kimg:.1f} kimg) blending "
          f"{len(args.photos)} photo{'s' if len(args.photos) > 1 else ''}")
    print(f"  averaged attributes (most decided): {_summary(bundle.attr_names, o_A)}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from facegan.control import generate_faces, load_control_generator, parse_attrs
    from facegan.images import save_grid_png

    bundle = load_control_generator(args.checkpoint, ema=not args.no_ema, alpha=args.alpha, beta=args.beta)
    requested = parse_attrs(args.attrs, bundle.attr_names)
    check_images(args.n, *bundle.resolution, what="-n")
    faces = generate_faces(bundle, requested, n=args.n, seed=args.seed)
    save_grid_png(faces, Path(args.out))
    asked = ", ".join(f"{k}={v}" for k, v in requested.items()) or "nothing (training rates)"
    print(f"wrote {args.n} faces to {args.out} ({bundle.family.name}, {bundle.kimg:.1f} kimg) with {asked}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="an overlay or conditional checkpoint, or its run folder")
    p.add_argument("-n", type=_positive, default=16, help="number of faces")
    p.add_argument("--out", required=True, help="PNG grid to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    p.add_argument("--alpha", type=float, help="overlay: weight of the noise in blocks 1-2, in [0, 1]")
    p.add_argument("--beta", type=float, help="overlay: weight of the noise in blocks 3-4, in [0, 1]")
    p.add_argument("--no-ema", action="store_true", help="use the raw generator instead of its EMA")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Register `blend` and `generate` on the `facegan` subcommand parsers."""
    b = subparsers.add_parser("blend", help="faces that blend the attributes of photos (the report's overlay)")
    b.add_argument("photos", nargs="+", metavar="PHOTO", help="image files of any size")
    b.add_argument("--classifier", help="attribute classifier (default: the one the overlay run trained with)")
    _common(b)
    b.set_defaults(func=cmd_blend)

    g = subparsers.add_parser("generate", help="faces with chosen attributes, e.g. --attrs Eyeglasses=1,Male=0")
    g.add_argument("--attrs", default="", help="NAME=0|1 pairs, comma-separated (CelebA names)")
    _common(g)
    g.set_defaults(func=cmd_generate)
