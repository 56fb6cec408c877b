"""Data-efficient training on few real faces: the same family and images-seen budget with no
augmentation, DiffAugment and ADA, trained and then compared from the runs' own per-tick metrics.

    # the shard sets: all 2,160 train faces of the CelebA sample, and a 500-face subset of them
    facegan shards build shards/celeba64.yaml --root ../shared/data/celeba_sample --out data/celeba64
    facegan shards build shards/celeba64.yaml --root ../shared/data/celeba_sample --out data/celeba64_500 \\
        --set train_limit=500
    # train the grid (2 runs at a time, one torch thread each), then report
    .venv/bin/python benchmarks/bench_data_efficiency.py run --out runs/dataeff --classifier runs/classifier \\
        --arm dcgan500_none=configs/dcgan_celeba64.yaml:data/celeba64_500:60 \\
        --arm dcgan500_diffaug=configs/dcgan_celeba64.yaml:data/celeba64_500:60:augment.kind=diffaugment \\
        --arm dcgan500_ada=configs/dcgan_celeba64.yaml:data/celeba64_500:60:augment.kind=ada,augment.speed_kimg=20
    .venv/bin/python benchmarks/bench_data_efficiency.py report runs/dataeff/* --json dataeff.json --plot dataeff.png

An arm is NAME=CONFIG:SHARDS:KIMG[:KEY=VALUE,...]; every arm gets the same periodic evaluation
(`eval.every_kimg`, fid_attr/kid_attr and the memorisation ratio in the attribute classifier's
features against the val split, 1000 EMA samples), bf16 autocast + channels_last, the same seed.

`report` reads each run's losses.jsonl and prints, per run: the metric at every evaluation, its
best value and where, the last value and last/best (an un-augmented D that overfits shows the
metric turning back up: last/best > 1), the memorisation ratio at the end (nearest-train over
nearest-held-out distance of generated faces; below 1 = closer to the training faces than to
unseen ones), ADA's p over time, and each run's last metric / the un-augmented run's of its group
(runs named GROUP_none, GROUP_<kind>): the ratio against the baseline measured in the same grid.
Face-identity scores of the final generators come from `facegan compare --face on` on the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FACEGAN = [str(Path(sys.executable).parent / "facegan")]


def parse_arm(text: str) -> tuple[str, list[str]]:
    """NAME=CONFIG:SHARDS:KIMG[:K=V,...] -> (name, `facegan train` arguments)."""
    try:
        name, spec = text.split("=", 1)
        parts = spec.split(":", 3)
        config, shards, kimg = parts[:3]
        float(kimg)
    except ValueError:
        raise SystemExit(f"error: --arm {text!r}: expected NAME=CONFIG:SHARDS:KIMG[:KEY=VALUE,...]") from None
    sets = [f"data.shards={shards}", f"train.total_kimg={kimg}"]
    if len(parts) == 4 and parts[3]:
        sets += parts[3].split(",")
    return name, [config, *[a for s in sets for a in ("--set", s)]]


def run_grid(args: argparse.Namespace) -> int:
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    common = {"data.num_workers": 1, "train.tick_kimg": args.tick_kimg, "train.checkpoint_kimg": 20,
              "train.precision": "bf16", "train.channels_last": "true", "train.num_threads": args.threads,
              "train.grid_size": 36, "wandb.enabled": "false", "eval.every_kimg": args.eval_kimg,
              "eval.features": "attr", "eval.classifier": args.classifier, "eval.metrics": "[fid,kid,memorisation]",
              "eval.num_samples": 1000, "eval.num_real": 2000}
    arms = [parse_arm(a) for a in args.arm]

    def one(arm: tuple[str, list[str]]) -> tuple[str, int]:
        name, train_args = arm
        cmd = [*FACEGAN, "train", train_args[0], "--no-ray", "--no-progress", "--overwrite",
               *[a for k, v in common.items() for a in ("--set", f"{k}={v}")], *train_args[1:],
               "--set", f"train.out_dir={out / name}"]
        with open(out / "logs" / f"{name}.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "WANDB_MODE": "offline"}).returncode
        print(f"{name}: exit {rc}", flush=True)
        return name, rc

    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(one, arms))
    return max(rc for _, rc in results)


def summarise(run: Path, metric: str) -> dict[str, Any]:
    from facegan.stats import read_log

    ticks = [r for r in read_log(run / "losses.jsonl") if r.get("kind") == "tick"]
    evals = [(r["kimg"], r[metric]) for r in ticks if metric in r]
    if not evals:
        raise SystemExit(f"error: {run}/losses.jsonl: no tick reports {metric} (was eval.every_kimg set?)")
    best_kimg, best = min(evals, key=lambda e: e[1])
    last_tick = [r for r in ticks if metric in r][-1]
    mem_key = next((k for k in last_tick if k.startswith("memorisation_ratio")), None)
    p = [(r["kimg"], r["augment_p"]) for r in ticks if "augment_p" in r]
    return {"run": run.name, "kimg": ticks[-1]["kimg"], "evals": evals, "best": best, "best_kimg": best_kimg,
            "last": evals[-1][1], "last_over_best": evals[-1][1] / best,
            "memorisation_ratio": last_tick.get(mem_key) if mem_key else None,
            "augment_p": p, "img_per_sec": sum(r["img_per_sec"] for r in ticks) / len(ticks)}


def report(args: argparse.Namespace) -> int:
    runs = [summarise(Path(r), args.metric) for r in args.runs if (Path(r) / "losses.jsonl").is_file()]
    if not runs:
        raise SystemExit("error: no run folder with a losses.jsonl among the arguments")
    base = {r["run"].rsplit("_", 1)[0]: r for r in runs if r["run"].endswith("_none")}
    print(f"{'run':<22} {'kimg':>6} {'best':>8} {'@kimg':>6} {'last':>8} {'last/best':>9} {'vs none':>8} "
          f"{'memor.':>7} {'ADA p (end)':>11} {'img/s':>6}")
    for r in runs:
        b = base.get(r["run"].rsplit("_", 1)[0])
        r["last_vs_none"] = r["last"] / b["last"] if b else None
        vs = f"{r['last_vs_none']:.3f}" if b else "-"
        mem = f"{r['memorisation_ratio']:.3f}" if r["memorisation_ratio"] is not None else "-"
        p = f"{r['augment_p'][-1][1]:.3f}" if r["augment_p"] else "-"
        print(f"{r['run']:<22} {r['kimg']:>6.1f} {r['best']:>8.2f} {r['best_kimg']:>6.1f} {r['last']:>8.2f} "
              f"{r['last_over_best']:>9.3f} {vs:>8} {mem:>7} {p:>11} {r['img_per_sec']:>6.1f}")
    print(f"\n{args.metric} per evaluation (kimg: value):")
    for r in runs:
        print(f"  {r['run']:<22} " + "  ".join(f"{k:.0f}:{v:.1f}" for k, v in r["evals"]))
    for r in runs:
        if r["augment_p"]:
            pts = r["augment_p"][:: max(1, len(r["augment_p"]) // 10)]
            print(f"  ADA p {r['run']:<16} " + "  ".join(f"{k:.0f}:{v:.3f}" for k, v in pts))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (ax, axp) = plt.subplots(1, 2, figsize=(12, 4.5))
        for r in runs:
            ax.plot(*zip(*r["evals"]), marker=".", label=r["run"])
            if r["augment_p"]:
                axp.plot(*zip(*r["augment_p"]), label=r["run"])
        ax.set(xlabel="kimg", ylabel=args.metric, title=f"{args.metric} per evaluation (lower is better)")
        ax.legend(fontsize=7)
        axp.set(xlabel="kimg", ylabel="p", title="ADA's augmentation probability")
        if axp.lines:
            axp.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the arms")
    r.add_argument("--out", required=True, help="folder of the runs (one per arm) and their logs")
    r.add_argument("--classifier", required=True, help="attribute classifier checkpoint (fid_attr's features)")
    r.add_argument("--arm", action="append", required=True, help="NAME=CONFIG:SHARDS:KIMG[:KEY=VALUE,...]")
    r.add_argument("--parallel", type=int, default=2, help="runs at a time")
    r.add_argument("--threads", type=int, default=1, help="torch threads per run")
    r.add_argument("--tick-kimg", type=float, default=3.0)
    r.add_argument("--eval-kimg", type=float, default=6.0)
    s = sub.add_parser("report", help="summarise run folders")
    s.add_argument("runs", nargs="+")
    s.add_argument("--metric", default="fid_attr")
    s.add_argument("--json", default="")
    s.add_argument("--plot", default="", help="PNG of the metric per evaluation and ADA's p")
    args = ap.parse_args()
    if args.cmd == "run":
        if not 1 <= args.parallel <= (os.cpu_count() or 1) * 4:
            raise SystemExit(f"error: --parallel: expected 1..{(os.cpu_count() or 1) * 4}, got {args.parallel}")
        return run_grid(args)
    return report(args)


if __name__ == "__main__":
    raise SystemExit(main())
