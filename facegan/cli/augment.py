"""`facegan augment`: real photos -> inverted, edited variants -> a new shard set for training.

    facegan augment data/celeba64 --split train --checkpoint runs/dcgan --variants 4 \\
        --direction Smiling=1.5 --direction Eyeglasses=2 --jitter 0.2 --out data/celeba64_aug
    facegan augment photos/ --checkpoint runs/infogan --variants 3 --set cat=2 --set cat=5 --out data/mine_aug
    facegan augment data/celeba64 --split val --checkpoint runs/dcgan --direction Eyeglasses=1 \\
        --classifier runs/classifier --strengths 1,2,3 --max-identity-distance 0.6 --out data/celeba64_glasses

Variants that are no longer their photo's person (dlib descriptor distance over
--max-identity-distance, default 0.6: dlib's same-person threshold; 0 turns the filter off) are
dropped; with --classifier, each direction edit's strength is searched per photo (the smallest of
--strengths at which the classifier reads the edit's target). The manifest's `identity_filter`
section records every variant's distance and how many were dropped and why.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from facegan.errors import ConfigError

BATCH = 32


def _edits(args: argparse.Namespace, gen: Any) -> list[Any]:
    """One edit per --direction, --attrs and --set flag; with only --jitter, the reconstruction."""
    from facegan.inversion import Edit, parse_edit

    edits = [parse_edit(sets=[], attrs="", directions=[d], gen=gen) for d in args.direction]
    edits += [parse_edit(sets=[], attrs=a, directions=[], gen=gen) for a in args.attrs]
    edits += [parse_edit(sets=[c], attrs="", directions=[], gen=gen) for c in args.set]
    if not edits and args.jitter > 0:
        edits = [Edit(name="jitter")]
    if not edits:
        raise ConfigError("augment: give what to change: --direction NAME=SCALE, --attrs NAME=0|1,..., --set CODE=V "
                          "(each flag is one edit), or --jitter S for latent neighbours")
    return edits


def _identities(text: str) -> set[int] | None:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if not p.lstrip("-").isdigit()]
    if bad:
        raise ConfigError(f"--identities: expected comma-separated integer ids, got {bad[0]!r} in {text!r}")
    return {int(p) for p in parts} or None


def _sources(args: argparse.Namespace, gen: Any, skipped: list[dict[str, str]]) -> tuple[list[Any], str, str]:
    """(sources, their description, the image format for the new shards)."""
    from facegan.augment import folder_sources, shard_sources

    src = Path(args.src)
    if (src / "manifest.json").is_file():
        from facegan.data.stream import ShardSet

        ids = _identities(args.identities)
        splits = [s.strip() for s in args.split.split(",") if s.strip()]
        fmt = ShardSet.open(str(src)).manifest.get("image_ext", "jpg").lstrip(".")
        found = list(shard_sources(str(src), splits=splits, identities=ids, resolution=gen.resolution))
        if not found:
            raise ConfigError(f"{src}: no images in split(s) {args.split}"
                              + (f" of identities {args.identities}" if ids else ""))
        return found, f"{src} ({args.split}{', identities ' + args.identities if ids else ''})", \
            {"jpg": "jpg", "jpeg": "jpg", "png": "png"}.get(fmt, "png")
    if src.is_dir():
        from facegan.metrics.features import IMAGE_SUFFIXES

        paths = sorted(str(p) for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif src.is_file():
        paths = [str(src)]
    else:
        raise ConfigError(f"augment: {src} is neither a shard set (manifest.json), a folder of photos nor a photo")
    if not paths:
        raise ConfigError(f"augment: no .png/.jpg photos in {src}")
    return list(folder_sources(paths, crop=gen.crop, resolution=gen.resolution, skipped=skipped)), str(src), "png"


def _identity_filter(args: argparse.Namespace, gen: Any) -> Any:
    """The IdentityFilter the flags ask for (None with --max-identity-distance 0)."""
    from facegan.augment import IdentityFilter
    from facegan.inversion import FaceCheck

    try:
        strengths = tuple(sorted(float(f) for f in args.strengths.split(",") if f.strip()))
    except ValueError:
        raise ConfigError(f"--strengths: expected comma-separated numbers, got {args.strengths!r}") from None
    if args.max_identity_distance == 0:
        if args.classifier:
            raise ConfigError("--classifier: the strength search is part of the identity filter; it needs "
                              "--max-identity-distance > 0")
        return None
    IdentityFilter(check=FaceCheck(), max_distance=args.max_identity_distance, strengths=strengths)  # validate
    from facegan.metrics.face import load_face_models

    load_face_models()          # FaceModelError (one line: how to install) before anything is inverted
    classifier = None
    if args.classifier:
        from facegan.families.classifier.scoring import load_classifier

        classifier = load_classifier(args.classifier)
        if gen.attr_names and list(classifier.attr_names) != list(gen.attr_names):
            raise ConfigError("--classifier: its attributes are not the generator's shard set's")
    return IdentityFilter(check=FaceCheck(threshold=args.max_identity_distance), max_distance=args.max_identity_distance,
                          classifier=classifier, strengths=strengths if classifier is not None else (1.0,))


def cmd_augment(args: argparse.Namespace) -> int:
    from facegan.augment import (DONE, MAX_VARIANTS, STAGING_SUFFIX, augment_batch, identity_summary, stage,
                                 staging_fingerprint)
    from facegan.cli.invert import _options
    from facegan.data.recipe import ShardRecipe
    from facegan.data.writer import build_shards, make_progress
    from facegan.families.loading import load_generator
    from facegan.inversion import load_directions, load_predictor_fn

    if not 1 <= args.variants <= MAX_VARIANTS:
        raise ConfigError(f"--variants: expected 1..{MAX_VARIANTS}, got {args.variants}")
    if args.workers:
        raise ConfigError("--workers: augment inverts in this process (Ray tasks are for `facegan invert`)")
    if not 0 <= args.jitter <= 10:
        raise ConfigError(f"--jitter: expected 0..10 (latent units), got {args.jitter}")
    from facegan.data.paths import refuse_overlap

    out = Path(args.out)
    if "://" in args.out or args.out.startswith("pipe:"):
        raise ConfigError("--out: augment writes a local (or mounted) folder")
    refuse_overlap(out, out_flag="--out", inputs={"SRC": args.src})
    refuse_overlap(out.with_name(out.name + STAGING_SUFFIX), out_flag="--out's staging folder", inputs={"SRC": args.src})
    _identities(args.identities)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a directory")
    options = _options(args)
    gen = load_generator(args.checkpoint, ema=not args.no_ema)
    edits = _edits(args, gen)
    identity = _identity_filter(args, gen)
    if identity is not None and identity.classifier is not None:
        unknown = [k for e in edits for k in e.target_attrs() if k not in identity.classifier.attr_names]
        if unknown:
            raise ConfigError(f"--classifier: it does not score {unknown[0]!r}")
    directions = load_directions(gen.checkpoint) if any(e.directions for e in edits) else None
    missing = [k for e in edits for k in e.directions if directions is not None and k not in directions]
    if missing:
        raise ConfigError(f"--direction: no direction for {missing[0]!r} (stored: {', '.join(sorted(directions or {}))})")
    skipped: list[dict[str, str]] = []
    sources, described, fmt = _sources(args, gen, skipped)
    staging = out.with_name(out.name + STAGING_SUFFIX)
    fingerprint = staging_fingerprint(checkpoint=gen.checkpoint, edits=edits, variants=args.variants, options=options,
                                      jitter=args.jitter, seed=args.seed, sources=described, identity=identity)
    finger_file = staging / "fingerprint.json"
    if staging.exists() and (not finger_file.is_file()
                             or json.loads(finger_file.read_text()).get("fingerprint") != fingerprint):
        shutil.rmtree(staging)    # another command staged here: start afresh
    staging.mkdir(parents=True, exist_ok=True)
    finger_file.write_text(json.dumps({"fingerprint": fingerprint, "checkpoint": gen.checkpoint, "src": described}))
    attr_names = gen.attr_names
    if not attr_names and (Path(args.src) / "manifest.json").is_file():
        from facegan.data.stream import ShardSet

        attr_names = list(ShardSet.open(args.src).attr_names)
    if attr_names:
        (staging / "attr_names.json").write_text(json.dumps(attr_names))
    todo = [s for s in sources if not (staging / s.key / DONE).is_file()]
    predictor = load_predictor_fn(args.predictor, gen=gen)
    bar = make_progress(total=len(todo), enabled=not args.no_progress and sys.stderr.isatty())
    for i in range(0, len(todo), BATCH):
        batch = todo[i:i + BATCH]
        faces = augment_batch(gen, batch, edits=edits, variants=args.variants, options=options,
                              directions=directions, jitter=args.jitter, seed=args.seed, predictor=predictor,
                              identity=identity)
        for source, variants in zip(batch, faces):
            stage(staging, source, variants, attr_names=attr_names)
        bar.update(len(batch))
    bar.close()
    (staging / "skipped.json").write_text(json.dumps(skipped, indent=1))
    records = {s.key: json.loads((staging / s.key / DONE).read_text()).get("records", []) for s in sources}
    filtered = identity_summary(records, identity)
    if filtered["kept"] == 0:
        raise ConfigError(f"augment: the identity filter dropped all {filtered['variants']} variants ("
                          + ", ".join(f"{k}: {n}" for k, n in filtered["dropped_by_reason"].items() if n)
                          + f"); nothing written to {out}. Loosen --max-identity-distance (0: off), add "
                          "--strengths, or use a better trained generator (every distance is in "
                          f"{staging}/*/{DONE})")
    h, w = gen.resolution
    recipe = ShardRecipe(source="folder", labels_json=True, resolution=[h, w] if h != w else h, crop="none",
                         format=fmt, shard_size=args.shard_size, workers=args.shard_workers, seed=args.seed,
                         min_side=0, max_aspect=1e6,
                         description=f"facegan augment of {described} with {gen.checkpoint}")
    result = build_shards(recipe, root=staging, out=out, progress=not args.no_progress and sys.stderr.isatty(),
                          overwrite=args.overwrite, skipped=skipped)
    m = result.manifest
    _record_in_manifest(out, filtered)
    print(f"augmented {len(sources)} images ({len(sources) - len(todo)} staged by an earlier run) from {described} "
          f"into {m['counts']['total']} variants in {out} (train {m['counts']['train']}, val {m['counts']['val']}, "
          f"test {m['counts']['test']}): {len(edits)} edit(s) {', '.join(e.name for e in edits)}, "
          f"{args.variants} per image")
    if identity is not None:
        why = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in filtered["dropped_by_reason"].items() if n)
        mean = filtered["mean_distance"]
        print(f"  identity filter (dlib distance <= {identity.max_distance:g}): kept {filtered['kept']} of "
              f"{filtered['variants']} variants" + (f", dropped {filtered['dropped']} ({why})" if why else "")
              + (f"; mean distance {mean:.3f}" if mean is not None else "")
              + f"; per variant in {out}/manifest.json (identity_filter)")
    for s in skipped[:10]:
        print(f"  skipped {s['input']}: {s['reason']}")
    if len(skipped) > 10:
        print(f"  ... and {len(skipped) - 10} more (listed in {out / 'manifest.json'})")
    print(f"  check it: facegan shards verify {out}")
    return 0


def _record_in_manifest(out: Path, filtered: dict[str, Any]) -> None:
    """Add the identity filter's section to the new set's manifest (written whole, then renamed)."""
    import os

    from facegan.data.writer import MANIFEST

    path = out / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["identity_filter"] = filtered
    tmp = path.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def register(sub: Any) -> None:
    from facegan.cli.invert import _inversion_args

    a = sub.add_parser("augment", help="invert real photos, edit them, and write the variants as a new shard set")
    _inversion_args(a, photos=False)
    a.add_argument("src", help="a shard set (its --split, optionally --identities), a folder of photos or a photo")
    a.add_argument("--split", default="train", help="shard set source: split(s) to augment, comma-separated "
                                                     "(default train); the variants keep their source's split")
    a.add_argument("--identities", default="", help="shard set source: only these identity ids, comma-separated")
    a.add_argument("--variants", type=int, default=4, help="edited variants per image (default 4)")
    a.add_argument("--direction", action="append", default=[], metavar="NAME=SCALE",
                   help="an edit: add SCALE x the attribute's direction (`facegan directions`); repeatable")
    a.add_argument("--attrs", action="append", default=[], metavar="NAME=0|1,...",
                   help="an edit for overlay/conditional generators: attribute values; repeatable")
    a.add_argument("--set", action="append", default=[], metavar="CODE=VALUE",
                   help="an edit for InfoGAN/InfoBEGAN: a latent code, e.g. cat=3; repeatable")
    a.add_argument("--jitter", type=float, default=0.0,
                   help="std of a seeded latent perturbation per variant (latent units; default 0)")
    a.add_argument("--max-identity-distance", type=float, default=0.6, metavar="D",
                   help="keep a variant only if its dlib face-descriptor distance to its photo is <= D (default "
                        "0.6, dlib's same-person threshold; 0: no filter)")
    a.add_argument("--classifier", default="", help="attribute classifier: search each direction edit's strength "
                                                    "per photo until the classifier reads the target")
    a.add_argument("--strengths", default="0.5,1,1.5,2,3",
                   help="with --classifier: multiples of each edit's scale tried, smallest first (default "
                        "0.5,1,1.5,2,3)")
    a.add_argument("--out", required=True, help="the new shard set's folder (staging beside it: OUT.staging)")
    a.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    a.add_argument("--shard-workers", type=int, default=1, help="processes writing the shards (default 1)")
    a.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that is not this command's")
    a.set_defaults(func=cmd_augment)
