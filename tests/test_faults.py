"""Faults: a seeded chaos series on the two-node Ray cluster, a full disk during a checkpoint, and
per-step loss rows that survive a crash.

What "exact" means after a restart. Ray Train restarts the group from the last checkpoint it
registered, so the steps after that checkpoint are trained twice: once by the attempt that failed,
once by the next. Accounting is exact when
  - the final checkpoint holds images_seen = N * B, with B the images per step over all ranks and
    N = ceil(round(total_kimg * 1000) / B) (the loop stops at the first step reaching the total);
  - losses.jsonl holds a per-step row (kind "step") for every step 1..N; a step appears twice only
    when it lies after the checkpoint the next attempt resumed from (the next attempt's rows start
    right after it), and then both rows are identical, value for value (exact resume: same weights,
    same data, same random numbers), so "keep the last row of each step" and "keep the first" read
    the same log. No step is missing: rows are flushed at every tick and every checkpoint.
  - every checkpoint left (the loop's checkpoints/ckpt-* and Ray's copies) loads with
    facegan.families.loading.load_run, and no temporary checkpoint folder is left behind.

    .venv/bin/python -m pytest -q tests/test_faults.py
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from conftest import REPO, skip_unless_required
from conftest_ray import node_args
from facegan.checkpoint import list_checkpoints
from facegan.cli import main as cli
from facegan.config import from_dict, to_dict
from facegan.errors import CheckpointError
from facegan.families import RunConfig
from facegan.families.loading import load_run
from test_launch import attempts, observed_train, tiny_config, wait_for

CHAOS_SEED = 2024
FAULT_KINDS = ("sigkill", "node_removal", "sigstop")
STEPS, TICK, EVERY = 42, 2, 6        # the chaos run: 42 steps of 2 x 8 images, a checkpoint every 6
HANG_TIMEOUT_S = 20                  # its ray.collective_timeout_s
BATCH = 8                            # in-process runs: one rank, 8 images per step


# ========================================================================= shared checks

def expected_steps(cfg: RunConfig, *, world_size: int) -> int:
    per_step = cfg.data.batch_size * world_size
    return math.ceil(round(cfg.train.total_kimg * 1000) / per_step)


def step_rows(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "step"]


def check_step_rows(out: Path, *, total_steps: int, resumed_from: set[int]) -> int:
    """losses.jsonl covers steps 1..total_steps as the module docstring says; returns how many rows
    were redone (written twice, identically)."""
    kept: dict[int, dict[str, Any]] = {}
    previous, redone = 0, 0
    for row in step_rows(out):
        step = row["step"]
        if step != previous + 1:
            # A restart: the new attempt's rows begin right after the checkpoint it resumed from,
            # which the failed attempt had reached.
            assert step - 1 in resumed_from and step <= previous, (step, previous, resumed_from)
        if step in kept:
            assert row == kept[step], f"step {step} was redone with different values"
            redone += 1
        kept[step] = row
        previous = step
    assert sorted(kept) == list(range(1, total_steps + 1)), sorted(set(range(1, total_steps + 1)) - set(kept))
    return redone


def check_checkpoints(out: Path, *, run_dir: Path | None = None) -> int:
    """Every checkpoint left loads with load_run; no temporary folder is left. Returns the count."""
    root = out / "checkpoints"
    left = list_checkpoints(root) + (sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir()) if run_dir else [])
    assert left
    for ckpt in left:
        run = load_run(ckpt)
        assert run.meta["images_seen"] == run.meta["step"] * run.meta["loader"]["batch_size"] * run.meta["world_size"]
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")], "a temporary checkpoint folder was left"
    return len(left)


def inproc_config(shards: Path, out: Path, *, steps: int, tick: int, ckpt: int, **sections: Any) -> RunConfig:
    """A 32 px DCGAN trained in this process, in steps of BATCH images."""
    data: dict[str, Any] = {
        "data": {"shards": str(shards), "batch_size": BATCH, "num_workers": 0, "shuffle_buffer": 16},
        "model": {"family": "dcgan", "resolution": 32, "base_channels": 8, "z_dim": 16},
        "train": {"total_kimg": steps * BATCH / 1000, "tick_kimg": tick * BATCH / 1000,
                  "checkpoint_kimg": ckpt * BATCH / 1000, "keep_checkpoints": 2, "ema_kimg": 0.1,
                  "grid_size": 4, "num_threads": 1, "out_dir": str(out)},
        "wandb": {"enabled": False},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_dict(RunConfig, data)


# ================================================================ per-step rows and a crash

def test_rows_between_a_tick_and_a_checkpoint_survive_a_crash(synthetic_shards: Path, tmp_path: Path) -> None:
    """Checkpoints every 3 steps, ticks every 2: the crash comes right after the checkpoint at step
    6, whose steps 5-6 no tick had logged yet. The resumed run starts at step 7, so unless rows are
    flushed at checkpoints too, steps 5 and 6 are lost for good."""
    from facegan.hooks import Hooks
    from facegan.loop import train

    out = tmp_path / "run"
    cfg = inproc_config(synthetic_shards, out, steps=12, tick=4, ckpt=6)

    class Crash(Exception):
        pass

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None and metrics["step"] == 6:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, hooks=Hooks(report=report))
    assert [r["step"] for r in step_rows(out)] == list(range(1, 7))
    resumed = from_dict(RunConfig, {**to_dict(cfg), "train": {**to_dict(cfg)["train"], "resume": "latest"}})
    train(resumed)
    assert check_step_rows(out, total_steps=12, resumed_from={6}) == 0
    check_checkpoints(out)


# ================================================================== disk full at a checkpoint

def _write_yaml(cfg: RunConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return path


def _one_line_error(stderr: str, *needles: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _is_state_file(f: Any) -> bool:
    """A checkpoint's state.pt (a path or an open file): torch.save also serializes into buffers
    (all_gather_object pickles tensors through it), which never touch the disk."""
    return str(getattr(f, "name", f)).endswith("state.pt")


def test_full_disk_at_the_second_checkpoint_stops_cleanly_and_resumes(
        synthetic_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """torch.save fails the way it does on a full disk (seen on a full tmpfs with torch 2.14: the
    file object's ENOSPC, then torch's own "unexpected pos" RuntimeError). `facegan train` exits 2
    with one line; the first checkpoint is intact and loads; resuming from it finishes the run."""
    out = tmp_path / "run"
    cfg = inproc_config(synthetic_shards, out, steps=12, tick=2, ckpt=4)
    path = _write_yaml(cfg, tmp_path / "run.yaml")
    real_save = torch.save
    calls: list[int] = []

    def full_disk_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if _is_state_file(f):
            calls.append(1)
        if len(calls) < 2:
            return real_save(obj, f, *args, **kwargs)
        with open(f, "wb") if isinstance(f, (str, Path)) else contextlib.nullcontext(f) as file:
            file.write(b"PK\x03\x04" + bytes(512))  # what fitted before the device was full
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk_save)
    assert cli(["train", str(path), "--no-ray"]) == 2
    _one_line_error(capsys.readouterr().err, "No space left on device", "ckpt-000000064", "are intact")
    (first,) = list_checkpoints(out / "checkpoints")
    assert first.name == "ckpt-000000032" and load_run(first).meta["step"] == 4
    check_checkpoints(out)

    monkeypatch.setattr(torch, "save", real_save)   # space freed: the same command resumes
    assert cli(["train", str(path), "--no-ray", "--set", "train.resume=latest"]) == 0
    final = list_checkpoints(out / "checkpoints")[-1]
    assert load_run(final).meta["images_seen"] == expected_steps(cfg, world_size=1) * BATCH == 96
    check_step_rows(out, total_steps=12, resumed_from={4})
    check_checkpoints(out)


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(["unshare", "-m", "bash", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


TMPFS_SIZE = "700k"   # one checkpoint of the tiny DCGAN (~490 KB) fits, a second beside it does not


def test_full_disk_on_a_real_tmpfs(synthetic_shards: Path, tmp_path: Path) -> None:
    """The checkpoints folder on a 700 KB tmpfs in a mount namespace of its own: the second
    checkpoint really runs out of space. Needs root (mount); skipped elsewhere."""
    if shutil.which("unshare") is None or not _can_mount_tmpfs(tmp_path / "probe"):
        skip_unless_required("FACEGAN_REQUIRE_MOUNTS", "needs `unshare -m` and `mount -t tmpfs` (root)")
    out = tmp_path / "run"
    cfg = inproc_config(synthetic_shards, out, steps=12, tick=2, ckpt=4, train={"keep_checkpoints": 1})
    path = _write_yaml(cfg, tmp_path / "run.yaml")
    ckpts, saved = out / "checkpoints", tmp_path / "saved"
    ckpts.mkdir(parents=True)
    # The tmpfs disappears with the namespace: copy what it holds out before the shell exits.
    script = (f"mount -t tmpfs -o size={TMPFS_SIZE} tmpfs {ckpts} && "
              f"{sys.executable} -m facegan.cli train {path} --no-ray 2> {tmp_path / 'stderr'}; "
              f"echo $? > {tmp_path / 'rc'}; ls -A {ckpts} > {tmp_path / 'listing'}; cp -a {ckpts} {saved}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    subprocess.run(["unshare", "-m", "bash", "-c", script], env=env, cwd=tmp_path, timeout=300, check=True)
    assert (tmp_path / "rc").read_text().strip() == "2"
    _one_line_error((tmp_path / "stderr").read_text(), "No space left on device", "ckpt-000000064", "are intact")
    assert (tmp_path / "listing").read_text().split() == ["ckpt-000000032"]   # no temporary folder either
    (first,) = list_checkpoints(saved)
    assert load_run(first).meta["step"] == 4

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed, ignore=shutil.ignore_patterns("checkpoints"))
    code = cli(["train", str(path), "--no-ray", "--set", f"train.out_dir={resumed}",
                "--set", f"train.resume={first}"])
    assert code == 0
    assert load_run(list_checkpoints(resumed / "checkpoints")[-1]).meta["images_seen"] == 96
    check_step_rows(resumed, total_steps=12, resumed_from={4})
    check_checkpoints(resumed)


# ==================================================================== inside each chaos rank

def chaos_train(cfg: RunConfig, *, hooks: Any, faults: list[dict[str, Any]]) -> dict[str, float]:
    """observed_train, plus the run's faults: each fires once per run, midway through its step
    (after that step's first optimizer step), on its victim rank (fault["rank"], or the rank on
    fault["node"]). Faults and errors are logged to <out_dir>/faults.jsonl."""
    import ray
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from facegan.families import FAMILIES

    out = Path(cfg.train.out_dir)

    def log(**row: Any) -> None:
        with open(out / "faults.jsonl", "a") as f:
            f.write(json.dumps(dict(row, rank=hooks.rank, pid=os.getpid(), time=time.time())) + "\n")

    node = ray.get_runtime_context().get_node_id()
    resume = hooks.resume_from()
    start = json.loads((Path(resume) / "meta.json").read_text())["step"] if resume else 0
    per_step = sum(p.repeat for p in FAMILIES[cfg.model.family].phases(cfg))
    mine = {(f["step"] - 1 - start) * per_step + 1: f for f in faults
            if f["step"] > start and (hooks.rank == f.get("rank") or node == f.get("node"))}
    count = [0]

    def after_optimizer_step(*_: Any) -> None:
        count[0] += 1
        fault = mine.get(count[0])
        if fault is None:
            return
        try:  # once per run: a later attempt passes this step again
            os.close(os.open(out / f"fault-{fault['index']}-fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        log(event="fault", index=fault["index"], kind=fault["kind"], step=fault["step"], node=node)
        if fault["kind"] == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault["kind"] == "sigstop":
            os.kill(os.getpid(), signal.SIGSTOP)
        else:  # node_removal: stay in the step until the test removes this node (and this process)
            time.sleep(300)

    handle = register_optimizer_step_post_hook(after_optimizer_step) if mine else None
    try:
        return observed_train(cfg, hooks=hooks)
    except BaseException as exc:
        log(event="error", error=repr(exc)[:300])
        raise
    finally:
        if handle is not None:
            handle.remove()


# ====================================================================== the chaos series (Ray)

def fault_events(out: Path) -> list[dict[str, Any]]:
    path = out / "faults.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def chaos_plan(seed: int) -> list[dict[str, Any]]:
    """One fault of each kind, in a seeded order; fault i at a seeded step of window i (each window
    starts 5 steps past a checkpoint, so the previous attempt has reported one twice over), on a
    seeded victim rank."""
    rng = random.Random(seed)
    plan = []
    for i, kind in enumerate(rng.sample(FAULT_KINDS, len(FAULT_KINDS))):
        low = (2 * i + 1) * EVERY + 5
        plan.append({"index": i, "kind": kind, "step": rng.randint(low, low + EVERY - 2),
                     "rank": rng.randrange(2) if kind != "node_removal" else None})
    assert plan[-1]["step"] < STEPS
    return plan


def _ship_by_value() -> None:
    # Workers cannot import test modules: chaos_train and observed_train travel by value.
    import ray.cloudpickle

    import test_launch

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(test_launch)


def _durable(rank0_reports: list[dict[str, Any]]) -> int | None:
    """The newest checkpoint step rank 0 reported with two more reports after it (so Ray had
    registered it, and a restart must not go back past it); see test_launch.durable_checkpoint."""
    rows = rank0_reports
    return max((r["step"] for i, r in enumerate(rows) if r["checkpoint"] and i + 2 < len(rows)), default=None)


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return status == "Z"


def check_restarts(out: Path, faults: list[dict[str, Any]], fired: list[dict[str, Any]]) -> list[int]:
    """test_launch.check_recovery for a run with several restarts; returns each restart's resume step.

    Attempt i+1 resumes (both ranks alike) from a checkpoint an earlier attempt wrote, no older
    than the last one durable when fault i struck and no newer than the step attempt i reached;
    its reports continue at the next tick; every step any attempt ran has the same parameters in
    every attempt and on both ranks (exact resume, DDP in sync); no process survives a restart."""
    runs = attempts(out)
    assert len(runs) == len(faults) + 1, f"{len(faults)} faults, {len(runs)} attempts"
    written: set[int] = set()
    resumes = []
    digests: dict[int, set[str]] = {}
    for i, (before, after) in enumerate(zip(runs, runs[1:])):
        assert sorted(before) == sorted(after) == [0, 1]
        rows = before[0]["reports"]
        written |= {r["step"] for r in rows if r["checkpoint"]}
        reached = max((r["step"] for r in rows), default=0)
        assert reached < fired[i]["step"], "the fault came after the step it was planned for"
        (r,) = {info["start"]["resume_step"] for info in after.values()}
        floor = _durable(rows) or before[0]["start"]["resume_step"] or 0
        assert r in written and r % EVERY == 0 and floor <= r <= reached, (i, r, floor, reached, sorted(written))
        for info in after.values():
            steps = [x["step"] for x in info["reports"]]
            assert steps[0] == r + TICK - r % TICK and all(b > a for a, b in zip(steps, steps[1:])), steps
        assert {x["start"]["pid"] for x in before.values()}.isdisjoint(x["start"]["pid"] for x in after.values())
        resumes.append(r)
    for run in runs:
        for info in run.values():
            for x in info["reports"]:
                digests.setdefault(x["step"], set()).add(x["digest"])
    assert sorted(digests) == list(range(TICK, STEPS + 1, TICK))
    assert all(len(d) == 1 for d in digests.values()), "a step came out differently in two attempts or ranks"
    return resumes


@pytest.mark.slow
@pytest.mark.kills_ray_processes
def test_chaos_series_every_fault_is_survived_exactly(ray_cluster: Any, synthetic_shards: Path,
                                                      tmp_path: Path) -> None:
    """A seeded series of faults on the two-node cluster, one run of 42 steps: a worker SIGKILLed,
    the worker node removed (and replaced), a worker SIGSTOPped (hung: detected within
    ray.collective_timeout_s=20), each at a seeded step. After each, Ray Train restarts the group
    from the last checkpoint; the run finishes with exact accounting (module docstring).

    One run rather than one per fault: each run's first worker-group start costs ~20-30 s here,
    and a restart after a restart is the harder case."""
    from facegan.launch.trainer import run_training

    _ship_by_value()
    out = tmp_path / "run"
    cfg = tiny_config(synthetic_shards, out, steps=STEPS, tick_steps=TICK, ckpt_steps=EVERY,
                      train={"keep_checkpoints": 3},
                      ray={"placement_strategy": "STRICT_SPREAD", "max_failures": len(FAULT_KINDS),
                           "collective_timeout_s": HANG_TIMEOUT_S})
    (worker_node,) = ray_cluster.worker_nodes
    faults = [dict(f, node=worker_node.node_id) if f["kind"] == "node_removal" else f for f in chaos_plan(CHAOS_SEED)]
    assert sorted(f["kind"] for f in faults) == sorted(FAULT_KINDS)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = run_training(cfg, config_dict=to_dict(cfg),
                                             train_fn=functools.partial(chaos_train, faults=faults))
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    t0 = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    fired: list[dict[str, Any]] = []
    try:
        for fault in faults:
            event = wait_for(lambda: [e for e in fault_events(out) if e.get("index") == fault["index"]],
                             timeout=240, what=f"fault {fault}")[0]
            fired.append(event)
            if fault["kind"] == "node_removal":
                # Cluster changes happen on the main thread; the run is in the other one.
                ray_cluster.remove_node(worker_node, allow_graceful=False)
                ray_cluster.add_node(**node_args())
        thread.join(timeout=300)
        seconds = time.monotonic() - t0
        deadline = time.monotonic() + 15
        while not all(_gone(e["pid"]) for e in fired) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = [e for e in fired if not _gone(e["pid"])]
    finally:
        for e in fired:  # never leave a stopped worker behind, even when failing
            if not _gone(e["pid"]):
                os.kill(e["pid"], signal.SIGKILL)
    assert not survivors, f"Ray left these victims alive: {survivors}"
    assert not thread.is_alive(), "the run did not finish"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]

    resumes = check_restarts(out, faults, fired)
    assert result["metrics"]["step"] == STEPS
    final = load_run(Path(result["checkpoint"]))
    total = expected_steps(cfg, world_size=2)
    assert total == STEPS == final.meta["step"] and final.meta["world_size"] == 2
    assert final.meta["images_seen"] == total * 2 * cfg.data.batch_size
    redone = check_step_rows(out, total_steps=total, resumed_from=set(resumes))
    num_ckpts = check_checkpoints(out, run_dir=Path(result["run_dir"]))

    runs = attempts(out)
    figures = []
    for i, (fault, event) in enumerate(zip(faults, fired)):
        row = {"kind": fault["kind"], "step": fault["step"], "victim_rank": event["rank"],
               "resumed_from": resumes[i],
               "restart_s": round(min(x["start"]["time"] for x in runs[i + 1].values()) - event["time"], 1)}
        if fault["kind"] == "sigstop":
            # Detected when the healthy rank's collective timed out (Ray's health check of the
            # frozen worker gives up at the same ray.collective_timeout_s).
            errors = [e["time"] for e in fault_events(out) if e["event"] == "error" and e["pid"] != event["pid"]
                      and e["time"] > event["time"]]
            assert errors, "the healthy rank never raised: the hang went undetected"
            row["detection_s"] = round(min(errors) - event["time"], 1)
            assert row["detection_s"] <= min(HANG_TIMEOUT_S + 10, 60), row
        if fault["kind"] == "node_removal":
            nodes_after = {x["start"]["node"] for x in runs[i + 1].values()}
            assert worker_node.node_id not in nodes_after and len(nodes_after) == 2
        figures.append(row)
    print(f"\nchaos series (seed {CHAOS_SEED}): {len(fired)} faults survived in {seconds:.0f} s; "
          f"{redone} steps redone; {num_ckpts} checkpoints load")
    for row in figures:
        print("  " + json.dumps(row))
    (tmp_path / "chaos.json").write_text(json.dumps(figures, indent=1))


def test_a_ranks_user_error_ends_a_ray_run_as_one_line() -> None:
    """run_training re-raises a rank's UserError (a full disk at a checkpoint) from Ray's
    WorkerGroupError, so `facegan train` and ray_jobs/ exit 2 with one line."""
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from facegan.launch.trainer import user_error

    full = CheckpointError("cannot write checkpoint /r/ckpt-2: No space left on device; earlier checkpoints "
                           "in /r are intact")
    failed = WorkerGroupError("rank 0 and 1 failed", {
        1: UserExceptionWithTraceback(RuntimeError("Connection closed by peer"), "Traceback ..."),
        0: UserExceptionWithTraceback(full, "Traceback ...")})
    found = user_error(failed)
    assert isinstance(found, CheckpointError) and str(found) == f"rank 0: {full}"
    assert user_error(WorkerGroupError("x", {0: UserExceptionWithTraceback(RuntimeError("bug"), "tb")})) is None
    assert user_error(RuntimeError("not Ray's")) is None


# ============================================================================ the config knob

def test_collective_timeout_reaches_torch_and_ray_train(tmp_path: Path) -> None:
    from facegan.config import ConfigError
    from facegan.launch.trainer import HEALTH_CHECK_TIMEOUT_VAR, REPORT_TIMEOUT_VAR, hang_timeouts, make_trainer

    for bad in (0, 5, 86401):
        with pytest.raises(ConfigError, match=f"ray.collective_timeout_s: expected 10..86400 seconds, got {bad}"):
            tiny_config(tmp_path, tmp_path / "o", steps=2, tick_steps=1, ckpt_steps=1, ray={"collective_timeout_s": bad})
    cfg = tiny_config(tmp_path, tmp_path / "o", steps=2, tick_steps=1, ckpt_steps=1, ray={"collective_timeout_s": 42})
    assert tiny_config(tmp_path, tmp_path / "o", steps=2, tick_steps=1, ckpt_steps=1).ray.collective_timeout_s == 300
    trainer = make_trainer(cfg, config_dict=to_dict(cfg))
    assert trainer.backend_config.timeout_s == 42      # torch.distributed's process-group timeout
    before = {k: os.environ.get(k) for k in (HEALTH_CHECK_TIMEOUT_VAR, REPORT_TIMEOUT_VAR)}
    with hang_timeouts(cfg):
        # Ray Train's controller reads these from the driver's environment when fit() starts.
        assert os.environ[HEALTH_CHECK_TIMEOUT_VAR] == os.environ[REPORT_TIMEOUT_VAR] == "42"
    assert {k: os.environ.get(k) for k in before} == before
