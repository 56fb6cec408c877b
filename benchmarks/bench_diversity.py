"""Diversity learning and adaptive D noise, on and off, at the same training budget: diversity,
quality, memorisation and the collapse alarm of the progressive family (seed 004).

    # train the variants from one config at one budget (in-process, one after the other), then score them
    .venv/bin/python benchmarks/bench_diversity.py --config configs/progressive_utkface64.yaml \
        --shards data/utkface64 --classifier runs/classifier_celeba64 --out runs/bench_diversity \
        --variants div_on,div_off,noise_off --set train.total_kimg=30 --set train.num_threads=2
    # score runs trained elsewhere (e.g. two background `facegan train` runs)
    .venv/bin/python benchmarks/bench_diversity.py --shards data/utkface64 --classifier runs/classifier_celeba64 \
        --runs div_on=runs/p64_div_on div_off=runs/p64_div_off --out runs/bench_diversity

Variants: div_on (the config as is: diversity learning and adaptive noise on), div_off
(gan.diversity=false), noise_off (gan.adaptive_noise=false: eps stays gan.noise_init), both_off.
A rerun continues unfinished variants from their last checkpoint (train.resume=latest_or_fresh).

Scores (facegan.evaluation.offline.evaluate, the same as `facegan eval`): ms_ssim (mean pairwise
MS-SSIM of generated pairs, lower is more diverse) next to ms_ssim_real, the collapse alarm
ms_ssim_alarm, precision/recall (k-NN manifolds), fid_attr/kid_attr and memorisation, all in the
features of facegan's attribute classifier (`--classifier`: for UTKFace runs, one trained on
CelebA shards, e.g. `facegan classifier train configs/classifier_celeba64.yaml`; UTKFace has no
attribute labels to train one on): a face-attribute feature space, not Inception, so fid_attr is
comparable only within this table. The real (held-out test split: the floor) and random (faceless)
baselines are scored alongside. From each run's log: the last tick's div/pair_dist (mean |x_i - x_j|
of a training batch's fakes), noise/eps and D's rating gap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from facegan.evaluation.offline import EvalRequest, evaluate, format_table  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "div_on": [],
    "div_off": ["gan.diversity=false"],
    "noise_off": ["gan.adaptive_noise=false"],
    "both_off": ["gan.diversity=false", "gan.adaptive_noise=false"],
}
LOG_KEYS = ("kimg", "div/pair_dist", "noise/eps", "noise/gap", "progressive/resolution")


def train_variant(config: str, overrides: list[str], out: Path) -> float:
    """Train one variant in-process (resuming an unfinished one); returns the seconds it took."""
    from facegan.families import load_run_config
    from facegan.loop import train

    cfg = load_run_config(config, [*overrides, f"train.out_dir={out}", "train.resume=latest_or_fresh",
                                   "wandb.enabled=false"])
    t0 = time.perf_counter()
    train(cfg)
    return time.perf_counter() - t0


def last_tick(path: Path, kimg: float) -> dict[str, float]:
    """The logged tick at `kimg` (the checkpoint's) of a run folder or of a checkpoint inside one."""
    run = path if (path / "losses.jsonl").is_file() else path.parent.parent
    if not (run / "losses.jsonl").is_file():
        return {}
    from facegan.stats import read_log

    rows = read_log(run / "losses.jsonl")
    ticks = [r for r in rows if r.get("kind") == "tick" and r.get("kimg", 0) <= kimg + 1e-9]
    return {k: ticks[-1][k] for k in LOG_KEYS if ticks and k in ticks[-1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", required=True, help="the real shard set the runs trained on")
    ap.add_argument("--classifier", required=True, help="attribute classifier checkpoint or run folder (features)")
    ap.add_argument("--out", required=True, help="folder for trained variants and bench_diversity.json")
    ap.add_argument("--config", help="run config to train the variants from (with --variants)")
    ap.add_argument("--variants", default="div_on,div_off", help=f"comma-separated, of {list(VARIANTS)}")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="key=value for every variant")
    ap.add_argument("--runs", nargs="*", default=[],
                    help="NAME=RUN_OR_CHECKPOINT_FOLDER: score existing runs (their latest checkpoint) instead of training")
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--num-real", type=int, default=1000)
    ap.add_argument("--ms-ssim-pairs", type=int, default=500)
    args = ap.parse_args(argv)

    out = Path(args.out)
    runs: dict[str, Path] = {}
    train_seconds: dict[str, float] = {}
    if args.runs:
        for item in args.runs:
            name, _, path = item.partition("=")
            if not path:
                ap.error(f"--runs expects NAME=RUN_FOLDER, got {item!r}")
            runs[name] = Path(path)
    else:
        if not args.config:
            ap.error("give --config (to train the variants) or --runs")
        names = [v for v in args.variants.split(",") if v]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
        for name in names:
            runs[name] = out / name
            train_seconds[name] = train_variant(args.config, [f"data.shards={args.shards}", *args.overrides,
                                                              *VARIANTS[name]], runs[name])

    common = dict(shards=args.shards, classifier=args.classifier, num_samples=args.num_samples,
                  num_real=args.num_real, ms_ssim_pairs=args.ms_ssim_pairs)
    results, logs = [], {}
    for name, run in runs.items():
        result = evaluate(EvalRequest(checkpoint=str(run), **common))
        result["source"] = f"{name} ({result['kimg']:.1f} kimg)"
        results.append(result)
        logs[name] = last_tick(run, float(result["kimg"]))
    for baseline in ("real", "random"):
        result = evaluate(EvalRequest(baseline=baseline, **{**common, "num_samples": min(args.num_samples, 384)}))
        result["source"] = f"baseline {baseline}"
        results.append(result)

    print("Scores in the attribute classifier's features (" + args.classifier + "):")
    print(format_table(results))
    print("\nFrom the runs' last ticks:")
    print(f"{'run':<12}" + "".join(f"{k:>24}" for k in LOG_KEYS))
    for name, row in logs.items():
        print(f"{name:<12}" + "".join(f"{row.get(k, float('nan')):>24.4g}" for k in LOG_KEYS))
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"features": f"attribute classifier {args.classifier}", "results": results,
                           "last_tick": logs, "train_seconds": train_seconds}
    (out / "bench_diversity.json").write_text(json.dumps(doc, indent=1, default=str))
    print(f"\nwrote {out / 'bench_diversity.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
