"""The `facegan` command line: one module per group of subcommands, each with `register(sub)`.

    facegan shards build shards/synthetic_demo.yaml --out data/shards/demo     # facegan.cli.shards
    facegan train configs/dcgan_demo.yaml [--set train.total_kimg=4] [--no-ray] # facegan.cli.train
    facegan sample --checkpoint runs/dcgan -n 16 --out grid.png
    facegan classifier train configs/classifier_demo.yaml [--no-ray]           # facegan.cli.classifier
    facegan eval --checkpoint runs/dcgan --shards data/shards --classifier runs/classifier   # facegan.cli.eval
    facegan sweep sweeps/dcgan_lr_labels.yaml --check                           # facegan.cli.sweep
    facegan blend a.jpg b.jpg --checkpoint runs/overlay --out blend.png          # facegan.cli.control

Subcommand modules import torch, Ray and the rest only inside their commands, so `facegan --help`
answers at once. A user's mistake (facegan.errors.UserError) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from facegan.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from facegan.cli import classifier, control, eval as eval_cmd, predictor, shards, sweep, train

    parser = argparse.ArgumentParser(prog="facegan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (shards, train, classifier, eval_cmd, sweep, control, predictor):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
