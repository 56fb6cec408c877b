"""Entry point for `ray job submit`: validate a run config, then train it with Ray Train.

    RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:8265 \\
        ray job submit --working-dir . -- python ray_jobs/train.py --config CONFIG.yaml --set train.total_kimg=50

The config is loaded and validated (unknown keys, ranges, the shard set and its resolution)
before any Ray worker starts; a bad config exits with status 2 and a message naming the field.
"""

from __future__ import annotations

import argparse
import json
import sys

from facegan.checkpoint import CheckpointError
from facegan.config import ConfigError, RunConfig, load_yaml, to_dict
from facegan.data.records import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="run config YAML (facegan.config.RunConfig)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.total_kimg=50 (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = load_yaml(RunConfig, args.config, overrides=args.set)
        from facegan.launch.trainer import run_training  # checks the shard set before Ray starts

        result = run_training(cfg, config_dict=to_dict(cfg))
    except (ConfigError, DataError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
