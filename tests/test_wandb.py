"""W&B runs as they reach the server: read back from the offline run files `wandb sync` uploads.

Everything runs offline (WANDB_MODE=offline; CI's loopback-only netns): no traffic.

    .venv/bin/python -m pytest tests/test_wandb.py -q
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from facegan.config import from_dict
from facegan.families import RunConfig

REPO = Path(__file__).resolve().parents[1]


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf Records of an offline run's .wandb file (LevelDB log format: 32 KiB blocks of
    crc32 + length + type framed chunks, after W&B's 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:     # a block's tail too short for a header is padding
            pos += room
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, "corrupt record"
        pending += chunk
        if kind in (1, 4):   # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def offline_runs(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "wandb").glob("offline-run-*"))


def run_file(run: Path) -> Path:
    return next(run.glob("run-*.wandb"))


def history(run: Path) -> list[dict[str, Any]]:
    rows = []
    for rec in wandb_records(run_file(run)):
        if rec.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in rec.history.item}
            rows.append(row)
    return rows


def run_record(run: Path) -> Any:
    return next(rec.run for rec in wandb_records(run_file(run)) if rec.WhichOneof("record_type") == "run")


def artifacts(run: Path) -> list[Any]:
    return [rec.artifact for rec in wandb_records(run_file(run)) if rec.WhichOneof("record_type") == "artifact"]


def tiny(shards: Path, out: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "data": {"shards": str(shards), "batch_size": 8, "num_workers": 0},
        "model": {"family": "dcgan", "resolution": 32, "z_dim": 8, "base_channels": 4},
        "train": {"total_kimg": 0.096, "tick_kimg": 0.016, "checkpoint_kimg": 0.04, "out_dir": str(out),
                  "num_threads": 1, "grid_size": 4, "deterministic": True},
        "wandb": {"enabled": True, "project": "facegan-test"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def facegan(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(env or os.environ, PYTHONPATH=str(REPO), WANDB_MODE="offline")
    return subprocess.run([sys.executable, "-m", "facegan.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_offline_run_ends_with_its_sync_command_and_carries_everything(synthetic_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny(synthetic_shards, out, wandb={"tags": ["smoke"], "log_checkpoints": True,
                                                                     "group": "sw", "job_type": "sweep-trial"})))
    res = facegan("train", str(cfg), "--no-ray", "--no-progress")
    assert res.returncode == 0, res.stderr
    (run,) = offline_runs(out)
    upload = [line for line in res.stdout.splitlines() if "W&B upload:" in line]
    assert upload and upload[0].split("W&B upload:")[1].split("(")[0].strip() == f"wandb sync {run}"
    record = run_record(run)
    assert record.job_type == "sweep-trial" and set(record.tags) == {"smoke", "dcgan", "sw"}
    rows = history(run)
    per_step = [r["_step"] for r in rows if "step/loss/d" in r]
    assert per_step == list(range(1, 13))       # every step's losses, not only tick means
    assert any("loss/d" in r and "samples/path" in r for r in rows) and any("loss_curve/path" in r for r in rows)
    kinds = {a.type for a in artifacts(run)}
    assert {"loss-curve", "model"} <= kinds


def test_job_type_defaults_to_train(tmp_path: Path) -> None:
    assert from_dict(RunConfig, tiny(tmp_path, tmp_path / "o")).wandb.job_type == "train"
    with pytest.raises(Exception, match="job_type"):
        from_dict(RunConfig, tiny(tmp_path, tmp_path / "o", wandb={"job_type": "nonsense"}))


def test_resumed_run_continues_the_same_run_without_overlapping_steps(synthetic_shards: Path, tmp_path: Path) -> None:
    from facegan.checkpoint import list_checkpoints
    from facegan.hooks import Hooks
    from facegan.launch.sinks import make_sinks
    from facegan.loop import train

    out = tmp_path / "run"
    first = from_dict(RunConfig, tiny(synthetic_shards, out))
    train(first, hooks=Hooks(sinks=make_sinks(first)))
    ckpts = list_checkpoints(out / "checkpoints")
    mid = next(c for c in ckpts if json.loads((c / "meta.json").read_text())["step"] == 10)
    # As after a crash: the run logged steps 11-12 past the checkpoint it now resumes from.
    second = from_dict(RunConfig, tiny(synthetic_shards, out, train={"resume": str(mid), "total_kimg": 0.16}))
    train(second, hooks=Hooks(sinks=make_sinks(second)))
    runs = offline_runs(out)
    assert len(runs) == 2
    ids = {run_record(r).run_id for r in runs}
    assert len(ids) == 1                     # one W&B run, continued
    steps = [[r["_step"] for r in history(run)] for run in runs]
    assert max(steps[0]) == 12 and min(steps[1]) == 13 and max(steps[1]) == 20
    for s in steps:
        assert s == sorted(s)
    per_step = [r["_step"] for run in runs for r in history(run) if "step/loss/d" in r]
    assert per_step == list(range(1, 21))    # each step once over both attempts
    # A fresh start in the same folder is a new W&B run.
    third = from_dict(RunConfig, tiny(synthetic_shards, out, train={"total_kimg": 0.016}))
    train(third, hooks=Hooks(sinks=make_sinks(third)))
    assert len({run_record(r).run_id for r in offline_runs(out)}) == 2


def test_online_mode_takes_wandb_login_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    from facegan.launch import sinks

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert sinks.netrc_key() == "k" * 40 and sinks.has_credentials()
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert sinks.netrc_key() is None          # a key for another host is not this server's
    monkeypatch.delenv("WANDB_BASE_URL")
    # No key anywhere: online falls back to offline with one warning (and nothing leaves the machine).
    netrc_file.write_text("")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = from_dict(RunConfig, tiny(tmp_path, tmp_path / "o", wandb={"mode": "online"}))
    created: list[dict[str, Any]] = []
    monkeypatch.setattr(sinks, "WandbSink", lambda **kw: created.append(kw) or kw)
    sinks.make_sinks(cfg)
    assert created[0]["mode"] == "offline" and "wandb login" in caplog.text
    netrc_file.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    created.clear()
    sinks.make_sinks(cfg)
    assert created[0]["mode"] == "online"
