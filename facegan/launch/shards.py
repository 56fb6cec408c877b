"""Shard builds over a Ray cluster: each shard is one Ray task doing the same per-chunk work as a
local build (facegan.data.writer.build_one_shard), so the bytes and sha256s are identical.

    facegan shards build shards/celeba64.yaml --root /shared/celeba --out /shared/shards/celeba64 --ray
    facegan shards build ... --out s3://bucket/celeba64 --ray --address head:6379

The driver scans, plans and checks as a local build does (facegan.data.writer.ShardBuild), then
hands out one task per shard to build; tasks read the source files and write their shard to the
output themselves, so `--root` and `--out` must be storage every node sees (a shared filesystem
or an fsspec URL). The driver records each finished shard, so an interrupted build resumes like a
local one, and moves the set into place at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facegan.data.recipe import ShardRecipe
from facegan.errors import DataError, UserError
from facegan.data.writer import BuildResult, ShardBuild, build_one_shard, make_progress


def _shard_task(job: Any, recipe: ShardRecipe, location: str, name: str) -> dict[str, Any]:
    import ray

    # One core per task: the work is a single-threaded decode/encode loop.
    return dict(build_one_shard(job, recipe, location, name), node=ray.get_runtime_context().get_node_id())


def build_shards_on_ray(recipe: ShardRecipe, *, root: str | Path | None, out: str | Path, progress: bool = True,
                        overwrite: bool = False, address: str = "") -> BuildResult:
    """`facegan.data.writer.build_shards`, with the shards built as Ray tasks on the cluster at
    `address` (default: the one this process is connected to, $RAY_ADDRESS, else a local one)."""
    import ray

    from facegan.launch.cluster import ensure_ray

    build = ShardBuild(recipe, root=root, out=out, overwrite=overwrite)
    if not build.store.shared:
        raise DataError(f"--out {out}: exists only in this process, and a --ray build's shards are written "
                        "by the cluster's workers; use storage every node sees (a shared folder or an "
                        "fsspec URL such as s3://)")
    location = str(Path(out).absolute()) if "://" not in str(out) and not str(out).startswith("pipe:") else str(out)
    total = sum(len(j.items) for j in build.todo)
    with build.running():
        started = ensure_ray(address, where="--address") if build.todo else False
        remote = ray.remote(num_cpus=1, max_retries=2, scheduling_strategy="SPREAD")(_shard_task)
        pending = {remote.remote(job, recipe, location, build.staged_name(job.name)): job for job in build.todo}
        bar = make_progress(total=total, enabled=progress and total > 0)
        nodes: dict[str, int] = {}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, UserError):   # e.g. a full disk: one line, like a local build
                        raise cause from None
                    raise
                build.done(job, result)
                nodes[result["node"]] = nodes.get(result["node"], 0) + 1
                bar.update(len(job.items))
        finally:
            bar.close()
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()
        result = build.finish()
        result.nodes = nodes
        return result
