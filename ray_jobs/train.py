"""Entry point for `ray job submit`: validate a run config (any family), then train it with Ray Train.

    RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:8265 \\
        ray job submit --working-dir . -- python ray_jobs/train.py --config CONFIG.yaml --set train.total_kimg=50

The config is loaded and validated (unknown keys, ranges, the shard set and its resolution)
before any Ray worker starts; a bad config exits with status 2 and a message naming the field.
"""

from __future__ import annotations

import sys

from facegan.launch.trainer import job_entry


def main(argv: list[str] | None = None) -> int:
    return job_entry(argv, description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    sys.exit(main())
