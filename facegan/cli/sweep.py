"""`facegan sweep` and `facegan sweep-report` (registered into the facegan CLI by add_sweep_parsers).

    facegan sweep sweeps/dcgan_lr_labels.yaml [--set budget.max_trials=4 ...] [--resume] [--check]
    facegan sweep-report runs/sweeps/dcgan_lr_labels [--out report.html] [--top 4]

`--set` overrides keys of the sweep file (`budget.max_minutes=30`, `resources.num_workers=2`,
`config.train.total_kimg=50` for the base run config, `space.optim.g_lr.grid=[1e-4]`). The sweep
is validated (every grid point and range bound against the run config) before Ray starts.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep definition YAML (sweeps/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the sweep file, e.g. budget.max_trials=4 or config.train.total_kimg=20")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted sweep in its folder (finished trials are kept)")
    parser.add_argument("--check", action="store_true", help="validate the sweep and list its trials; start nothing")
    parser.add_argument("--config-only", action="store_true",
                        help="with --check: validate the file and every trial config, but open no shard set")
    parser.add_argument("--address", default="", help="Ray cluster to join (default: ray.address, $RAY_ADDRESS, "
                                                      "else a local cluster)")


def register(subparsers: Any) -> None:
    """Register `sweep` and `sweep-report` on the facegan CLI's subparsers."""
    s = subparsers.add_parser("sweep", help="run a hyperparameter sweep (sweeps/*.yaml) on Ray Tune")
    add_sweep_args(s)
    s.set_defaults(func=cmd_sweep)
    r = subparsers.add_parser("sweep-report", help="HTML page and CSV of a sweep's trials")
    r.add_argument("dir", help="the sweep folder (its `out`, default runs/sweeps/NAME)")
    r.add_argument("--out", default="", help="HTML path (default DIR/report.html; trials.csv beside it)")
    r.add_argument("--top", type=int, default=4, help="sample grids of this many best trials")
    r.set_defaults(func=cmd_sweep_report)


def cmd_sweep(args: argparse.Namespace) -> int:
    from facegan.sweeps.spec import load_sweep

    plan = load_sweep(args.sweep, overrides=args.set)
    spec = plan.spec
    print(f"sweep {spec.name}: {spec.family}, {plan.num_trials} trials ({spec.search.algorithm} search, "
          f"{spec.scheduler.kind} scheduler), objective {spec.objective.metric} ({spec.objective.mode}), "
          f"{spec.resources.num_workers} worker(s) per trial -> {plan.out_dir}")
    if args.check:
        if not args.config_only:
            from facegan.launch.tune import preflight_sweep

            preflight_sweep(plan)      # what the run would check: shard sets, resolutions, batch sizes
        for i, point in enumerate(plan.points):
            print(f"  {i:4d}  " + "  ".join(f"{k}={v}" for k, v in point.items()))
        if not plan.points:
            print("  " + "  ".join(f"{k}: {d.kind} {d.values}" for k, d in spec.space.items()))
        print("ok: the sweep is valid" + (" (shard sets not checked: --config-only)" if args.config_only
                                          else " and its shard sets fit it"))
        return 0
    from facegan.launch.tune import run_sweep
    from facegan.sweeps.report import text_table

    summary = run_sweep(plan, resume=args.resume, address=args.address)
    print(text_table(plan.out_dir))
    best = summary.get("best")
    if best:
        print(f"best: trial {best['trial_id']} {spec.objective.metric}={best['last'][spec.objective.metric]:.4g} "
              + json.dumps(best["params"]))
    print(f"report: {summary['report']}  ({summary['num_trials']} trials, {summary['num_errors']} errors, "
          f"{summary['seconds'] / 60:.1f} min)")
    if summary["num_unfinished"]:
        print(f"{summary['num_unfinished']} trials did not finish (interrupted, out of budget or stopped early by "
              f"the scheduler); an interrupted sweep continues with: facegan sweep {args.sweep} --resume")
    return 1 if summary["num_errors"] else 0


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from facegan.sweeps.report import text_table, write_report

    path = write_report(args.dir, out=args.out or None, top=args.top)
    print(text_table(args.dir))
    print(f"wrote {path} and {path.with_name('trials.csv')}")
    return 0
