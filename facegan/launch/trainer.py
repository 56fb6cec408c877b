"""Ray Train for facegan's loop: one TorchTrainer run of the training loop over DDP workers.

    cfg = load_yaml(RunConfig, "configs/dcgan_celeba64.yaml")     # any family, the classifier too
    metrics = run_training(cfg, config_dict=to_dict(cfg))     # or: ray job submit ... ray_jobs/train.py

The train function is `facegan.loop.train` (tests pass any `(cfg, *, hooks)`). `make_trainer` is the
one place a TorchTrainer is built (facegan.launch.tune's trials use it too). Every worker rebuilds
the config from the plain dict and runs the same loop as in-process training, with `Hooks` that take rank and device from Ray, resume from the checkpoint Ray hands
out, wrap models with `ray.train.torch.prepare_model` and turn the loop's ticks into
`ray.train.report` calls (all ranks report; only rank 0 attaches the checkpoint it wrote). When a
worker or a node dies, Ray restarts the whole group from the latest reported checkpoint, up to
`ray.max_failures` times. A rank that hangs (a frozen process, a peer that never joins a collective)
counts as failed after `ray.collective_timeout_s` (`hang_timeouts`). Checkpoints persist under
`ray.storage_path` (default <out_dir>/ray); starting a run whose name and storage already hold one
continues it.

Secrets stay out of Ray's records: a W&B key in the driver's environment reaches rank 0 through
the object store (`ray.put`, an ObjectRef in the train function's arguments), never through a
runtime_env or the train_loop_config, which Ray shows to anyone with dashboard access.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from facegan.config import ConfigError, from_dict
from facegan.errors import DataError, UserError
from facegan.families import RunConfig
from facegan.hooks import Hooks
from facegan.launch.cluster import ensure_ray
from facegan.launch.sinks import make_sinks, netrc_key

log = logging.getLogger(__name__)

TrainFn = Callable[..., dict[str, float]]


def default_train_fn() -> TrainFn:
    from facegan.loop import train

    return train


def _is_url(location: str) -> bool:
    return "://" in location or location.startswith("pipe:")


def localize(config_dict: dict[str, Any]) -> dict[str, Any]:
    """Local paths made absolute: workers (and `ray job submit` drivers) run in other directories."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config_dict.items()}
    train = out.setdefault("train", {})
    train["out_dir"] = str(Path(train.get("out_dir", "runs/default")).expanduser().resolve())
    data = out.setdefault("data", {})
    if data.get("shards") and not _is_url(str(data["shards"])):
        data["shards"] = str(Path(data["shards"]).expanduser().resolve())
    for section, key in (("eval", "classifier"), ("eval", "inception_weights"), ("gan", "classifier")):
        values = out.get(section)
        if isinstance(values, dict) and values.get(key) and not _is_url(str(values[key])):
            values[key] = str(Path(values[key]).expanduser().resolve())
    ray_section = out.get("ray", {})
    if ray_section.get("storage_path") and not _is_url(str(ray_section["storage_path"])):
        ray_section["storage_path"] = str(Path(ray_section["storage_path"]).expanduser().resolve())
    return out


def run_location(cfg: RunConfig) -> tuple[str, str]:
    """(storage_path, run name) of the Ray run: <out_dir>/ray unless ray.storage_path is set."""
    out_dir = Path(cfg.train.out_dir)
    return cfg.ray.storage_path or str(out_dir / "ray"), out_dir.name


def ray_storage(cfg: RunConfig) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray's RunConfig. A URL (s3://bucket/runs) goes through
    fsspec, wrapped for pyarrow: the same S3 client, credentials, endpoint and timeouts as the
    shard sets (facegan.data.store), its bucket checked before any worker starts. A local path as is."""
    storage, _ = run_location(cfg)
    if not _is_url(storage) or storage.startswith("file://"):
        return storage, None
    import pyarrow.fs

    from facegan.data.store import FsspecStore

    store = FsspecStore(storage)
    return store.path.rstrip("/"), pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(store.fs))


def first_sample_problem(path: str) -> str | None:
    """Why the shard file at `path` yields no first sample (None: it does). Reads one sample only."""
    from facegan.data.tario import TarFormatError, iter_samples

    try:
        with open(path, "rb") as f:
            if next(iter_samples(f), None) is None:
                return "no samples"
    except (OSError, TarFormatError, EOFError) as exc:
        return str(exc) or type(exc).__name__
    return None


def preflight(cfg: RunConfig) -> None:
    """Catch what would otherwise fail inside every worker, once per retry, after a ~15 s start."""
    from facegan.data.stream import ShardSet

    if cfg.train.device == "cuda" and not cfg.ray.use_gpu:
        raise ConfigError("train.device: cuda needs ray.use_gpu: true (Ray gives workers no GPU otherwise)")
    from facegan.loop import check_shards

    from facegan.runtime import check_writable_dir

    shards = ShardSet.open(cfg.data.shards)
    # The same checks the worker's loop makes, before any worker starts (~15 s and a Ray traceback later).
    check_shards(cfg, shards, world_size=cfg.ray.num_workers)
    if not _is_url(cfg.data.shards):
        # Unreadable shard files would fail in every worker, once per restart, each with a traceback.
        unreadable = [url for url in shards.urls("train") if not os.access(url, os.R_OK)]
        if unreadable:
            raise DataError(f"data.shards: {len(unreadable)} of {len(shards.urls('train'))} train shards cannot be "
                            f"read, e.g. {unreadable[0]} ({'missing' if not os.path.exists(unreadable[0]) else 'no read permission'})")
        # A set none of whose train shards starts with a readable sample (files overwritten, cut to
        # nothing, not tars) would fail in every worker, once per restart; a set with some good
        # shards trains, skipping and counting the bad ones, as the stream documents.
        damaged = [(url, why) for url in shards.urls("train") if (why := first_sample_problem(url))]
        if damaged and len(damaged) == len(shards.urls("train")):
            raise DataError(f"data.shards: none of the {len(damaged)} train shards holds a readable sample, "
                            f"e.g. {damaged[0][0]}: {damaged[0][1]}")
    if not _is_url(cfg.train.out_dir):
        check_writable_dir(cfg.train.out_dir, field="train.out_dir")
    evaluation = cfg.eval
    if evaluation.every_kimg > 0:
        for name in ("classifier", "inception_weights"):
            value = getattr(evaluation, name, "")
            if value and not _is_url(value) and not Path(value).exists():
                raise ConfigError(f"eval.{name}: {value} does not exist")


def _check_local_capacity(cfg: RunConfig, resources: dict[str, float]) -> None:
    # A local cluster never grows: asking for more than it has would wait forever.
    import ray

    have = ray.cluster_resources()
    for key, per_worker in resources.items():
        if per_worker * cfg.ray.num_workers > have.get(key, 0):
            raise ConfigError(f"ray.num_workers {cfg.ray.num_workers} x {per_worker} {key} per worker is more than "
                              f"this machine's {have.get(key, 0):g} {key}")


WANDB_KEY = "WANDB_API_KEY"
KEY_RECEIVED = "rank 0: W&B key received from the driver through the object store"
# Ray Train V2 reads these in its controller, which takes them from the driver's environment when
# fit() starts (ray.train.v2._internal.constants.ENV_VARS_TO_PROPAGATE).
HEALTH_CHECK_TIMEOUT_VAR = "RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S"   # a worker that stops answering
REPORT_TIMEOUT_VAR = "RAY_TRAIN_COLLECTIVE_TIMEOUT_S"                # ray.train.report's barrier


@contextlib.contextmanager
def hang_timeouts(cfg: RunConfig) -> Iterator[None]:
    """Around `trainer.fit()`: Ray Train's own hang timeouts set to `ray.collective_timeout_s`.

    A SIGSTOPped (or otherwise frozen) rank answers nothing: its peers wait in a torch collective
    (bounded by TorchConfig.timeout_s, see make_trainer) or in ray.train.report's barrier, and
    Ray's health check of the frozen worker hangs; by default the last two wait 10 min and forever.
    """
    value = str(cfg.ray.collective_timeout_s)
    saved = {k: os.environ.get(k) for k in (HEALTH_CHECK_TIMEOUT_VAR, REPORT_TIMEOUT_VAR)}
    for key, before in saved.items():
        if before is not None and before != value:
            log.info("%s=%s in the environment: using ray.collective_timeout_s=%s for this run", key, before, value)
        os.environ[key] = value
    try:
        yield
    finally:
        for key, before in saved.items():
            if before is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = before


def fit(trainer: Any, cfg: RunConfig) -> Any:
    """trainer.fit() with the run's hang timeouts (`hang_timeouts`)."""
    with hang_timeouts(cfg):
        return trainer.fit()


def ship_wandb_key(cfg: RunConfig, key: str | None = None) -> Any:
    """An ObjectRef to the W&B key (default: this driver's WANDB_API_KEY) when rank 0 may need it
    (W&B on and not forced offline, a key given; for wandb.mode online also `wandb login`'s), else None.

    The object store is not shown on the dashboard, unlike a job's or an actor's runtime_env and a
    Train run's train_loop_config; the ref lives as long as this driver. Without a key here, rank 0
    uses its own node's environment (or `wandb login`)."""
    if key is None:
        # wandb.mode: online also takes the key `wandb login` stored in this driver's ~/.netrc.
        key = os.environ.get(WANDB_KEY, "") or ((netrc_key() or "") if cfg.wandb.mode == "online" else "")
    if not key or not cfg.wandb.enabled or cfg.wandb.mode in ("disabled", "offline"):
        return None
    import ray

    return ray.put(key)


def make_trainer(cfg: RunConfig, *, config_dict: dict[str, Any], train_fn: TrainFn | None = None,
                 callbacks: list[Any] | None = None, wandb_key: str | None = None) -> Any:
    """The TorchTrainer of a run: `ray.num_workers` DDP workers (NCCL with GPUs, gloo on CPU), each
    running `train_fn` (default facegan.loop.train) on the config rebuilt from `config_dict`; Ray
    keeps `train.keep_checkpoints` and restarts the group up to `ray.max_failures` times, also when
    a rank hangs for `ray.collective_timeout_s` (run it with `fit`). `wandb_key` (default: this
    process's WANDB_API_KEY) reaches rank 0 through the object store. Needs a connected Ray."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    _, name = run_location(cfg)
    storage, storage_fs = ray_storage(cfg)
    rc = cfg.ray
    backend = rc.backend if rc.backend != "auto" else ("nccl" if rc.use_gpu else "gloo")
    return TorchTrainer(
        functools.partial(train_loop_per_worker, train_fn=train_fn or default_train_fn(),
                          wandb_key=ship_wandb_key(cfg, wandb_key)),
        train_loop_config=config_dict,
        # The process group's timeout bounds every gloo/NCCL collective: a rank whose peer froze
        # mid-step raises after it instead of after torch's default 30 min.
        torch_config=TorchConfig(backend=backend, timeout_s=rc.collective_timeout_s),
        scaling_config=ScalingConfig(num_workers=rc.num_workers, use_gpu=rc.use_gpu,
                                     resources_per_worker=worker_resources(cfg),
                                     placement_strategy=rc.placement_strategy),
        run_config=RayRunConfig(name=name, storage_path=storage, storage_filesystem=storage_fs, callbacks=callbacks,
                                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                                failure_config=FailureConfig(max_failures=rc.max_failures)))


def forward_reports(queue: Any) -> Any:
    """A Train callback (run on the Train controller) handing every report and checkpoint to the driver."""
    from ray.train import UserCallback

    class ForwardReports(UserCallback):
        def __init__(self, q: Any) -> None:
            self.queue = q

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            # Blocks while the driver still holds the previous report: back-pressure keeps the
            # checkpoint being copied to Tune among the ones Train keeps (MIN_KEEP_CHECKPOINTS).
            self.queue.put((dict(metrics[0]), checkpoint))

    return ForwardReports(queue)


def worker_resources(cfg: RunConfig) -> dict[str, float]:
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = cfg.ray.gpus_per_worker
    return resources


def prepare(cfg: RunConfig, config_dict: dict[str, Any]) -> tuple[RunConfig, dict[str, Any]]:
    """(cfg, its plain form) with local paths absolute, after preflight: what workers get."""
    if from_dict(RunConfig, config_dict) != cfg:
        raise ValueError("run_training: config_dict does not describe cfg (pass config.to_dict(cfg))")
    config_dict = localize(config_dict)
    cfg = from_dict(RunConfig, config_dict)
    preflight(cfg)
    return cfg, config_dict


def run_training(cfg: RunConfig, *, config_dict: dict[str, Any], train_fn: TrainFn | None = None,
                 progress: bool = False) -> dict[str, Any]:
    """Train `cfg` on Ray Train workers.

    Returns {"metrics": the last reported checkpoint's metrics, "checkpoint": its directory in
    storage, "run_dir": <storage>/<name>, "wandb_dir": rank 0's W&B run directory or ""}.

    `config_dict` is the plain form of `cfg` (config.to_dict) shipped to the workers. `train_fn`
    (signature `(cfg, *, hooks)`) runs in the workers; default: facegan.loop.train. Tests pass
    wrappers to observe ranks. Joins ray.address / $RAY_ADDRESS, or starts a local cluster, unless
    this process is already connected. With `progress`, the terminal shows one updating line (kimg,
    img/s, ETA, losses) fed by the workers' reports, and a local cluster's worker logs stay in
    Ray's log files instead of flooding the terminal.
    """
    cfg, config_dict = prepare(cfg, config_dict)
    storage, name = run_location(cfg)
    if ensure_ray(cfg.ray.address, log_to_driver=not progress):
        _check_local_capacity(cfg, worker_resources(cfg))
    callbacks, watcher = [], None
    if progress:
        watcher = _ProgressWatcher(cfg)
        callbacks.append(forward_reports(watcher.queue))
    trainer = make_trainer(cfg, config_dict=config_dict, train_fn=train_fn, callbacks=callbacks)
    log.info("Ray Train run %r: %d workers, checkpoints in %s/%s", name, cfg.ray.num_workers, storage, name)
    try:
        result = fit(trainer, cfg)
    except Exception as exc:
        mistake = user_error(exc)
        if mistake is None:
            raise
        raise mistake from None
    finally:
        if watcher is not None:
            watcher.stop()
    return {"metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
            "checkpoint": _storage_url(storage, result.checkpoint.path) if result.checkpoint else "",
            "run_dir": f"{storage.rstrip('/')}/{name}",
            "wandb_dir": _wandb_dir(cfg)}


def _storage_url(storage: str, path: str) -> str:
    """A path Ray reports inside ray.storage_path's filesystem, as a URL when that storage is one."""
    if _is_url(storage) and not _is_url(path):
        return f"{storage.split('://', 1)[0]}://{path.lstrip('/')}"
    return path


class _ProgressWatcher:
    """The driver's progress line: a thread turning forwarded Train reports into ProgressSink updates."""

    _DONE = "__facegan_progress_done__"

    def __init__(self, cfg: RunConfig) -> None:
        import threading

        from ray.util.queue import Queue

        from facegan.stats import ProgressSink

        self.queue = Queue(maxsize=0, actor_options={"num_cpus": 0})
        self.sink = ProgressSink(total_kimg=cfg.train.total_kimg, desc=f"{cfg.model.family} (Ray, "
                                 f"{cfg.ray.num_workers} workers)")
        self.thread = threading.Thread(target=self._run, name="facegan-progress", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) != self._DONE:
            metrics, _checkpoint = item
            self.sink.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                          step=int(metrics.get("step", 0)))

    def stop(self) -> None:
        self.queue.put(self._DONE)
        self.thread.join(timeout=10)
        self.sink.close()


def user_error(exc: BaseException) -> UserError | None:
    """The first rank's UserError inside a failed Train run (a full disk, a bad checkpoint), as one
    line naming the rank, so `facegan train` and the job entry exit 2 with it, not a Ray traceback."""
    for rank, failure in sorted((getattr(exc, "worker_failures", None) or {}).items()):
        # Ray wraps a worker's exception with its traceback string; the exception itself is kept.
        cause = getattr(failure, "_base_exc", failure)
        if isinstance(cause, UserError):
            return type(cause)(f"rank {rank}: {cause}")
    return None


def wandb_run_id(cfg: RunConfig) -> str:
    """One W&B run per Ray run, kept across restarts (the sink resumes it)."""
    storage, name = run_location(cfg)
    digest = hashlib.sha1(f"{storage}/{name}".encode()).hexdigest()[:10]
    return f"{''.join(c if c.isalnum() or c in '-_' else '_' for c in name[:40])}-{digest}"


def _wandb_dir(cfg: RunConfig) -> str:
    if not cfg.wandb.enabled or cfg.wandb.mode == "disabled":
        return ""
    # Rank 0 wrote it; the path is on rank 0's node (here when this driver shares its disk).
    found = sorted(Path(cfg.train.out_dir).glob(f"wandb/*-{wandb_run_id(cfg)}"), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found else ""


# ====================================================================== inside each worker

class _Resume:
    """resume_from(): a local copy of Ray's checkpoint, made once (it must outlive Ray's context)."""

    def __init__(self) -> None:
        self._done = False
        self._dir: Path | None = None

    def __call__(self) -> Path | None:
        import ray.train

        if not self._done:
            self._done = True
            checkpoint = ray.train.get_checkpoint()
            if checkpoint is not None:
                self._dir = Path(tempfile.mkdtemp(prefix="facegan-resume-"))
                checkpoint.to_directory(str(self._dir))
        return self._dir

    def cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def _wrap_model(module: nn.Module, device: torch.device, **ddp_options: Any) -> nn.Module:
    import ray.train.torch

    # With one worker prepare_model returns the module itself (no DDP, no .module). The run's DDP
    # options (ray.ddp_bucket_cap_mb, ...) reach DistributedDataParallel through parallel_strategy_kwargs.
    return ray.train.torch.prepare_model(module, move_to_device=False, parallel_strategy="ddp",
                                         parallel_strategy_kwargs=ddp_options or None)


def _report(metrics: dict[str, float], checkpoint_dir: Path | None, *, rank: int) -> None:
    import ray.train

    # Every rank must call report (it is a barrier); rank 0 alone owns the checkpoint files.
    checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if rank == 0 and checkpoint_dir else None
    ray.train.report(dict(metrics), checkpoint=checkpoint)


def train_loop_per_worker(config_dict: dict[str, Any], *, train_fn: TrainFn | None = None,
                          wandb_key: Any = None) -> None:
    """One DDP rank: rebuild the config, build Ray-backed hooks, run the loop.

    `wandb_key`: an ObjectRef to the driver's W&B key (ship_wandb_key); only rank 0 fetches it, into
    its own process's environment, where W&B looks for it."""
    import ray
    import ray.train
    import ray.train.torch

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = from_dict(RunConfig, config_dict)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if rank == 0 and wandb_key is not None:
        os.environ[WANDB_KEY] = ray.get(wandb_key)
        log.info(KEY_RECEIVED)
    resume = _Resume()
    hooks = Hooks(
        rank=rank,
        world_size=ctx.get_world_size(),
        local_rank=ctx.get_local_rank(),
        device=ray.train.torch.get_device() if cfg.ray.use_gpu else torch.device("cpu"),
        resume_from=resume,
        wrap_model=_wrap_model,
        report=functools.partial(_report, rank=rank),
        sinks=make_sinks(cfg, rank=rank, run_id=wandb_run_id(cfg), name=run_location(cfg)[1], config_dict=config_dict),
    )
    if train_fn is None:
        train_fn = default_train_fn()
    try:
        train_fn(cfg, hooks=hooks)
    finally:
        resume.cleanup()


def job_entry(argv: list[str] | None, *, description: str, default_family: str = "") -> int:
    """What a `ray job submit` entry script (ray_jobs/) runs: load `--config` with its `--set`
    overrides (a config without model.family is `default_family`'s), validate it and its shard set,
    then train with Ray Train. A bad config exits with status 2 and a message naming the field,
    before any Ray worker starts."""
    import argparse
    import json
    import sys

    from facegan.families import load_run_config
    from facegan.config import to_dict

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="run config YAML (configs/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.total_kimg=50 (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a train.out_dir that holds an earlier run (its files are removed)")
    args = parser.parse_args(argv)
    from facegan.launch.rundir import claim_run_dir

    try:
        cfg = load_run_config(args.config, args.set, default_family=default_family)
        with claim_run_dir(cfg, overwrite=args.overwrite):
            result = run_training(cfg, config_dict=to_dict(cfg))  # checks the shard set before Ray starts
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --set train.resume=latest to continue", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=1, sort_keys=True, default=str))
    return 0

