"""`facegan invert`, `facegan edit`, `facegan directions`: real photos in, latents and altered faces out.

    facegan invert a.jpg b.jpg --checkpoint runs/dcgan --out inv/ [--loss mse,ms_ssim] [--vgg-weights vgg16.pth]
    facegan directions --checkpoint runs/dcgan --classifier runs/classifier [--num-samples 5000]
    facegan edit a.jpg --checkpoint runs/dcgan --direction Smiling=2 --direction Eyeglasses=2 --out edit.png
    facegan edit a.jpg --checkpoint runs/infogan --set cat=3 --set c1=0.8 --out edit.png
    facegan edit a.jpg --checkpoint runs/conditional --attrs Smiling=1,Eyeglasses=1 --out edit.png

invert and edit also measure identity: dlib's face-descriptor distance photo -> reconstruction and
photo -> each edit, per photo, with the share under dlib's same-person threshold (0.6), in
scores.json (invert) or the JSON beside the grid (edit); --no-identity skips it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from facegan.errors import ConfigError


def _options(args: argparse.Namespace) -> Any:
    from facegan.inversion import InvertOptions, parse_losses

    return InvertOptions(losses=parse_losses(args.loss), steps=args.steps, lr=args.lr, restarts=args.restarts,
                         vgg_weights=args.vgg_weights, seed=args.seed)


def _check_out(path: str, *, suffix: str = "") -> Path:
    out = Path(path)
    if suffix:
        if out.suffix.lower() != suffix:
            raise ConfigError(f"--out: expected a {suffix} file, got {path}")
        if out.is_dir():
            raise ConfigError(f"--out: {path} is a directory; give a {suffix} file")
    elif out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {path} exists and is not a directory")
    return out


def run_inversion(args: argparse.Namespace, gen: Any) -> dict[str, Any]:
    """Photos loaded, inverted in-process or on Ray tasks; tensors on the CPU in photo order."""
    import torch

    from facegan.control import load_photos
    from facegan.inversion import invert, load_predictor_fn

    options = _options(args)
    h, w = gen.resolution
    photos = load_photos(args.photos, crop=gen.crop, height=h, width=w)   # every bad photo named, nothing written
    if args.workers > 0:
        from dataclasses import asdict

        from facegan.launch.invert import ray_invert

        parts = ray_invert(args.checkpoint, list(args.photos), asdict(options), workers=args.workers,
                           ema=not args.no_ema, predictor=args.predictor)
        order = [i for part in parts for i in part["order"]]
        inverse = torch.tensor(order).argsort()
        cat = lambda key: torch.cat([p[key] for p in parts])[inverse]  # noqa: E731
        attrs = cat("attrs") if parts[0]["attrs"] is not None else None
        scores = [s for p in parts for s in p["scores"]]
        return {"photos": photos, "latent": cat("latent"), "start_images": cat("start_images"),
                "images": cat("images"), "scores": [scores[i] for i in inverse.tolist()],
                "start_kind": parts[0]["start_kind"], "attrs": attrs}
    done = [0]

    def progress(i: int, loss: float) -> None:
        if not args.no_progress and (i % 25 == 0 or i == options.steps):
            print(f"\r  step {i}/{options.steps}  loss {loss:.4f}", end="", file=sys.stderr, flush=True)
            done[0] = i

    result = invert(gen, photos, options, predictor=load_predictor_fn(args.predictor, gen=gen), progress=progress)
    if done[0]:
        print(file=sys.stderr)
    return {"photos": photos, "latent": result.latent, "start_images": result.start_images, "images": result.images,
            "scores": result.scores, "start_kind": result.start_kind, "attrs": result.attrs}


def _identity(args: argparse.Namespace, photos: Any, outputs: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """identity_report of photo -> each output (facegan.inversion), or None and why not."""
    from facegan.inversion import face_check_or_none, identity_report

    check, note = face_check_or_none(not args.no_identity)
    return (identity_report(check, photos, outputs), "") if check is not None else (None, note)


def _print_identity(identity: dict[str, Any] | None, note: str) -> None:
    from facegan.inversion import format_identity

    print(format_identity(identity["summary"]) if identity is not None else f"  {note}")


def cmd_invert(args: argparse.Namespace) -> int:
    import torch

    from facegan.families.loading import load_generator
    from facegan.images import save_grid_png

    out = _check_out(args.out)
    if args.workers < 0:
        raise ConfigError(f"--workers: expected 0 or more, got {args.workers}")
    _options(args)                                   # a bad option fails before anything loads
    gen = load_generator(args.checkpoint, ema=not args.no_ema)
    res = run_inversion(args, gen)
    out.mkdir(parents=True, exist_ok=True)
    n = len(args.photos)
    rows = torch.stack([res["photos"], res["start_images"], res["images"]], dim=1).flatten(0, 1)
    save_grid_png(rows, out / "reconstruction.png", nrow=3)
    torch.save({"latent": res["latent"], "attrs": res["attrs"], "photos": list(map(str, args.photos)),
                "checkpoint": gen.checkpoint}, out / "latents.pt")
    summary = {"checkpoint": gen.checkpoint, "family": gen.family.name, "losses": _options(args).losses,
               "steps": args.steps, "start": res["start_kind"],
               "photos": [{"photo": str(p), **s} for p, s in zip(args.photos, res["scores"])]}
    for key in ("mse", "ssim", "ms_ssim"):
        summary[f"mean_{key}"] = sum(s[key] for s in res["scores"]) / n
    identity, note = _identity(args, res["photos"], {"reconstruction": res["images"]})
    if identity is not None:
        for row, measured in zip(summary["photos"], identity["per_photo"]):
            row.update(face_detected=measured["face_detected"],
                       identity_distance=measured["identity_distance"]["reconstruction"],
                       same_person=measured["same_person"]["reconstruction"])
        summary["identity"] = identity["summary"]
    (out / "scores.json").write_text(json.dumps(summary, indent=1))
    print(f"inverted {n} photo{'s' if n > 1 else ''} with {gen.family.name} ({gen.kimg:.1f} kimg), start: "
          f"{res['start_kind']}, losses {args.loss}: mean MSE {summary['mean_mse']:.4f}, SSIM "
          f"{summary['mean_ssim']:.3f}, MS-SSIM {summary['mean_ms_ssim']:.3f}")
    _print_identity(identity, note)
    print(f"  grid (photo | start | result): {out / 'reconstruction.png'}\n  scores: {out / 'scores.json'}\n"
          f"  latents: {out / 'latents.pt'}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    import torch

    from facegan.families.loading import load_generator
    from facegan.images import save_grid_png
    from facegan.inversion import apply_edit, load_directions, parse_edit

    out = _check_out(args.out, suffix=".png")
    if not (args.set or args.attrs or args.direction):
        raise ConfigError("edit: give what to change: --set CODE=VALUE (InfoGAN codes), --attrs NAME=0|1,... "
                          "(overlay, conditional) or --direction NAME=SCALE (any GAN, after `facegan directions`)")
    _options(args)
    gen = load_generator(args.checkpoint, ema=not args.no_ema)
    edits = [parse_edit(sets=args.set, attrs=args.attrs, directions=args.direction, gen=gen)]
    directions = load_directions(gen.checkpoint) if args.direction else None
    if args.sweep and args.direction:
        from facegan.inversion import Edit

        base = edits[0]
        edits = [Edit(name=f"x{f:g}", directions={k: v * f for k, v in base.directions.items()})
                 for f in (0.5, 1.0, 1.5, 2.0)]
    if directions is not None:                       # unknown names fail before the inversion runs
        missing = [k for e in edits for k in e.directions if k not in directions]
        if missing:
            raise ConfigError(f"--direction: no direction for {missing[0]!r} (stored: {', '.join(sorted(directions))})")
    res = run_inversion(args, gen)
    outputs = {"reconstruction": res["images"]}
    with torch.no_grad():
        for edit in edits:
            latent, attrs = apply_edit(gen, res["latent"], res["attrs"], edit, directions=directions)
            outputs[edit.name] = gen.generate(latent, attrs)
    identity, note = _identity(args, res["photos"], outputs)
    doc: dict[str, Any] = {"checkpoint": gen.checkpoint, "family": gen.family.name, "grid": str(out),
                           "columns": ["photo", *outputs], "photos": []}
    for i, (photo, score) in enumerate(zip(args.photos, res["scores"])):
        doc["photos"].append({"photo": str(photo), **score, **(identity["per_photo"][i] if identity else {})})
    if identity is not None:
        doc["identity"] = identity["summary"]
    grid = torch.stack([res["photos"], *outputs.values()], dim=1).flatten(0, 1)
    save_grid_png(grid, out, nrow=len(outputs) + 1)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}: per photo, the photo, its reconstruction (MS-SSIM "
          f"{sum(s['ms_ssim'] for s in res['scores']) / len(res['scores']):.3f}) and "
          + ", ".join(e.name for e in edits) + f"; scores and identity distances: {out.with_suffix('.json')}")
    _print_identity(identity, note)
    return 0


MAX_DIRECTION_SAMPLES = 1_000_000   # a mean direction settles long before; 10^6 faces take hours on a CPU


def cmd_directions(args: argparse.Namespace) -> int:
    from facegan.families.classifier.scoring import load_classifier
    from facegan.families.loading import load_generator
    from facegan.inversion import find_directions, save_directions

    if not 20 <= args.num_samples <= MAX_DIRECTION_SAMPLES:   # batched, so time, not memory, bounds it
        raise ConfigError(f"--num-samples: expected 20..{MAX_DIRECTION_SAMPLES:,} generated faces, got {args.num_samples}")
    gen = load_generator(args.checkpoint, ema=not args.no_ema)
    classifier = load_classifier(args.classifier)
    if gen.attr_names and list(classifier.attr_names) != gen.attr_names:
        raise ConfigError("--classifier: its attributes are not the generator's shard set's")
    found = find_directions(gen, classifier, num_samples=args.num_samples, seed=args.seed)
    path = save_directions(found, gen.checkpoint)
    print(f"stored {len(found['directions'])} attribute directions with {gen.checkpoint} ({path.name}) from "
          f"{args.num_samples} generated faces read by {classifier.checkpoint}")
    for name, (pos, neg) in sorted(found["counts"].items()):
        print(f"  {name:<22} {pos:6d} with / {neg:6d} without   |direction| {float(found['directions'][name].norm()):.3f}")
    if found["skipped"]:
        print(f"  skipped (fewer than 10 faces on one side): {', '.join(found['skipped'])}")
    return 0


def _inversion_args(p: argparse.ArgumentParser, *, photos: bool = True) -> None:
    if photos:
        p.add_argument("photos", nargs="+", metavar="PHOTO", help="image files of any size (cropped and resized as "
                                                                  "the run's shards were)")
    p.add_argument("--checkpoint", required=True, help="a GAN/VAE checkpoint or run folder (its newest)")
    p.add_argument("--loss", default="mse,ms_ssim", help="mse | ssim | ms_ssim | vgg, comma-separated, optional "
                                                         "weights: mse=1,vgg=0.1 (default mse,ms_ssim)")
    p.add_argument("--vgg-weights", default="", help="local torchvision vgg16 state_dict (for --loss vgg)")
    p.add_argument("--steps", type=int, default=300, help="Adam steps on the latent (default 300)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam rate (default 0.05)")
    p.add_argument("--restarts", type=int, default=8, help="K random starts when the run has no encoder/predictor")
    p.add_argument("--predictor", default="", help="a latent predictor run to start from (seed 002's network)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random starts (default 0)")
    p.add_argument("--workers", type=int, default=0, help="Ray tasks sharing the photos (0: in-process)")
    p.add_argument("--no-ema", action="store_true", help="use the raw generator instead of its EMA")
    p.add_argument("--no-progress", action="store_true", help="no progress line")


def _identity_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-identity", action="store_true",
                   help="skip the dlib descriptor distance photo -> result (measured by default where dlib is "
                        "installed)")


def register(sub: Any) -> None:
    i = sub.add_parser("invert", help="find the latents that redraw real photos (GAN inversion)")
    _inversion_args(i)
    _identity_arg(i)
    i.add_argument("--out", required=True, help="output folder: reconstruction.png, scores.json, latents.pt")
    i.set_defaults(func=cmd_invert)

    e = sub.add_parser("edit", help="invert photos, then change codes, attributes or attribute directions")
    _inversion_args(e)
    _identity_arg(e)
    e.add_argument("--set", action="append", default=[], metavar="CODE=VALUE", help="InfoGAN code, e.g. cat=3, c1=0.8")
    e.add_argument("--attrs", default="", help="overlay/conditional: NAME=0|1 pairs, e.g. Smiling=1,Eyeglasses=1")
    e.add_argument("--direction", action="append", default=[], metavar="NAME=SCALE",
                   help="add SCALE x the attribute's direction (stored by `facegan directions`)")
    e.add_argument("--sweep", action="store_true", help="with --direction: columns at 0.5, 1, 1.5, 2 x the scale")
    e.add_argument("--out", required=True, help="grid PNG: photo | reconstruction | edits")
    e.set_defaults(func=cmd_edit)

    d = sub.add_parser("directions", help="attribute directions in the latent from the classifier's reading of "
                                          "generated faces, stored with the checkpoint")
    d.add_argument("--checkpoint", required=True, help="a GAN checkpoint or run folder (its newest)")
    d.add_argument("--classifier", required=True, help="attribute classifier checkpoint or run folder")
    d.add_argument("--num-samples", type=int, default=5000, help="generated faces (default 5000)")
    d.add_argument("--seed", type=int, default=0, help="seed of the generated faces (default 0)")
    d.add_argument("--no-ema", action="store_true", help="use the raw generator instead of its EMA")
    d.set_defaults(func=cmd_directions)
