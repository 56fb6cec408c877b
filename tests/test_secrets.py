"""Secrets in the environment never reach run outputs, config dumps, checkpoints, the sweep
report, W&B's offline files, or what Ray records about a job (runtime envs, Train run settings,
logs), where anyone with dashboard access reads them.

Each test plants distinctive fake secrets (a W&B key with W&B forced offline, so nothing is sent,
and *_TOKEN / *_SECRET / *_KEY variables of no meaning) and greps every byte written.

    .venv/bin/python -m pytest -q tests/test_secrets.py             # the sweep test runs with -m tune
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

import pytest
import yaml

from conftest import REPO
from facegan.cli import main as cli
from facegan.config import to_dict
from facegan.launch.cluster import offline_env, runtime_env_vars
from test_launch import tiny_config

SECRETS = {
    "WANDB_API_KEY": "fgsecret0wandb0key0c0ffee0d15ea5e0b0a710ad",
    "FACEGAN_TEST_TOKEN": "fgsecret-token-5f3c9a7e-never-to-be-seen",
    "FACEGAN_TEST_SECRET": "fgsecret-secret-91d0b2-never-to-be-seen",
    "FACEGAN_TEST_KEY": "fgsecret-key-77aa31-never-to-be-seen",
}


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The fake secrets in this process's environment; W&B offline whatever the key says."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")
    return dict(SECRETS)


def leaks(*, roots: Iterable[Path] = (), texts: dict[str, str] | None = None) -> list[str]:
    """'<where>: <variable>' for every secret value found in a file under `roots` (any byte
    content: JSON, logs, pickles, W&B's protobuf run file) or in one of `texts`."""
    found = []
    needles = {name: value.encode() for name, value in SECRETS.items()}
    for root in roots:
        for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()):
            data = path.read_bytes()
            found += [f"{path}: {name}" for name, needle in needles.items() if needle in data]
    for where, text in (texts or {}).items():
        found += [f"{where}: {name}" for name, value in SECRETS.items() if value in text]
    return found


def test_the_runtime_env_carries_no_secret(tmp_path: Path) -> None:
    env = offline_env({**SECRETS, "HOME": str(tmp_path), "WANDB_MODE": "offline"})
    shipped = runtime_env_vars(env)
    assert shipped["WANDB_MODE"] == "offline" and "RAY_USAGE_STATS_ENABLED" in shipped
    assert not leaks(texts={"runtime_env_vars": json.dumps(shipped)})


def test_the_key_goes_nowhere_rank_0_cannot_use_it(planted: dict[str, str], tmp_path: Path) -> None:
    from facegan.launch.trainer import ship_wandb_key

    for wandb in ({"enabled": False}, {"enabled": True, "mode": "offline"}, {"enabled": True, "mode": "disabled"}):
        cfg = tiny_config(tmp_path, tmp_path / "run", steps=2, tick_steps=1, ckpt_steps=1, wandb=wandb)
        assert ship_wandb_key(cfg) is None, wandb
    cfg = tiny_config(tmp_path, tmp_path / "run", steps=2, tick_steps=1, ckpt_steps=1, wandb={"enabled": True})
    assert ship_wandb_key(cfg, key="") is None      # a sweep driver without a key ships none


def test_in_process_run_with_wandb_writes_no_secret(planted: dict[str, str], synthetic_shards: Path,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    cfg = tiny_config(synthetic_shards, out, steps=4, tick_steps=2, ckpt_steps=2, ray={"num_workers": 1},
                      wandb={"enabled": True, "project": "facegan-secrets"})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert cli(["train", str(path), "--no-ray"]) == 0
    printed = capsys.readouterr()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and len(list(runs[0].glob("run-*.wandb"))) == 1
    assert list(out.glob("checkpoints/ckpt-*/meta.json")) and (out / "config.json").is_file()
    assert not leaks(roots=[tmp_path], texts={"stdout": printed.out, "stderr": printed.err})


# ======================================================================= a Ray Train run (slow)

DRIVER = '''
import hashlib, json, os, sys
from pathlib import Path

from facegan.config import to_dict
from facegan.families import load_run_config
from facegan.launch.trainer import run_training


def key_digest_train(cfg, *, hooks):
    """facegan.loop.train, after noting a digest of the W&B key this rank's process holds."""
    from facegan.loop import train

    key = os.environ.get("WANDB_API_KEY", "")
    path = Path(cfg.train.out_dir) / f"key-rank{hooks.rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sha256": hashlib.sha256(key.encode()).hexdigest(), "sinks": len(hooks.sinks)}))
    return train(cfg, hooks=hooks)


cfg = load_run_config(sys.argv[1], [])
print(json.dumps(run_training(cfg, config_dict=to_dict(cfg), train_fn=key_digest_train), default=str))
'''


def ray_records(dashboard: str) -> dict[str, str]:
    """What Ray shows about this cluster's jobs, actors, runtime envs, objects and Train runs:
    the state API and the dashboard's job and Train endpoints, as text."""
    from ray.util import state

    records = {}
    for name in ("list_jobs", "list_actors", "list_runtime_envs", "list_objects", "list_workers",
                 "list_placement_groups", "list_nodes"):
        records[f"ray.util.state.{name}"] = repr(getattr(state, name)(detail=True, limit=10000,
                                                                      raise_on_missing_output=False))
    # Jobs (their runtime_env and metadata), Train V2 runs (train_loop_config, worker runtime env), tasks.
    for endpoint in ("/api/jobs/", "/api/train/v2/runs/v1", "/api/v0/tasks?detail=1&limit=10000"):
        try:
            with urllib.request.urlopen(dashboard + endpoint, timeout=30) as resp:
                records[f"dashboard {endpoint}"] = resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            records[f"dashboard {endpoint}"] = f"HTTP {exc.code}: {exc.read().decode(errors='replace')}"
    print({k: v[:100] for k, v in records.items() if k.startswith("dashboard")})
    assert not records["dashboard /api/jobs/"].startswith("HTTP"), records["dashboard /api/jobs/"]
    return records


def session_dir() -> Path:
    import ray

    return Path(ray._private.worker._global_node.get_session_dir_path())


@pytest.mark.slow
def test_ray_train_run_ships_the_wandb_key_to_rank_0_only_and_records_no_secret(
        ray_cluster: Any, planted: dict[str, str], synthetic_shards: Path, tmp_path: Path) -> None:
    """A driver process with the secrets in its environment joins the session cluster (as
    `ray job submit` entry scripts do, through facegan.launch.cluster.connect) and trains 2
    workers with W&B on. Rank 0 gets the key (through the object store); rank 1 does not; and
    nothing Ray records, logs or stores, nor any file of the run, holds a secret."""
    import ray

    out = tmp_path / "run"
    cfg = tiny_config(synthetic_shards, out, steps=4, tick_steps=2, ckpt_steps=2,
                      wandb={"enabled": True, "project": "facegan-secrets"})
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(to_dict(cfg)))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, str(driver), str(config_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["metrics"]["step"] == 4 and result["wandb_dir"]

    dashboard = "http://" + ray._private.worker.get_dashboard_url()
    records = ray_records(dashboard)
    job_ids = {job.job_id for job in ray.util.state.list_jobs(detail=True, raise_on_missing_output=False)}
    assert len(job_ids) >= 2, "the driver's job is not among Ray's records"
    assert not leaks(roots=[tmp_path, session_dir()],
                     texts={"driver stdout": proc.stdout, "driver stderr": proc.stderr, **records})

    digest = {r: json.loads((out / f"key-rank{r}.json").read_text()) for r in (0, 1)}
    assert digest[0] == {"sha256": hashlib.sha256(SECRETS["WANDB_API_KEY"].encode()).hexdigest(), "sinks": 1}
    assert digest[1] == {"sha256": hashlib.sha256(b"").hexdigest(), "sinks": 0}


# ================================================================================ a sweep (tune)

@pytest.mark.tune
@pytest.mark.slow
def test_sweep_and_its_report_record_no_secret(ray_cluster: Any, planted: dict[str, str], synthetic_shards: Path,
                                               tmp_path: Path) -> None:
    """A toy sweep with W&B on in its trials: the sweep folder (sweep_spec.json, trial.json,
    checkpoints, Tune's experiment state, report.html, trials.csv, W&B's offline runs), Ray's
    records and logs hold no secret."""
    import ray

    from facegan.launch.trainer import KEY_RECEIVED
    from facegan.launch.tune import run_sweep
    from facegan.sweeps.spec import load_sweep
    from test_readme import toy_sweep_overrides

    sweep_file = REPO / "sweeps" / "dcgan_lr_asha.yaml"
    out = tmp_path / "sweep"
    overrides = [o for o in toy_sweep_overrides(sweep_file, synthetic_shards, out) if o != "config.wandb.enabled=false"]
    plan = load_sweep(sweep_file, overrides=overrides + ["config.wandb.enabled=true",
                                                         "config.wandb.project=facegan-secrets"])
    summary = run_sweep(plan)
    assert summary["num_trials"] == 1 and summary["num_errors"] == 0, summary
    (trial,) = (out / "trials").iterdir()
    for name in ("trial.json", "done.json", "config.json"):
        assert (trial / name).is_file(), name
    assert list(trial.glob("wandb/offline-run-*")), "the trial's rank 0 kept no W&B run"
    for name in ("sweep_spec.json", "sweep.json", "report.html", "trials.csv"):
        assert (out / name).is_file(), name
    records = ray_records("http://" + ray._private.worker.get_dashboard_url())
    assert not leaks(roots=[tmp_path, session_dir()], texts={"summary": json.dumps(summary, default=str), **records})
    # The sweep driver's key reached the trial's rank 0 (the trial's actor has none of its own).
    logs = [p for p in (session_dir() / "logs").rglob("*") if p.is_file() and KEY_RECEIVED.encode() in p.read_bytes()]
    assert logs, "no trial's rank 0 received the W&B key"

