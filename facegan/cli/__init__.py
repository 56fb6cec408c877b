"""facegan: face-generating models trained on WebDataset shards, in-process or on Ray Train.

examples:
  shards:      facegan shards build shards/synthetic_demo.yaml --out demo_out/shards
               facegan shards verify demo_out/shards
  training:    facegan train configs/dcgan_demo.yaml --set data.shards=demo_out/shards [--no-ray]
               facegan sample --checkpoint demo_out/run -n 16 --out grid.png
  classifier:  facegan classifier train configs/classifier_demo.yaml --no-ray
  predictor:   facegan predictor train --checkpoint runs/infogan --no-ray
  evaluation:  facegan eval --checkpoint demo_out/run --shards demo_out/shards --classifier demo_out/classifier
               facegan compare runs/dcgan runs/wgangp runs/vae --shards data/celeba64 --classifier runs/clf --out c.html
  sweeps:      facegan sweep sweeps/dcgan_lr_labels.yaml --check ; facegan sweep-report runs/sweeps/NAME
  control:     facegan generate --checkpoint runs/overlay --attrs "Smiling=1,Male=0" --out g.png
               facegan blend a.jpg b.jpg --checkpoint runs/overlay --out blend.png
  inversion:   facegan invert a.jpg --checkpoint runs/dcgan --out inv/
               facegan directions --checkpoint runs/dcgan --classifier runs/classifier
               facegan edit a.jpg --checkpoint runs/dcgan --direction Smiling=2 --out edit.png
  augment:     facegan augment data/celeba64 --split train --checkpoint runs/dcgan --variants 4 \
                   --direction Smiling=1.5 --jitter 0.2 --out data/celeba64_aug

`facegan COMMAND --help` describes each command. A mistake in a config, flag or file prints one
line naming it and exits with status 2.
"""

# One module per group of subcommands (facegan.cli.shards, .train, ...), each with register(sub);
# they import torch, Ray and the rest only inside their commands, so `facegan --help` answers at once.

from __future__ import annotations

import argparse
import logging
import sys

from facegan.errors import Interrupted, UserError


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("facegan")
    except PackageNotFoundError:  # a checkout on sys.path without an install
        from facegan import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    from facegan.cli import (augment, classifier, compare, control, eval as eval_cmd, invert, predictor, shards,
                             sweep, train)

    parser = argparse.ArgumentParser(prog="facegan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (per-tick lines, Ray)")
    parser.add_argument("--version", action="version", version=f"facegan {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (shards, train, classifier, predictor, eval_cmd, compare, sweep, control, invert, augment):
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
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
