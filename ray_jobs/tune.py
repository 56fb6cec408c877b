"""Entry point for `ray job submit`: validate a sweep, then run it on the cluster with Ray Tune.

    RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:8265 \\
        ray job submit --working-dir . -- python ray_jobs/tune.py sweeps/dcgan_lr_labels.yaml --set budget.max_trials=4

Same arguments as `facegan sweep` (--set, --resume, --check). The sweep is checked (keys, every
grid point and range bound, shard sets) before any trial starts; a bad sweep exits with status 2
naming the field. Exit status 1 when a trial failed.
"""

from __future__ import annotations

import argparse
import sys

from facegan.cli.sweep import add_sweep_args, cmd_sweep
from facegan.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_sweep_args(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_sweep(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
