"""`facegan classifier train|eval`: face-attribute classifiers.

    facegan classifier train configs/classifier_demo.yaml [--set k=v ...] [--no-ray]
    facegan classifier eval --checkpoint demo_out/classifier --shards demo_out/shards --split test
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def cmd_classifier_train(args: argparse.Namespace) -> int:
    from facegan.checkpoint import list_checkpoints
    from facegan.cli.train import run, wandb_lines
    from facegan.families import load_run_config
    from facegan.families.classifier.scoring import EVAL_JSON, format_table

    cfg = load_run_config(args.config, args.set, default_family="classifier")
    metrics, wandb_dir = run(cfg, no_ray=args.no_ray, progress=not args.no_progress, overwrite=args.overwrite)
    out = Path(cfg.train.out_dir)
    ckpts = list_checkpoints(out / "checkpoints")
    print(f"trained classifier {cfg.model.arch} to {metrics.get('kimg', 0):.1f} kimg "
          f"({metrics.get('img_per_sec', 0):.0f} img/s in the last tick)")
    print(f"  checkpoint:   {ckpts[-1] if ckpts else '(none)'}")
    print(f"  evaluation:   {out / EVAL_JSON}   (per step: {out / 'losses.jsonl'})")
    for line in wandb_lines(wandb_dir):
        print(line)
    evaluation = out / EVAL_JSON
    if evaluation.is_file():  # rank 0 wrote it; on a multi-node cluster it may be on another machine
        for result in json.loads(evaluation.read_text())["splits"].values():
            print()
            print(format_table(result))
    return 0


def cmd_classifier_eval(args: argparse.Namespace) -> int:
    from facegan.data.paths import output_file
    from facegan.families.classifier.scoring import evaluate_classifier, format_table, load_classifier

    if args.json:
        output_file(args.json, flag="--json", suffix=".json")
    model = load_classifier(args.checkpoint)
    result = evaluate_classifier(model, args.shards, args.split, batch_size=args.batch_size)
    result["checkpoint"] = model.checkpoint
    print(format_table(result))
    out = Path(args.json) if args.json else Path(model.checkpoint) / f"eval_{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0



def register(sub: Any) -> None:
    c = sub.add_parser("classifier", help="train and evaluate face-attribute classifiers")
    csub = c.add_subparsers(dest="classifier_command", required=True)
    ct = csub.add_parser("train", help="train an attribute classifier (Ray Train DDP, or in-process)")
    ct.add_argument("config", help="classifier config YAML (configs/classifier_*.yaml)")
    ct.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set model.arch=resnet18")
    ct.add_argument("--no-ray", action="store_true", help="run the loop in this process (one rank)")
    ct.add_argument("--no-progress", action="store_true", help="no progress line (log lines with -v instead)")
    ct.add_argument("--overwrite", action="store_true", help="start afresh in a train.out_dir that holds an earlier "
                                                            "run (its checkpoints and losses are removed)")
    ct.set_defaults(func=cmd_classifier_train)
    ce = csub.add_parser("eval", help="per-attribute accuracy against the majority baseline")
    ce.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run folder (its newest)")
    ce.add_argument("--shards", required=True, help="shard set; its train split gives the majority baseline")
    ce.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to score (default test)")
    ce.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    ce.add_argument("--json", help="write the result here (default: <checkpoint>/eval_<split>.json)")
    ce.set_defaults(func=cmd_classifier_eval)

