"""What GAN inversion and edits do to real photos, measured with the attribute classifier.

    .venv/bin/python benchmarks/bench_augment.py --checkpoint runs/dcgan_celeba64 --classifier runs/classifier \\
        --shards data/celeba64 --split test --n 32 --losses mse,ssim,ms_ssim --edit Smiling --edit Eyeglasses

For `--n` photos of a shard set's split:
1. reconstruction quality per loss: each loss (and `all`, their sum) inverts the photos; mean MSE, SSIM and
   MS-SSIM of the reconstructions (the VGG loss too when `--vgg-weights` names a local vgg16 file);
2. attribute directions (`facegan directions`, computed and stored if the checkpoint has none);
3. per edited attribute, the classifier's change rate: among reconstructions read *without* the
   attribute, the share read *with* it after adding `--scale` x its direction (and the reverse
   for reconstructions with it, subtracting) — against the rate at which the attribute appears
   with a random direction of the same length (the baseline an edit must beat);
4. identity preservation in the classifier's penultimate features: the mean distance between a
   photo and its edits, against the mean distance between photos of the same identity and of
   different identities (an edit should stay nearer its source than another person is);
5. an edit grid (photo | reconstruction | edits) of the first 4 photos.

Prints a table and writes JSON. Baselines are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facegan.augment import shard_sources  # noqa: E402
from facegan.families.classifier.scoring import attribute_probs, load_classifier  # noqa: E402
from facegan.families.loading import load_generator  # noqa: E402
from facegan.images import save_grid_png  # noqa: E402
from facegan.inversion import (DIRECTIONS_FILE, InvertOptions, find_directions, invert, load_directions,  # noqa: E402
                               parse_losses, save_directions)


def features(classifier: torch.nn.Module, img: torch.Tensor) -> torch.Tensor:
    res = classifier.resolution
    if img.shape[-1] != res:
        img = torch.nn.functional.interpolate(img, size=(res, res), mode="bilinear", antialias=True)
    with torch.no_grad():
        return classifier.features(img)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="GAN checkpoint or run folder")
    ap.add_argument("--classifier", required=True, help="attribute classifier checkpoint or run folder")
    ap.add_argument("--shards", required=True, help="shard set with the photos (identity labels for step 4)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=32, help="photos")
    ap.add_argument("--losses", default="mse,ssim,ms_ssim", help="losses to compare, comma-separated")
    ap.add_argument("--vgg-weights", default="", help="local torchvision vgg16 state_dict (adds the vgg loss)")
    ap.add_argument("--edit", action="append", default=[], help="attribute to edit (repeatable)")
    ap.add_argument("--scale", type=float, default=2.0, help="multiple of the direction added (default 2)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--directions-samples", type=int, default=5000)
    ap.add_argument("--out", default="bench_augment", help="folder for the JSON and the grid")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = load_generator(args.checkpoint)
    clf = load_classifier(args.classifier)
    sources = list(shard_sources(args.shards, splits=[args.split], resolution=gen.resolution))[:args.n]
    photos = torch.stack([s.image for s in sources])
    ids = [s.labels.get("identity", -1) for s in sources]
    report: dict = {"checkpoint": gen.checkpoint, "classifier": clf.checkpoint, "n": len(sources), "steps": args.steps}

    # 1. reconstruction per loss
    names = [n for n in args.losses.split(",") if n]
    if args.vgg_weights:
        names.append("vgg")
    recon = {}
    best = None
    for name in names + ["all"]:
        losses = parse_losses(",".join(names) if name == "all" else name)
        t0 = time.perf_counter()
        res = invert(gen, photos, InvertOptions(losses=losses, steps=args.steps, vgg_weights=args.vgg_weights))
        mean = {k: sum(s[k] for s in res.scores) / len(res.scores) for k in ("mse", "ssim", "ms_ssim")}
        recon[name] = dict(mean, seconds=time.perf_counter() - t0, start=res.start_kind)
        print(f"loss {name:<10} MSE {mean['mse']:.4f}  SSIM {mean['ssim']:.3f}  MS-SSIM {mean['ms_ssim']:.3f}  "
              f"({recon[name]['seconds']:.0f} s)", flush=True)
        if best is None or mean["ms_ssim"] > best[1]:
            best = (name, mean["ms_ssim"], res)
    report["reconstruction"] = recon
    assert best is not None
    inv = best[2]
    report["edits_use_loss"] = best[0]

    # 2. directions
    if not (Path(gen.checkpoint) / DIRECTIONS_FILE).is_file():
        save_directions(find_directions(gen, clf, num_samples=args.directions_samples), gen.checkpoint)
    directions = load_directions(gen.checkpoint)

    # 3. change rates, 4. identity distances
    with torch.no_grad():
        base_p = attribute_probs(clf, inv.images)
        f_photo, f_recon = features(clf, photos), features(clf, inv.images)
    gen_rand = torch.Generator().manual_seed(0)
    rows, edit_cols, edit_feats = {}, [], []
    for attr in args.edit or ["Smiling"]:
        if attr not in directions:
            print(f"no direction for {attr} (stored: {', '.join(sorted(directions))})")
            continue
        j = clf.attr_names.index(attr)
        had = base_p[:, j] > 0.5
        d = directions[attr]
        sign = torch.where(had, -1.0, 1.0)[:, None]
        with torch.no_grad():
            edited = gen.generate(inv.latent + args.scale * sign * d, inv.attrs)
            rand_dir = torch.randn(d.shape, generator=gen_rand)
            rand_dir = rand_dir / rand_dir.norm() * d.norm()
            random_edit = gen.generate(inv.latent + args.scale * sign * rand_dir, inv.attrs)
            after = attribute_probs(clf, edited)[:, j] > 0.5
            after_rand = attribute_probs(clf, random_edit)[:, j] > 0.5
            f_edit = features(clf, edited)
        changed = (after != had).float().mean().item()
        changed_rand = (after_rand != had).float().mean().item()
        add = (~had).sum().item()
        rows[attr] = {"change_rate": changed, "random_direction_change_rate": changed_rand,
                      "gained_when_added": float((after & ~had).sum() / max(add, 1)), "asked_to_add": int(add),
                      "lost_when_removed": float((~after & had).sum() / max(int(had.sum()), 1)),
                      "asked_to_remove": int(had.sum()),
                      "feature_distance_photo_to_edit": float((f_edit - f_photo).norm(dim=1).mean())}
        edit_cols.append(edited)
        edit_feats.append(f_edit)
        print(f"edit {attr:<12} change rate {changed:.2f} (random direction {changed_rand:.2f}); added "
              f"{rows[attr]['gained_when_added']:.2f} of {add}, removed {rows[attr]['lost_when_removed']:.2f} of "
              f"{int(had.sum())}", flush=True)
    report["edits"] = rows
    dist = torch.cdist(f_photo, f_photo)
    same = torch.tensor([[a == b and a != -1 for b in ids] for a in ids]) & ~torch.eye(len(ids), dtype=torch.bool)
    diff = torch.tensor([[a != b for b in ids] for a in ids])
    report["identity"] = {
        "photo_to_reconstruction": float((f_recon - f_photo).norm(dim=1).mean()),
        "photo_to_edits": float(sum((f - f_photo).norm(dim=1).mean() for f in edit_feats) / max(len(edit_feats), 1)),
        "same_identity_photos": float(dist[same].mean()) if same.any() else float("nan"),
        "different_identity_photos": float(dist[diff].mean()) if diff.any() else float("nan"),
    }
    idr = report["identity"]
    print(f"identity (classifier features): photo->edit {idr['photo_to_edits']:.3f}, photo->reconstruction "
          f"{idr['photo_to_reconstruction']:.3f}, same person {idr['same_identity_photos']:.3f}, different people "
          f"{idr['different_identity_photos']:.3f}")
    grid = torch.stack([photos[:4], inv.images[:4], *[c[:4] for c in edit_cols]], dim=1).flatten(0, 1)
    save_grid_png(grid, out / "edit_grid.png", nrow=2 + len(edit_cols))
    (out / "bench_augment.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'bench_augment.json'} and {out / 'edit_grid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
