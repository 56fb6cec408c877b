"""Entry point for `ray job submit`: validate an attribute-classifier config, then train it with Ray Train.

    RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:8265 \\
        ray job submit --working-dir . -- python ray_jobs/classifier.py --config configs/classifier_celeba64.yaml

Same as `facegan classifier train` on a cluster: the config and its shard set (attribute labels,
resolution, eval splits) are checked before any Ray worker starts; a bad config exits with
status 2 and a message naming the field. The evaluation table lands in the run's out_dir.
"""

from __future__ import annotations

import sys

from facegan.launch.trainer import job_entry


def main(argv: list[str] | None = None) -> int:
    return job_entry(argv, description=__doc__.split("\n\n")[0], default_family="classifier")


if __name__ == "__main__":
    sys.exit(main())
