"""Evaluation on Ray: each task draws its share of the generated chunks and of the real splits,
extracts features, and hands them back; the statistics run once, on the gathered features.

    facegan eval --checkpoint C --shards DIR --classifier K --workers 2

Generation is split by chunk (facegan.evaluation.CHUNK images, chunk i seeded by (seed, i)) and
the real splits by facegan.data.stream's rank sharding, so the gathered sets are exactly the
ones a single process would use: the scores do not depend on the number of workers.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from facegan.evaluation.offline import EvalRequest, Share, compute_share
from facegan.launch.cluster import ensure_ray


def localize_path(value: str) -> str:
    """Local paths made absolute (tasks run in other directories); URLs and "" unchanged."""
    if not value or "://" in value or value.startswith("pipe:"):
        return value
    return str(Path(value).expanduser().resolve())


def _share_task(request: dict[str, Any], rank: int, world_size: int) -> Share:
    import torch

    # Each task gets one CPU from Ray; more intra-op threads would only contend with the others.
    torch.set_num_threads(1)
    return compute_share(EvalRequest(**request), rank=rank, world_size=world_size)


def ray_shares(req: EvalRequest, *, workers: int, address: str = "", cpus_per_worker: float = 1) -> list[Share]:
    """`workers` Ray tasks, one share each (joins $RAY_ADDRESS or starts a local cluster)."""
    import ray

    ensure_ray(address)
    request = asdict(req)
    for key in ("shards", "checkpoint", "images", "classifier", "inception_weights"):
        request[key] = localize_path(request[key])
    task = ray.remote(num_cpus=cpus_per_worker)(_share_task)
    return ray.get([task.remote(request, rank, workers) for rank in range(workers)])
