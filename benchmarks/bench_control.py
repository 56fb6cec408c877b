"""Attribute-control accuracy: the report's alpha/beta overlay vs a conditional GAN vs an unconditioned one.

    .venv/bin/python benchmarks/bench_control.py --demo                       # trains all on synthetic faces
    .venv/bin/python benchmarks/bench_control.py --overlay runs/overlay_celeba64 \
        --conditional runs/conditional_celeba64 --unconditioned runs/dcgan_celeba64 \
        --classifier runs/classifier_celeba64 --n 2000 --json control.json

For each generator, faces are drawn for requested attribute rows and a classifier reads their
attributes back; control accuracy is the fraction whose predicted value equals the requested one,
per attribute and averaged over the classifier's scored attributes (facegan.control). Two kinds
of request, both built from the label rows of `--split` of the run's shards:

  data  the rows as they are: realistic combinations at the data's rates. An attribute-blind
        generator already scores high on rare attributes here (asking "no eyeglasses" is easy).
  flip  each row with one scored attribute flipped (cycling through them), and only that entry
        counted: every attribute is asked for both values, against what the rest of the face
        suggests. This is the figure that separates control from chance.

Every generator is compared against an unconditioned DCGAN (`--unconditioned`, if given) and
against its own faces scored on shuffled requests (same faces, requests of other rows). Then the
overlay is swept over an alpha x beta grid at inference (its G was trained at one alpha/beta; the
grid shows how much of the control each pair of blocks carries, alpha = beta = 1 being pure noise).

Use an evaluation classifier other than the one the overlay trained with (`--eval-classifier`)
when there is one; --demo trains two with different seeds.

--demo builds 32 px synthetic shards, trains two classifiers, a DCGAN, a conditional GAN and an
overlay GAN (o from the first classifier) in-process through facegan.loop.train (~10 min on 2
busy cores at the defaults), then runs the comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facegan.config import from_dict  # noqa: E402
from facegan.control import (control_accuracy, flip_requests, format_control,  # noqa: E402
                             load_control_generator as load_generator, with_weights)
from facegan.data.stream import ShardSet, eval_loader  # noqa: E402
from facegan.families import RunConfig  # noqa: E402
from facegan.families.classifier.scoring import load_classifier  # noqa: E402
from facegan.families.loading import Generator, load_generator as load_any_generator  # noqa: E402


def label_rows(shards: str, split: str, n: int) -> torch.Tensor:
    rows = [b["attrs"] for b in eval_loader(ShardSet.open(shards), split=split, batch_size=256)]
    rows_NA = torch.cat(rows)
    return rows_NA.repeat((n + len(rows_NA) - 1) // len(rows_NA), 1)[:n]


def conditioned_fn(bundle: Generator, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return lambda rows: bundle.generate(bundle.steps.latent(len(rows), generator=gen), rows)


def unconditioned_fn(path: str, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    uncond = load_any_generator(path)
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def fn(rows: torch.Tensor) -> torch.Tensor:
        return uncond.generate(uncond.steps.latent(len(rows), generator=gen))
    return fn


def compare(args: argparse.Namespace) -> dict:
    clf = load_classifier(args.eval_classifier or args.classifier)
    gens: dict[str, Generator] = {}
    if args.overlay:
        gens["overlay"] = load_generator(args.overlay)
    if args.conditional:
        gens["conditional"] = load_generator(args.conditional)
    if not gens:
        raise SystemExit("give --overlay and/or --conditional checkpoints (or --demo)")
    first = next(iter(gens.values()))
    shards = args.shards or json.loads((Path(first.checkpoint) / "meta.json").read_text())["config"]["data"]["shards"]
    names = first.attr_names
    scored = list(getattr(clf, "scored_attrs", names))
    base = label_rows(shards, args.split, args.n)
    flip_req, flip_mask = flip_requests(base, [names.index(a) for a in scored])
    requests = {"data": ((base > 0.5).float(), None), "flip": (flip_req, flip_mask)}
    # Rebuilt per run, so every generator is compared with the very same unconditioned faces.
    unc = (lambda: unconditioned_fn(args.unconditioned, args.seed)) if args.unconditioned else (lambda: None)
    results: dict = {"shards": shards, "split": args.split, "n": args.n, "classifier": clf.checkpoint, "runs": {}}
    for kind, (req, mask) in requests.items():
        for name, bundle in gens.items():
            t0 = time.perf_counter()
            r = control_accuracy(conditioned_fn(bundle, args.seed), clf, req, attr_names=names, mask_NA=mask,
                                 unconditioned=unc(), seed=args.seed)
            r["seconds"] = time.perf_counter() - t0
            results["runs"][f"{name}/{kind}"] = r
            print(format_control(r, title=f"== {name} ({bundle.kimg:.0f} kimg), {kind} requests"))
            print()
    if "overlay" in gens:
        grid = [float(v) for v in args.grid.split(",")]
        req, mask = requests["flip"]
        sweep = {}
        print("== overlay alpha x beta sweep at inference (flip requests): mean control accuracy")
        print("alpha\\beta " + " ".join(f"{b:6.2f}" for b in grid))
        for a in grid:
            row = []
            for b in grid:
                r = control_accuracy(conditioned_fn(with_weights(gens["overlay"], alpha=a, beta=b), args.seed), clf,
                                     req, attr_names=names, mask_NA=mask, seed=args.seed)
                sweep[f"{a:g},{b:g}"] = r["mean_controlled"]
                row.append(r["mean_controlled"])
            print(f"{a:10.2f} " + " ".join(f"{v:6.3f}" for v in row))
        results["overlay_sweep"] = sweep
    print("\nsummary (mean control accuracy; baseline in brackets):")
    for key, r in results["runs"].items():
        print(f"  {key:<20} {r['mean_controlled']:.3f}  [{r['mean_unconditioned']:.3f}, {r['baseline']}]  "
              f"lift {r['mean_lift']:+.3f}")
    return results


def train_demo(out: Path, *, kimg: float, classifier_kimg: float, count: int) -> dict[str, str]:
    """Synthetic 32 px shards, two classifiers and three GANs, through facegan's own loops."""
    from facegan.data.recipe import ShardRecipe
    from facegan.data.writer import build_shards
    from facegan.loop import train

    shards = out / "shards"
    if not (shards / "manifest.json").is_file():
        build_shards(from_dict(ShardRecipe, {"source": "synthetic", "count": count, "resolution": 32,
                                             "shard_size": 250, "workers": 2, "seed": 0}),
                     root=None, out=shards, progress=False)
    common_train = {"num_threads": 2, "tick_kimg": max(kimg / 4, 0.5)}
    paths = {}
    for name, seed in (("classifier", 0), ("eval_classifier", 1)):
        run = out / name
        if not (run / "checkpoints").is_dir():
            train(from_dict(RunConfig, {
                "data": {"shards": str(shards), "batch_size": 32, "num_workers": 1},
                "model": {"family": "classifier", "arch": "report_cnn", "resolution": 32, "dense_units": 256},
                "train": {"total_kimg": classifier_kimg, "checkpoint_kimg": classifier_kimg, "seed": seed,
                          "out_dir": str(run), **common_train},
                "eval": {"splits": ["val"]}, "wandb": {"enabled": False}}))
        paths[name] = str(run)
    for family in ("dcgan", "conditional", "overlay"):
        run = out / family
        if not (run / "checkpoints").is_dir():
            cfg = from_dict(RunConfig, {
                "data": {"shards": str(shards), "batch_size": 32, "num_workers": 1},
                "model": {"family": family, "resolution": 32, "z_dim": 160 if family == "overlay" else 100,
                          "base_channels": 32, "d_dropout": 0.3},
                "optim": {"g_lr": 4e-4, "d_lr": 2e-4},
                "gan": {"label_flip": 0.05, **({"alpha": 0.6, "beta": 0.8, "attr_source": "classifier",
                                                 "classifier": paths["classifier"]} if family == "overlay" else {})},
                "train": {"total_kimg": kimg, "checkpoint_kimg": kimg, "ema_kimg": 1, "grid_size": 16,
                          "out_dir": str(run), **common_train},
                "wandb": {"enabled": False}})
            t0 = time.perf_counter()
            train(cfg)
            print(f"trained {family} for {kimg} kimg in {time.perf_counter() - t0:.0f} s", flush=True)
        paths[family] = str(run)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--overlay")
    p.add_argument("--conditional")
    p.add_argument("--unconditioned", help="a dcgan checkpoint trained on the same shards")
    p.add_argument("--classifier", help="attribute classifier that reads the faces back")
    p.add_argument("--eval-classifier", help="use this classifier to score instead of --classifier")
    p.add_argument("--shards", help="default: the overlay (or conditional) run's shards")
    p.add_argument("--split", default="val")
    p.add_argument("--n", type=int, default=1000, help="faces per generator and request kind")
    p.add_argument("--grid", default="0,0.2,0.4,0.6,0.8,1", help="alpha and beta values of the sweep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write all results here")
    p.add_argument("--demo", action="store_true", help="train everything on synthetic faces first")
    p.add_argument("--demo-dir", default="demo_out/bench_control")
    p.add_argument("--demo-kimg", type=float, default=30.0)
    p.add_argument("--demo-count", type=int, default=3000)
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.demo:
        paths = train_demo(Path(args.demo_dir), kimg=args.demo_kimg, classifier_kimg=10.0, count=args.demo_count)
        args.overlay, args.conditional, args.unconditioned = paths["overlay"], paths["conditional"], paths["dcgan"]
        args.classifier, args.eval_classifier = paths["classifier"], paths["eval_classifier"]
    if not args.classifier:
        raise SystemExit("--classifier is required (or --demo)")
    results = compare(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
