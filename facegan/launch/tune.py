"""Ray Tune for facegan sweeps: each trial drives its own TorchTrainer (the training service).

    plan = load_sweep("sweeps/dcgan_lr_labels.yaml")       # validated before Ray starts
    summary = run_sweep(plan)                             # facegan sweep / ray_jobs/tune.py
    summary = run_sweep(plan, resume=True)                # continue an interrupted sweep

Ray 2.60 runs Train V2, where `Tuner(TorchTrainer)` no longer works: the Tune trainable is a
driver function (`_trial`) that builds the trial's run config, starts a TorchTrainer with
`resources.num_workers` workers running `facegan.loop.train` (facegan.launch.trainer.make_trainer),
and passes every report on to Tune.
The driver itself asks for no CPU (DRIVER_RESOURCES); `resources.max_concurrent` (default: what the cluster fits)
limits how many Train runs compete for workers.

Reports reach Tune through `_ForwardReports`, a Train callback. Unlike Ray's
`ray.tune.integration.ray_train.TuneReportCallback`, which hands Tune only the checkpoint's path,
it hands the driver the checkpoint too, and the driver registers it with Tune: PBT's exploit
copies another trial's Tune checkpoint, and `Tuner.restore` restarts unfinished trials from theirs.
A trial therefore always starts a fresh Train run, resuming (if at all) from its Tune checkpoint
with the optimizer settings of its own (possibly mutated) config.

Files per sweep folder (`out`, default runs/sweeps/<name>): Tune's experiment state, and
`sweep_spec.json`, `sweep.json` (summary), `report.html`/`trials.csv` (facegan.sweeps.report),
`trials/<trial_id>/` (the run's out_dir: samples, losses, checkpoints; plus `trial.json`,
`starts.jsonl` (one line per start, with its resume point: whose checkpoint, step, rates),
`results.jsonl` (every report), `done.json` when it finished).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from facegan.config import ConfigError, from_dict, to_dict
from facegan.families import RunConfig
from facegan.launch.trainer import forward_reports
from facegan.sweeps.spec import SweepPlan, corner_points, spec_dict

log = logging.getLogger(__name__)

SPEC_JSON = "sweep_spec.json"
SUMMARY_JSON = "sweep.json"
MIN_KEEP_CHECKPOINTS = 3     # one Train checkpoint may still be copying to Tune when the next two arrive
_DONE = "__facegan_trial_done__"
# A trial's driver only waits on its Train run: no CPU (Tune's default 1 CPU per trial would idle a
# core per trial), and Tune rejects an all-zero request, so it asks for memory only.
DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 2**20}


# ============================================================================ the driver side

def run_sweep(plan: SweepPlan, *, resume: bool = False, address: str = "",
              callbacks: list[Any] | None = None) -> dict[str, Any]:
    """Run (or with resume=True continue) a validated sweep on Ray Tune; returns the summary.

    Joins `address` / ray.address of the base config / $RAY_ADDRESS, or starts a local cluster
    (facegan.launch.cluster: nothing leaves the machine). Writes <out>/sweep.json and the report.
    `callbacks`: extra `ray.tune.Callback`s for a new sweep's Tuner (picklable: the sweep folder
    keeps them for a resume); tests use one to interrupt a sweep.
    """
    import ray
    from ray import tune

    from facegan.launch.cluster import ensure_ray
    from facegan.launch.trainer import WANDB_KEY

    out = Path(plan.out_dir)
    preflight_sweep(plan)
    started_local = ensure_ray(address or plan.base.get("ray", {}).get("address", ""))
    max_concurrent = _max_concurrent(plan, strict=started_local)
    # A W&B key goes to the trials' drivers as an ObjectRef (ray.put), never in a runtime_env or a
    # trial's config, which Ray and Tune record; each trial hands it on to its rank 0 the same way.
    key = os.environ.get(WANDB_KEY, "")
    trainable = tune.with_resources(
        tune.with_parameters(_trial, plan=plan, wandb_key=ray.put(key) if key else None), DRIVER_RESOURCES)
    t0 = time.time()
    if resume:
        if not tune.Tuner.can_restore(str(out)):
            raise ConfigError(f"{out}: no sweep to resume there (run without --resume to start it)")
        _check_same_sweep(out, plan)
        # (The first run's RunConfig, callbacks included, comes back from the sweep folder.)
        tuner = tune.Tuner.restore(str(out), trainable, resume_unfinished=True, resume_errored=True)
    else:
        if tune.Tuner.can_restore(str(out)):
            raise ConfigError(f"{out} already holds sweep {plan.spec.name!r}: pass --resume to continue it, "
                              "or set `out` to start another")
        out.mkdir(parents=True, exist_ok=True)
        (out / SPEC_JSON).write_text(json.dumps(spec_dict(plan), indent=1))
        tuner = tune.Tuner(trainable, param_space=_param_space(plan),
                           tune_config=_tune_config(plan, max_concurrent), run_config=_run_config(plan, callbacks))
    log.info("sweep %s: %d trials, %s search, %s scheduler, up to %d at once, results in %s", plan.spec.name,
             plan.num_trials, plan.spec.search.algorithm, plan.spec.scheduler.kind, max_concurrent, out)
    grid = tuner.fit()
    summary = _summarize(plan, grid, seconds=time.time() - t0)
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=1, default=str))
    from facegan.sweeps.report import write_report

    summary["report"] = str(write_report(out))
    return summary


def preflight_sweep(plan: SweepPlan) -> None:
    """Shards, resolution and batch size against every grid point (ranges: their corners)."""
    from facegan.launch.trainer import preflight

    checked: set[str] = set()
    for params in plan.points or corner_points(plan.spec.space):
        data = plan.trial_config(params, trial_id="preflight")
        # preflight proves train.out_dir writable by creating it: probe the sweep folder the trials
        # go under, not a trial folder of its own that would stay behind among the real trials.
        data["train"]["out_dir"] = str(plan.out_dir)
        cfg = from_dict(RunConfig, data)
        key = json.dumps([cfg.data.shards, cfg.model.resolution, cfg.data.batch_size, cfg.ray.num_workers])
        if key not in checked:
            checked.add(key)
            try:
                preflight(cfg)
            except ConfigError as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
                raise ConfigError(f"{plan.path}: space {shown}: {exc}") from None


def _max_concurrent(plan: SweepPlan, *, strict: bool) -> int:
    import ray

    r = plan.spec.resources
    need = {"CPU": r.num_workers * r.cpus_per_worker}
    if r.use_gpu:
        need["GPU"] = r.num_workers * r.gpus_per_worker
    have = ray.cluster_resources()
    fits = min(math.floor(have.get(k, 0) / v + 1e-9) for k, v in need.items())
    if fits < 1:
        message = (f"resources: a trial needs {', '.join(f'{v:g} {k}' for k, v in need.items())}; the cluster has "
                   f"{', '.join(f'{have.get(k, 0):g} {k}' for k in need)}")
        if strict:  # a local cluster never grows: the sweep would wait forever
            raise ConfigError(f"{plan.path}: {message}")
        log.warning("%s; waiting for the cluster to grow", message)
    return r.max_concurrent or max(1, fits)


def _domain(dim: Any) -> Any:
    from ray import tune

    if dim.finite:
        return tune.choice(dim.values)
    low, high = dim.values
    return tune.uniform(low, high) if dim.kind == "uniform" else tune.loguniform(low, high)


def _param_space(plan: SweepPlan) -> dict[str, Any]:
    # Grid points go in as points_to_evaluate (exactly those, in order); the domains name the keys.
    return {key: _domain(dim) for key, dim in plan.spec.space.items()}


def _tune_config(plan: SweepPlan, max_concurrent: int) -> Any:
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    spec = plan.spec
    points = plan.points if spec.search.algorithm == "grid" else None
    return tune.TuneConfig(
        metric=spec.objective.metric, mode=spec.objective.mode,
        # The generator limits concurrency itself (Tune ignores max_concurrent_trials for it).
        search_alg=BasicVariantGenerator(points_to_evaluate=points, random_state=spec.search.seed,
                                         max_concurrent=max_concurrent),
        scheduler=_scheduler(plan), num_samples=plan.num_trials,
        time_budget_s=spec.budget.max_minutes * 60 or None,
        trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname)


def _scheduler(plan: SweepPlan) -> Any:
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    sc = plan.spec.scheduler
    train = from_dict(RunConfig, plan.trial_config(plan.points[0] if plan.points else
                                                   corner_points(plan.spec.space)[0], trial_id="x")).train
    if sc.kind == "asha":
        # Progress in kimg: a rung is a number of images seen, whatever the batch size.
        return ASHAScheduler(time_attr="kimg", max_t=train.total_kimg, grace_period=sc.grace_kimg or train.tick_kimg,
                             reduction_factor=sc.reduction_factor)
    if sc.kind == "pbt":
        return PopulationBasedTraining(
            time_attr="kimg", perturbation_interval=sc.perturbation_kimg, burn_in_period=sc.burn_in_kimg,
            hyperparam_mutations={k: (d.values if d.finite else _domain(d)) for k, d in sc.mutations.items()},
            quantile_fraction=sc.quantile_fraction, resample_probability=sc.resample_probability, synch=sc.synch)
    return None


def _run_config(plan: SweepPlan, callbacks: list[Any] | None = None) -> Any:
    from ray import tune

    out = Path(plan.out_dir)
    # PBT's exploit hands a trial the donor's checkpoint from the donor's last perturbation; the trial
    # reads it only once its new actor runs, while the donor keeps reporting (and Tune registers the
    # checkpoint PBT saves a second time, so deleting the older entry deletes both). Any fixed number
    # kept can be outrun (a test lost the donor's checkpoint 3 reports later), so PBT keeps them all:
    # about trial_kimg / checkpoint_kimg checkpoints per trial on disk.
    keep = None if plan.spec.scheduler.kind == "pbt" else 2
    return tune.RunConfig(name=out.name, storage_path=str(out.parent), callbacks=callbacks,
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=keep))


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _trial_dirname(trial: Any) -> str:
    return f"tune_{trial.trial_id}"


def _check_same_sweep(out: Path, plan: SweepPlan) -> None:
    """A resumed sweep must be the one that started: same space, search, scheduler, base, objective."""
    path = out / SPEC_JSON
    if not path.is_file():
        return
    before, now = json.loads(path.read_text()), json.loads(json.dumps(spec_dict(plan)))
    fields = ("space", "search", "scheduler", "objective", "family")
    changed = [f for f in fields if before["spec"].get(f) != now["spec"].get(f)]
    if before.get("base") != now.get("base"):
        changed.append("base/config/resources/budget.trial_kimg")
    if changed:
        raise ConfigError(f"{plan.path}: changed since the sweep in {out} started ({', '.join(changed)}); "
                          "resume it with the same file, or set `out` to start a new sweep")


def _summarize(plan: SweepPlan, grid: Any, *, seconds: float) -> dict[str, Any]:
    trials = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name.removeprefix("tune_")
        # A trial interrupted before its first report has no metrics; Tune calls that an error.
        failed = result.error is not None and bool(metrics)
        trials.append({"trial_id": trial_id, "params": metrics.get("config", {}),
                       "error": str(result.error).splitlines()[0][:500] if failed else "",
                       "last": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
    metric, mode = plan.spec.objective.metric, plan.spec.objective.mode
    scored = [t for t in trials if isinstance(t["last"].get(metric), (int, float)) and math.isfinite(t["last"][metric])]
    best = (min if mode == "min" else max)(scored, key=lambda t: t["last"][metric]) if scored else None
    return {"name": plan.spec.name, "objective": {"metric": metric, "mode": mode}, "seconds": seconds,
            "num_trials": len(trials), "num_errors": sum(bool(t["error"]) for t in trials),
            "num_unfinished": sum(not t["error"] and not (Path(plan.out_dir) / "trials" / t["trial_id"] / "done.json")
                                  .is_file() for t in trials),
            "best": best, "trials": trials}


# ============================================================================ inside each trial

def _trial(config: dict[str, Any], plan: SweepPlan, wandb_key: str | None = None) -> None:
    """The Tune trainable: one trial = one TorchTrainer run of the training loop (`wandb_key`: the
    sweep driver's W&B key, for the trial's rank 0)."""
    from ray import tune
    from ray.util.queue import Queue

    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    data = plan.trial_config(config, trial_id=trial_id, trial_name=f"{plan.spec.name}-{trial_id}")
    data["train"]["keep_checkpoints"] = max(int(data["train"].get("keep_checkpoints", 3)), MIN_KEEP_CHECKPOINTS)
    out = Path(data["train"]["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    attempt = _count_lines(out / "starts.jsonl")
    resume = _resume_point(tune.get_checkpoint(), data, out / "resume" / f"attempt-{attempt}")
    if resume is not None:
        data["train"]["resume"] = str(resume["dir"])
    if resume is not None and resume["trial"] != trial_id:
        log.info("trial %s: continues from trial %s's checkpoint at step %s (%.3f kimg), rates %s", trial_id,
                 resume["trial"], resume["step"], resume["kimg"], resume["rates"])
    _append(out / "starts.jsonl", {"attempt": attempt, "time": time.time(), "params": config,
                                   "resume_kimg": resume["kimg"] if resume else None,
                                   "resume": {k: v for k, v in resume.items() if k != "dir"} if resume else None})
    (out / "trial.json").write_text(json.dumps({"trial_id": trial_id, "sweep": plan.spec.name, "params": config,
                                                "overrides": plan.overrides(config), "config": data}, indent=1))
    cfg = from_dict(RunConfig, data)
    _clear_train_run(cfg)

    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            _fit(cfg, callbacks=[forward_reports(queue)], wandb_key=wandb_key)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the trial's thread below
            failure.append(exc)
        finally:
            queue.put(_DONE)

    # fit() blocks until training ends; this thread meanwhile turns its reports into Tune reports.
    thread = threading.Thread(target=fit, name=f"fit-{trial_id}", daemon=True)
    thread.start()
    last: dict[str, Any] = {}
    while (item := queue.get()) != _DONE:
        metrics, checkpoint = item
        last = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        if checkpoint is not None:
            last["checkpoint_path"] = checkpoint.path
        _append(out / "results.jsonl", dict(last, time=time.time(), attempt=attempt))
        if last.get("kimg", 0) >= cfg.train.total_kimg - 1e-9:
            # Before the last report: a scheduler may stop the trial (ASHA at max_t) when Tune gets it.
            _write_done(out, last)
        tune.report(last, checkpoint=tune.Checkpoint(checkpoint.path, checkpoint.filesystem) if checkpoint else None)
    thread.join()
    if failure:
        raise failure[0]
    if last or not (out / "done.json").is_file():  # a restart at the end trains (and reports) nothing
        _write_done(out, last)


def _write_done(out: Path, metrics: dict[str, Any]) -> None:
    (out / "done.json").write_text(json.dumps({"time": time.time(), "metrics": metrics}, indent=1))


def _fit(cfg: RunConfig, *, callbacks: list[Any], wandb_key: str | None = None) -> Any:
    """The trial's Train run: facegan.launch.trainer's TorchTrainer, with the reports forwarded."""
    from facegan.launch.trainer import fit, make_trainer, prepare

    cfg, config_dict = prepare(cfg, to_dict(cfg))
    return fit(make_trainer(cfg, config_dict=config_dict, callbacks=callbacks, wandb_key=wandb_key), cfg)


def _clear_train_run(cfg: RunConfig) -> None:
    """Remove an earlier attempt's Train run: Train would resume it, ignoring the Tune checkpoint."""
    import pyarrow.fs

    from facegan.launch.trainer import localize, run_location

    storage, name = run_location(from_dict(RunConfig, localize(to_dict(cfg))))
    fs, root = pyarrow.fs.FileSystem.from_uri(storage)
    if fs.get_file_info(f"{root}/{name}").type != pyarrow.fs.FileType.NotFound:
        fs.delete_dir(f"{root}/{name}")


def _resume_point(checkpoint: Any, data: dict[str, Any], where: Path) -> dict[str, Any] | None:
    """A local copy of the trial's Tune checkpoint, its optimizers set to this trial's config.

    After PBT's exploit the checkpoint comes from another trial, whose learning rates the loop
    would otherwise restore along with the Adam moments. Returns {"dir": the copy, "trial": the
    trial that wrote the checkpoint (another one after an exploit), "step", "images_seen", "kimg":
    where it was written, "checkpoint": the Tune checkpoint's path, "rates": optimizer -> lr now}.
    """
    if checkpoint is None:
        return None
    from facegan.checkpoint import load_checkpoint, save_checkpoint

    if where.parent.exists():
        shutil.rmtree(where.parent)  # earlier attempts' copies
    staging = where.with_name(where.name + ".incoming")
    checkpoint.to_directory(str(staging))
    state, meta = load_checkpoint(staging)
    # The loop writes its run config into every checkpoint; a trial's out_dir is trials/<trial_id>.
    writer = Path(meta.get("config", {}).get("train", {}).get("out_dir", "")).name
    # Each optimizer's rate and betas: what the family declares from this trial's config (OptimizerSpec).
    cfg = from_dict(RunConfig, data)
    specs = cfg.family.optimizers(cfg)
    changed = False
    for name, spec in specs.items():
        for group in state.get(f"opt_{name}", {}).get("param_groups", []):
            if group.get("lr") != spec.lr:
                group["lr"], changed = spec.lr, True
            if tuple(group.get("betas", ())) != tuple(spec.betas):
                group["betas"], changed = tuple(spec.betas), True
    if changed:
        save_checkpoint(where, state=state, meta=dict(meta, config=copy.deepcopy(data)))
        shutil.rmtree(staging)
    else:
        staging.rename(where)
    rates = {f"opt_{name}": [g["lr"] for g in state[f"opt_{name}"]["param_groups"]] for name in specs
             if f"opt_{name}" in state}
    return {"dir": where, "trial": writer, "step": meta.get("step"), "images_seen": meta.get("images_seen"),
            "kimg": meta.get("kimg"), "checkpoint": str(checkpoint.path), "rates": rates}


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def _append(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")

