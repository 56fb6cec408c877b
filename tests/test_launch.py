"""The Ray layer: cluster.yaml, the offline environment, and Ray Train runs of the real loop.

Slow tests share one simulated two-node cluster (conftest_ray.ray_cluster). They run
`facegan.loop.train` through `run_training`, some wrapped by `observed_train`, which logs per
rank what the runner gave it (rank, node, the checkpoint it resumed from), the shards it opened
and a digest of its parameters at every report, so tests can check DDP from the outside.

    .venv/bin/python -m pytest -q tests/test_launch.py
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from conftest import REPO
from conftest_ray import HEALTH_CHECK_INTERVAL_S, free_port, node_args
from facegan.checkpoint import load_checkpoint
from facegan.config import from_dict, to_dict
from facegan.families import RunConfig
from facegan.launch.cluster import BOOTSTRAP_FILE, ensure_bootstrap_file, offline_env, state_dir
from facegan.launch.trainer import localize

BATCH = 8            # per worker; 2 workers -> 16 images per step
STEP_KIMG = 2 * BATCH / 1000


def tiny_config(shards: Path, out_dir: Path, *, steps: int, tick_steps: int, ckpt_steps: int,
                **sections: dict[str, Any]) -> RunConfig:
    """A DCGAN at 32 px with 8 base channels: a step costs milliseconds, Ray's reports dominate."""
    data = {
        "data": {"shards": str(shards), "batch_size": BATCH, "num_workers": 0, "shuffle_buffer": 16},
        "model": {"resolution": 32, "base_channels": 8, "z_dim": 16},
        "train": {"total_kimg": steps * STEP_KIMG, "tick_kimg": tick_steps * STEP_KIMG,
                  "checkpoint_kimg": ckpt_steps * STEP_KIMG, "keep_checkpoints": 2, "ema_kimg": 0.1,
                  "grid_size": 4, "num_threads": 1, "out_dir": str(out_dir)},
        "ray": {"num_workers": 2, "max_failures": 2},
        "wandb": {"enabled": False},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_dict(RunConfig, data)


# ============================================================ what each rank did, seen from inside

def observed_train(cfg: RunConfig, *, hooks: Any) -> dict[str, float]:
    """facegan.loop.train, logging this rank's view to <out_dir>/observe/rank<R>-pid<P>.jsonl."""
    import ray

    import facegan.data.stream as stream
    from facegan.loop import train

    path = Path(cfg.train.out_dir) / "observe" / f"rank{hooks.rank}-pid{os.getpid()}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(**row: Any) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")

    resume = hooks.resume_from()
    resume_step = json.loads((Path(resume) / "meta.json").read_text())["step"] if resume else None
    write(event="start", rank=hooks.rank, world_size=hooks.world_size, pid=os.getpid(), time=time.time(),
          node=ray.get_runtime_context().get_node_id(), resume_step=resume_step)
    models: list[Any] = []

    def wrap_model(module: Any, device: Any, **ddp_options: Any) -> Any:
        wrapped = hooks.wrap_model(module, device, **ddp_options)
        models.append(wrapped)
        write(event="wrap", net=type(module).__name__, bucket_bytes_cap=getattr(wrapped, "bucket_bytes_cap", None),
              gradient_as_bucket_view=getattr(wrapped, "gradient_as_bucket_view", None))
        return wrapped

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        digest = hashlib.sha256()
        for model in models:
            for p in model.parameters():
                digest.update(p.detach().cpu().numpy().tobytes())
        write(event="report", step=int(metrics["step"]), digest=digest.hexdigest(),
              checkpoint=checkpoint_dir is not None)
        hooks.report(metrics, checkpoint_dir)

    real_open = stream.open_url

    def open_url(url: str) -> Any:
        write(event="open", url=url)
        return real_open(url)

    stream.open_url = open_url
    try:
        return train(cfg, hooks=dataclasses.replace(hooks, resume_from=lambda: resume, wrap_model=wrap_model,
                                                    report=report))
    finally:
        stream.open_url = real_open


def ray_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoint folders Ray keeps for a run, oldest first (names are timestamps)."""
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def observations(out_dir: Path) -> list[dict[str, Any]]:
    """Every rank's log rows, each tagged with its file (one file per rank per attempt)."""
    rows = []
    for path in sorted((out_dir / "observe").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rows.append(dict(json.loads(line), file=path.name))
            except json.JSONDecodeError:  # a line being written while the test polls
                pass
    return rows


def _ship_by_value() -> None:
    # Workers cannot import this test module: send observed_train itself, not a reference to it.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def run_in_thread(cfg: RunConfig) -> tuple[threading.Thread, dict[str, Any]]:
    """run_training in a thread, so this (main) thread can kill workers or change nodes meanwhile."""
    from facegan.launch.trainer import run_training

    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = run_training(cfg, config_dict=to_dict(cfg), train_fn=observed_train)
        except BaseException as exc:  # reported by the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def durable_checkpoint(out_dir: Path) -> tuple[int, int] | None:
    """(step of rank 0's newest checkpoint whose report has returned, step rank 0 has reached).

    ray.train.report returns once the controller collected the report; rank 0 logging two more
    reports after it means the checkpoint was registered, so a crash now must not lose it.
    """
    rows = [r for r in observations(out_dir) if r["event"] == "report" and r["file"].startswith("rank0-")]
    returned = [r["step"] for i, r in enumerate(rows) if r["checkpoint"] and i + 2 < len(rows)]
    return (max(returned), rows[-1]["step"]) if returned else None


def attempts(out_dir: Path) -> list[dict[int, dict[str, Any]]]:
    """Per attempt, in start order: rank -> {"start": row, "reports": rows}.

    Every attempt starts world_size fresh processes within seconds of each other, and a
    restart comes many seconds later, so start rows in time order fall into attempts.
    """
    rows = observations(out_dir)
    starts = sorted((r for r in rows if r["event"] == "start"), key=lambda r: r["time"])
    size = starts[0]["world_size"] if starts else 1
    return [{s["rank"]: {"start": s, "reports": [r for r in rows if r["file"] == s["file"] and r["event"] == "report"]}
             for s in starts[i:i + size]} for i in range(0, len(starts), size)]


def check_recovery(out_dir: Path, *, c_durable: int, reached: int, total_steps: int, tick_steps: int,
                   ckpt_steps: int, result: dict[str, Any]) -> dict[str, Any]:
    """Assertions shared by the worker-kill and node-loss tests; returns the second attempt."""
    runs = attempts(out_dir)
    assert len(runs) == 2, f"expected one restart, saw {len(runs)} attempts"
    first, second = runs
    assert sorted(first) == sorted(second) == [0, 1]
    assert reached < total_steps, "the failure came after the run had finished"
    # Resumed from a checkpoint the first attempt wrote, and not from one older than the last
    # checkpoint that was durable when the failure happened (nor from scratch).
    written = {r["step"] for r in first[0]["reports"] if r["checkpoint"]}
    resumed = {info["start"]["resume_step"] for info in second.values()}
    assert len(resumed) == 1, f"ranks resumed from different checkpoints: {resumed}"
    (r,) = resumed
    assert r in written and r % ckpt_steps == 0 and r >= c_durable, (r, written, c_durable)
    pids_before = {info["start"]["pid"] for info in first.values()}
    assert pids_before.isdisjoint(info["start"]["pid"] for info in second.values())
    # The step counter continues from that checkpoint: never back past it, no tick skipped.
    for info in second.values():
        steps = [x["step"] for x in info["reports"]]
        assert steps[0] == r + tick_steps - r % tick_steps and steps[-1] == total_steps, steps
        assert all(b > a for a, b in zip(steps, steps[1:])), steps
    # Resuming restores RNG and stream position too: the steps both attempts ran came out bit-identical.
    before = {x["step"]: x["digest"] for x in first[0]["reports"]}
    again = {x["step"]: x["digest"] for x in second[0]["reports"] if x["step"] in before}
    assert all(before[step] == digest for step, digest in again.items())
    assert again or max(before) == r, "no step was run twice, so nothing was compared"
    assert result["metrics"]["step"] == total_steps
    meta = json.loads((Path(result["checkpoint"]) / "meta.json").read_text())
    assert meta["step"] == total_steps and meta["world_size"] == 2
    return second


# ================================================================================== fast tests

def test_cluster_yaml_is_a_valid_launcher_config() -> None:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    validate_config(config)  # the launcher's own checks on top: head type listed, worker counts
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate({**config, "max_worker": 4}, schema)  # a typo is caught, not ignored

    nodes = config["available_node_types"]
    head, workers = nodes[config["head_node_type"]], [v for k, v in nodes.items() if k != config["head_node_type"]]
    assert config["provider"]["type"] == "aws"
    assert head["resources"].get("CPU") == 0 and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    assert any(w["node_config"]["InstanceType"].startswith(("g", "p")) and w["max_workers"] >= 1 for w in workers)
    assert sum(w.get("min_workers", 0) for w in workers) <= config["max_workers"]
    setup = " ".join(config["setup_commands"])
    assert "requirements.lock" in setup and "-e /home/ray/facegan" in setup
    # s3://, the layout cluster.yaml describes, needs s3fs: pinned in the lock every node installs.
    assert any(line.startswith("s3fs==") for line in (REPO / "requirements.lock").read_text().splitlines())
    assert "/home/ray/facegan" in config["file_mounts"]
    assert ray.__version__ in config["docker"]["worker_image"]
    for cmd in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in cmd and "--disable-usage-stats" in cmd


def test_offline_env_writes_bootstrap_file_and_never_overwrites(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = offline_env({"HOME": str(home), "PATH": "/usr/bin", "WANDB_MODE": "online"})
    boot = home / BOOTSTRAP_FILE
    assert yaml.safe_load(boot.read_text())["provider"] == {"type": "local"}
    assert env["HOME"] == str(home) and env["PATH"] == "/usr/bin"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["RAY_USAGE_STATS_REPORT_URL"].startswith("http://127.0.0.1:")
    assert env["WANDB_MODE"] == "offline"  # no key: forced offline even when asked for online
    assert "attempts:0" in env["RES_OPTIONS"]

    launcher_file = "provider: {type: aws, region: us-west-2}\nhead_node_type: head\n"
    boot.write_text(launcher_file)
    offline_env({"HOME": str(home)})
    assert ensure_bootstrap_file(home) == boot and boot.read_text() == launcher_file

    keyed = offline_env({"HOME": str(home), "WANDB_API_KEY": "k", "WANDB_MODE": "online",
                         "FACEGAN_ALLOW_DNS": "1", "RES_OPTIONS": "rotate"})
    assert keyed["WANDB_MODE"] == "online" and keyed["RES_OPTIONS"] == "rotate"
    assert offline_env({"HOME": str(home), "WANDB_MODE": "disabled"})["WANDB_MODE"] == "disabled"


def test_localize_makes_local_paths_absolute_and_keeps_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    plain = to_dict(tiny_config(Path("shards"), Path("runs/a"), steps=2, tick_steps=1, ckpt_steps=1))
    local = localize(plain)
    assert local["train"]["out_dir"] == str(tmp_path / "runs" / "a")
    assert local["data"]["shards"] == str(tmp_path / "shards")
    assert plain["train"]["out_dir"] == "runs/a"  # the caller's dict is left alone
    remote = localize({**plain, "data": {**plain["data"], "shards": "s3://bucket/set"},
                       "ray": {**plain["ray"], "storage_path": "s3://bucket/runs"}})
    assert remote["data"]["shards"] == "s3://bucket/set" and remote["ray"]["storage_path"] == "s3://bucket/runs"


def test_ray_job_entry_rejects_bad_configs_before_ray_starts(tmp_path: Path, synthetic_shards: Path) -> None:
    good = to_dict(tiny_config(synthetic_shards, tmp_path / "out", steps=2, tick_steps=1, ckpt_steps=1))
    # An unreachable cluster address: had it started or joined Ray, it would not exit like this.
    env = dict(offline_env({**os.environ, "HOME": str(tmp_path / "home")}), RAY_ADDRESS=f"127.0.0.1:{free_port()}")
    cases = {
        "unknown": ({**good, "train": {**good["train"], "totl_kimg": 1}}, "train.totl_kimg"),
        "resolution": ({**good, "model": {**good["model"], "resolution": 64}}, "model.resolution 64 does not match"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "ray_jobs/train.py", "--config", str(path)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert message in proc.stderr, (name, proc.stderr)
        assert time.monotonic() - t0 < 60
    # --set applies before validation: a good file made bad on the command line fails the same way.
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    overridden = subprocess.run([sys.executable, "ray_jobs/train.py", "--config", str(tmp_path / "good.yaml"),
                                 "--set", "model.resolution=64"], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=120)
    assert overridden.returncode == 2 and "model.resolution 64 does not match" in overridden.stderr

    # The classifier's entry checks its own config kind the same way, and both check the shard set's labels.
    clf = {"data": {"shards": str(synthetic_shards), "batch_size": 8, "num_workers": 0},
           "model": {"arch": "report_cnn", "resolution": 32}, "train": {"total_kimg": 0.1, "out_dir": str(tmp_path)},
           "wandb": {"enabled": False}}
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(synthetic_shards, unlabelled)
    manifest = json.loads((unlabelled / "manifest.json").read_text())
    (unlabelled / "manifest.json").write_text(json.dumps({**manifest, "attr_names": []}))
    cases = {
        "clf_unknown": ("classifier", {**clf, "model": {**clf["model"], "arch": "resnet50"}}, "model.arch"),
        "clf_gan_key": ("classifier", {**clf, "gan": {"alpha": 0.5}}, "unknown key gan"),
        "clf_resolution": ("classifier", {**clf, "model": {**clf["model"], "resolution": 64}},
                           "model.resolution 64 does not match"),
        "clf_labels": ("classifier", {**clf, "data": {**clf["data"], "shards": str(unlabelled)}},
                       "needs attribute labels, but the shards in"),
        # A GAN family that takes attributes needs labelled shards too; refused before Ray as well.
        "gan_labels": ("train", {**good, "model": {**good["model"], "family": "conditional"}, "gan": {},
                                 "data": {**good["data"], "shards": str(unlabelled)}}, "needs attribute labels"),
    }
    for name, (entry, data, message) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        proc = subprocess.run([sys.executable, f"ray_jobs/{entry}.py", "--config", str(path)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, (name, proc.stdout, proc.stderr)


# ============================================================================ on the Ray cluster

@pytest.mark.slow
def test_ddp_run_one_worker_per_node_disjoint_shards_identical_params(
        ray_cluster: Any, synthetic_shards: Path, tmp_path: Path) -> None:
    import ray

    from facegan.checkpoint import load_checkpoint
    from facegan.launch.trainer import run_training, wandb_run_id

    _ship_by_value()
    steps = 12
    cfg = tiny_config(synthetic_shards, tmp_path / "run", steps=steps, tick_steps=1, ckpt_steps=4,
                      ray={"placement_strategy": "STRICT_SPREAD", "ddp_bucket_cap_mb": 1,
                           "ddp_gradient_as_bucket_view": True},
                      wandb={"enabled": True, "project": "facegan-test"})
    result = run_training(cfg, config_dict=to_dict(cfg), train_fn=observed_train)

    # Finished, and left checkpoints: Ray's (pruned to keep_checkpoints) and the loop's own.
    assert result["metrics"]["step"] == steps and result["metrics"]["kimg"] == pytest.approx(steps * STEP_KIMG)
    ray_ckpts = ray_checkpoints(Path(result["run_dir"]))
    assert len(ray_ckpts) == cfg.train.keep_checkpoints
    assert Path(result["checkpoint"]) == ray_ckpts[-1]
    state, meta = load_checkpoint(Path(result["checkpoint"]))
    assert meta["step"] == steps and meta["world_size"] == 2 and {"G", "D", "G_ema"} <= set(state)
    assert sorted(json.loads((c / "meta.json").read_text())["step"] for c in ray_ckpts) == [8, 12]
    cfg_out = Path(cfg.train.out_dir)
    assert len(list((cfg_out / "checkpoints").glob("ckpt-*"))) == cfg.train.keep_checkpoints
    # W&B ran on rank 0 only, offline, as one run named after the Ray run.
    runs = list((cfg_out / "wandb").glob("*-run-*"))
    assert [r.name.split("-run-")[0] for r in runs] == ["offline"] and result["wandb_dir"] == str(runs[0])
    assert runs[0].name.endswith(wandb_run_id(cfg))

    rows = observations(cfg_out)
    starts = {r["rank"]: r for r in rows if r["event"] == "start"}
    assert sorted(starts) == [0, 1] and all(s["world_size"] == 2 and s["resume_step"] is None for s in starts.values())
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert starts[0]["node"] != starts[1]["node"] and {starts[0]["node"], starts[1]["node"]} == alive

    # The run's DDP options reached DistributedDataParallel through Ray's prepare_model, on both ranks.
    wraps = [r for r in rows if r["event"] == "wrap"]
    assert sorted(r["net"] for r in wraps) == sorted(["DCGANGenerator", "DCGANDiscriminator"] * 2)
    assert all(r["bucket_bytes_cap"] == 2**20 and r["gradient_as_bucket_view"] is True for r in wraps), wraps

    opened = {rank: {r["url"] for r in rows if r["event"] == "open" and r["file"].startswith(f"rank{rank}-")}
              for rank in (0, 1)}
    assert opened[0] and opened[1] and opened[0].isdisjoint(opened[1])
    assert all("/train-" in url for urls in opened.values() for url in urls)

    digests = {rank: {r["step"]: r["digest"] for r in rows
                      if r["event"] == "report" and r["file"].startswith(f"rank{rank}-")} for rank in (0, 1)}
    assert sorted(digests[0]) == sorted(digests[1]) == list(range(1, steps + 1))
    assert all(digests[0][s] == digests[1][s] for s in range(1, steps + 1)), "ranks diverged"
    # Ranks read different data, so equal parameters mean their gradients were averaged.
    assert len(set(digests[0].values())) == steps, "parameters did not change at every step"


@pytest.mark.slow
def test_one_worker_run_through_the_default_loop(ray_cluster: Any, synthetic_shards: Path, tmp_path: Path) -> None:
    """One rank: prepare_model hands back the bare module, and facegan.loop.train runs as is."""
    from facegan.checkpoint import load_checkpoint
    from facegan.launch.trainer import run_training

    cfg = tiny_config(synthetic_shards, tmp_path / "run", steps=2, tick_steps=1, ckpt_steps=2,
                      ray={"num_workers": 1})  # 32 images = 4 steps of 8 on one rank
    result = run_training(cfg, config_dict=to_dict(cfg))
    state, meta = load_checkpoint(Path(result["checkpoint"]))
    assert result["metrics"]["step"] == meta["step"] == 4 and meta["world_size"] == 1
    assert len(ray_checkpoints(Path(result["run_dir"]))) == 1 and {"G", "D"} <= set(state)


def _worker_pid(out_dir: Path, rank: int) -> int:
    (row,) = [r for r in observations(out_dir) if r["event"] == "start" and r["rank"] == rank]
    return row["pid"]


@pytest.mark.slow
@pytest.mark.kills_ray_processes
def test_sigkilled_worker_restarts_from_latest_checkpoint(
        ray_cluster: Any, synthetic_shards: Path, tmp_path: Path) -> None:
    import psutil

    _ship_by_value()
    steps, tick, every = 30, 2, 6
    out = tmp_path / "run"
    cfg = tiny_config(synthetic_shards, out, steps=steps, tick_steps=tick, ckpt_steps=every,
                      train={"keep_checkpoints": 3})
    thread, outcome = run_in_thread(cfg)
    c_durable, reached = wait_for(lambda: durable_checkpoint(out), timeout=120, what="a durable checkpoint")
    victim = _worker_pid(out, 0)  # rank 0: it writes the checkpoints
    losses = out / "losses.jsonl"
    offset = losses.stat().st_size
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=180)
    assert not thread.is_alive(), "the run did not finish after the restart"
    assert "error" not in outcome, outcome.get("error")
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE

    check_recovery(out, c_durable=c_durable, reached=reached, total_steps=steps, tick_steps=tick, ckpt_steps=every,
                   result=outcome["result"])
    # The loop's own log agrees: everything written after the kill is past the checkpoint.
    later = [json.loads(line) for line in losses.read_text()[offset:].splitlines() if line.strip()]
    assert later and min(r["step"] for r in later) > c_durable
    assert max(r["step"] for r in later) == steps


@pytest.mark.slow
@pytest.mark.kills_ray_processes
def test_node_removed_mid_run_restarts_from_latest_checkpoint(
        ray_cluster: Any, synthetic_shards: Path, tmp_path: Path) -> None:
    _ship_by_value()
    steps, tick, every = 30, 2, 6
    out = tmp_path / "run"
    cfg = tiny_config(synthetic_shards, out, steps=steps, tick_steps=tick, ckpt_steps=every,
                      train={"keep_checkpoints": 3}, ray={"placement_strategy": "STRICT_SPREAD"})
    (worker_node,) = ray_cluster.worker_nodes
    thread, outcome = run_in_thread(cfg)
    c_durable, reached = wait_for(lambda: durable_checkpoint(out), timeout=120, what="a durable checkpoint")
    # Cluster changes must happen on the main thread; the run is in the other one.
    ray_cluster.remove_node(worker_node, allow_graceful=False)
    replacement = ray_cluster.add_node(**node_args())
    thread.join(timeout=180)
    assert not thread.is_alive(), "the run did not finish after the node was replaced"
    assert "error" not in outcome, outcome.get("error")

    second = check_recovery(out, c_durable=c_durable, reached=reached, total_steps=steps, tick_steps=tick,
                            ckpt_steps=every, result=outcome["result"])
    first = attempts(out)[0]
    assert worker_node.node_id in {info["start"]["node"] for info in first.values()}
    nodes_after = {info["start"]["node"] for info in second.values()}
    assert len(nodes_after) == 2 and replacement.node_id in nodes_after and worker_node.node_id not in nodes_after


# ======================================================== make ray-up / ray job submit / ray-down

@pytest.mark.slow
def test_make_ray_up_job_submit_ray_down(synthetic_shards: Path, tmp_path: Path) -> None:
    """The README's remote path on a head of its own: `make ray-up` (token auth), a real
    `ray job submit` of ray_jobs/train.py with a --set override, W&B offline, a classifier run through
    ray_jobs/classifier.py, a toy sweep submitted through ray_jobs/tune.py, `make ray-down`."""
    home = tmp_path / "home"
    port, dash = free_port(), free_port()
    # Free ports, not 6379/8265: a head someone started on this machine must not be touched.
    env = offline_env({**os.environ, "HOME": str(home), "FACEGAN_RAY_PORT": str(port),
                       "FACEGAN_RAY_DASHBOARD_PORT": str(dash)})
    # -o: never reinstall the venv from the registries here, whatever its timestamps say.
    make = ["make", "--no-print-directory", "-o", ".venv/.installed"]
    up = subprocess.run(make + ["ray-up"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"127.0.0.1:{port}" in up.stdout and f"http://127.0.0.1:{dash}" in up.stdout
        assert (home / ".ray" / "auth_token").is_file() and (home / BOOTSTRAP_FILE).is_file()

        out = tmp_path / "job_out"
        cfg = tiny_config(synthetic_shards, out, steps=12, tick_steps=2, ckpt_steps=3, wandb={"enabled": True})
        config_path = tmp_path / "tiny.yaml"
        config_path.write_text(yaml.safe_dump(to_dict(cfg)))
        job_env = dict(env, RAY_AUTH_MODE="token")
        unauthenticated = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "list", f"--address=http://127.0.0.1:{dash}"],
            cwd=REPO, env=dict(env, HOME=str(tmp_path / "stranger")), capture_output=True, text=True, timeout=120)
        assert unauthenticated.returncode != 0  # token auth is on: no token, no jobs
        submit = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", f"--address=http://127.0.0.1:{dash}",
             "--working-dir", ".", "--runtime-env-json",
             # WANDB_MODE is also one the driver sets for its workers: Ray must not see it twice.
             json.dumps({"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": HEALTH_CHECK_INTERVAL_S,
                                      "WANDB_MODE": "offline"}}),
             "--", "python", "ray_jobs/train.py", "--config", str(config_path), "--set", "train.total_kimg=0.096",
             # ADA (p adapted from r_t over both workers) and lazy R1, chosen at submit time.
             "--set", "augment.kind=ada", "--set", "augment.p=0.5", "--set", "augment.interval=2",
             "--set", "augment.speed_kimg=0.16", "--set", "gan.r1_gamma=1.0", "--set", "gan.r1_interval=2"],
            cwd=REPO, env=job_env, capture_output=True, text=True, timeout=300)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
        assert "succeeded" in (submit.stdout + submit.stderr).lower()
        meta = json.loads((ray_checkpoints(out / "ray" / out.name)[-1] / "meta.json").read_text())
        assert meta["step"] == 6 and meta["world_size"] == 2  # 12 steps in the file, 6 after --set
        state, _ = load_checkpoint(ray_checkpoints(out / "ray" / out.name)[-1])
        assert float(state["augment"]["p"]) != pytest.approx(0.5)   # ADA's p moved and was checkpointed
        assert list((out / "wandb").glob("offline-run-*"))

        # An attribute classifier goes the same way: ray_jobs/classifier.py.
        clf_out = tmp_path / "clf_out"
        clf_path = tmp_path / "clf.yaml"
        clf_path.write_text(yaml.safe_dump({
            "data": {"shards": str(synthetic_shards), "batch_size": 16, "num_workers": 0, "shuffle_buffer": 16},
            "model": {"arch": "report_cnn", "resolution": 32, "dense_units": 32},
            "train": {"total_kimg": 0.128, "tick_kimg": 0.064, "checkpoint_kimg": 0.128, "num_threads": 1,
                      "out_dir": str(clf_out)},
            "eval": {"splits": ["val"]}, "ray": {"num_workers": 2}, "wandb": {"enabled": False}}))
        submit = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", f"--address=http://127.0.0.1:{dash}",
             "--working-dir", ".", "--", "python", "ray_jobs/classifier.py", "--config", str(clf_path)],
            cwd=REPO, env=job_env, capture_output=True, text=True, timeout=300)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
        evaluation = json.loads((clf_out / "classifier_eval.json").read_text())
        assert "val" in json.dumps(evaluation)
        meta = json.loads((ray_checkpoints(clf_out / "ray" / clf_out.name)[-1] / "meta.json").read_text())
        assert meta["images_seen"] == 128 and meta["world_size"] == 2

        # A sweep goes the same way: ray_jobs/tune.py, a shipped sweep file shrunk with --set.
        from test_readme import toy_sweep_overrides

        sweep_out = tmp_path / "sweep_out"
        sweep_file = REPO / "sweeps" / "dcgan_lr_asha.yaml"
        sets = [arg for s in toy_sweep_overrides(sweep_file, synthetic_shards, sweep_out) for arg in ("--set", s)]
        submit = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", f"--address=http://127.0.0.1:{dash}",
             "--working-dir", ".", "--runtime-env-json", json.dumps({"env_vars": {"WANDB_MODE": "offline"}}),
             "--", "python", "ray_jobs/tune.py", str(sweep_file), *sets],
            cwd=REPO, env=job_env, capture_output=True, text=True, timeout=300)
        assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
        assert "succeeded" in (submit.stdout + submit.stderr).lower()
        trials = list((sweep_out / "trials").iterdir())
        assert len(trials) == 1 and (trials[0] / "done.json").is_file()
        assert (sweep_out / "report.html").is_file() and (sweep_out / "trials.csv").is_file()
    finally:
        down = subprocess.run(make + ["ray-down"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        shutil.rmtree(state_dir(port), ignore_errors=True)  # Ray's session files for this head
    assert down.returncode == 0 and "Ray head stopped" in down.stdout, down.stdout + down.stderr
    for p in (port, dash):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0, f"port {p} still open after ray-down"


def test_preflight_refuses_a_set_whose_train_shards_hold_no_readable_sample(synthetic_shards: Path,
                                                                             tmp_path: Path) -> None:
    """Every worker would fail on such a set, once per restart, each with a traceback: the driver
    says it once, before Ray starts. A set with one good train shard still passes (the stream skips
    and counts the bad ones)."""
    from facegan.config import from_dict
    from facegan.errors import DataError
    from facegan.families import RunConfig
    from facegan.launch.trainer import preflight

    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    train = sorted(shards.glob("train-*.tar"))
    assert len(train) >= 2
    cfg = from_dict(RunConfig, {
        "data": {"shards": str(shards), "batch_size": 8, "num_workers": 0},
        "model": {"family": "dcgan", "resolution": 32, "z_dim": 16, "base_channels": 8},
        "train": {"total_kimg": 0.1, "out_dir": str(tmp_path / "run")},
        "ray": {"num_workers": 2}, "wandb": {"enabled": False}})
    for path in train[1:]:
        path.write_bytes(b"not a tar at all" * 64)
    preflight(cfg)                                    # one readable shard left: trains, bad ones counted
    train[0].write_bytes(b"")
    with pytest.raises(DataError, match=r"none of the \d+ train shards holds a readable sample, e\.g\. .*train-"):
        preflight(cfg)
