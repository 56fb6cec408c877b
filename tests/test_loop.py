"""The training loop in-process: outputs, exact resume, NaN handling, checkpoints, DDP on gloo."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facegan.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from facegan.cli import main as cli
from facegan.config import ConfigError, from_dict
from facegan.families import FAMILIES, RunConfig
from facegan.families.dcgan import DCGAN
from facegan.hooks import Hooks
from facegan.loop import train
from facegan.runtime import TrainingError
from facegan.stats import read_log


def tiny_cfg(shards: Path, out: Path, **sections) -> RunConfig:
    data = {
        "data": {"shards": str(shards), "batch_size": 8, "num_workers": 0},
        "model": {"family": "dcgan", "resolution": 32, "z_dim": 16, "base_channels": 8},
        "train": {"total_kimg": 0.2, "tick_kimg": 0.05, "checkpoint_kimg": 0.1, "ema_kimg": 0.05,
                  "out_dir": str(out), "num_threads": 1, "grid_size": 16, "deterministic": True},
        "wandb": {"enabled": False},
    }
    for name, values in sections.items():
        data[name] = dict(data.get(name, {}), **values)
    return from_dict(RunConfig, data)


def test_run_leaves_grids_losses_curves_and_checkpoints(synthetic_shards: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(synthetic_shards, tmp_path / "run")
    metrics = train(cfg)
    out = tmp_path / "run"
    assert metrics["images_seen"] >= 200 and metrics["step"] == 25
    assert len(list((out / "samples").glob("grid-*.png"))) >= 4
    rows = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 26))
    for key in ("loss/d", "loss/g", "D(x)", "D(G(z))", "acc/d_real", "acc/d_fake"):
        assert all(math.isfinite(r[key]) for r in steps), key
    assert any(r["kind"] == "tick" for r in rows)
    arr = np.load(out / "losses" / "epoch_0000.npy")             # 120 train images / 8 = 15 steps
    assert arr.shape[0] == 15 and arr.shape[1] == len(json.loads((out / "losses" / "columns.json").read_text()))
    assert (out / "loss_curve.png").stat().st_size > 1000
    ckpts = list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpts] == ["ckpt-000000104", "ckpt-000000200"]
    state, meta = load_checkpoint(ckpts[-1])                      # weights_only=True inside
    assert set(state) == {"G", "D", "G_ema", "opt_G", "opt_D", "scaler", "family", "augment", "rng"}
    assert state["augment"] == {}   # augment.kind none: no augmentation state
    assert meta["step"] == 25 and meta["images_seen"] == 200 and meta["family"] == "dcgan"
    assert "torch_rank0" in state["rng"] and "gen_rank0" in state["rng"]


def test_stop_and_resume_ends_with_identical_parameters(synthetic_shards: Path, tmp_path: Path) -> None:
    tricks = {"label_flip": 0.1, "label_smoothing": 0.1, "d_noise_power": 0.05, "d_noise_anneal_kimg": 0.3}
    model = {"d_dropout": 0.2}
    data = {"num_workers": 2}
    full = tiny_cfg(synthetic_shards, tmp_path / "full", gan=tricks, model=model, data=data)
    train(full)
    first = tiny_cfg(synthetic_shards, tmp_path / "split", gan=tricks, model=model, data=data,
                     train={"total_kimg": 0.096})                # stops at step 12, mid-epoch
    train(first)
    second = tiny_cfg(synthetic_shards, tmp_path / "split", gan=tricks, model=model, data=data,
                      train={"resume": "latest"})
    train(second)
    a, _ = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[-1])
    b, meta = load_checkpoint(list_checkpoints(tmp_path / "split" / "checkpoints")[-1])
    assert meta["step"] == 25
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=0, msg=f"{net}.{k}")
    # ... and the comparison is sharp: a run with another seed ends elsewhere.
    other = tiny_cfg(synthetic_shards, tmp_path / "other", gan=tricks, model=model, data=data, train={"seed": 1})
    train(other)
    c, _ = load_checkpoint(list_checkpoints(tmp_path / "other" / "checkpoints")[-1])
    assert any(not torch.equal(a["G"][k], c["G"][k]) for k in a["G"])


def test_the_log_of_a_run_resumed_behind_its_last_row_reads_as_one_run(synthetic_shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_cfg(synthetic_shards, out))
    log_file = out / "losses.jsonl"
    before = read_log(log_file)
    # As after a kill: the run logged steps 14-25 past its step-13 checkpoint, and a torn last line.
    with open(log_file, "a") as f:
        f.write('{"kind": "step", "st')
    mid = next(c for c in list_checkpoints(out / "checkpoints") if json.loads((c / "meta.json").read_text())["step"] == 13)
    train(tiny_cfg(synthetic_shards, out, train={"resume": str(mid)}))
    lines = log_file.read_text().splitlines()
    assert lines.count('{"kind": "step", "st') == 1             # the torn line stays alone on its line
    raw = [json.loads(line) for line in lines if line != '{"kind": "step", "st']
    assert [r["step"] for r in raw if r["kind"] == "step"].count(14) == 2    # the log is append-only
    after = read_log(log_file)
    steps = [r for r in after if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 26))      # each step once, in order
    assert steps == [r for r in before if r["kind"] == "step"]   # and, resumed exactly, the same values
    ticks = [r["step"] for r in after if r["kind"] == "tick"]
    assert ticks == sorted(set(ticks)) and ticks == [r["step"] for r in before if r["kind"] == "tick"]
    assert [r["kind"] for r in after if r["step"] == 25] == ["step", "tick"]


def test_incompatible_checkpoint_says_what_differs(synthetic_shards: Path, tmp_path: Path) -> None:
    train(tiny_cfg(synthetic_shards, tmp_path / "r", train={"total_kimg": 0.05}))
    ckpt = list_checkpoints(tmp_path / "r" / "checkpoints")[-1]
    wider = tiny_cfg(synthetic_shards, tmp_path / "r2", model={"base_channels": 16}, train={"resume": str(ckpt)})
    with pytest.raises(CheckpointError, match="base_channels: checkpoint has 8, config has 16"):
        train(wider)


def test_shards_and_model_resolution_must_agree(synthetic_shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.resolution 64 does not match"):
        train(tiny_cfg(synthetic_shards, tmp_path / "r", model={"resolution": 64}))


class _NaNFamily(DCGAN):
    """DCGAN whose D phase returns a NaN loss on chosen calls."""

    name = "nan_test"

    def __init__(self, bad) -> None:
        self.bad = bad

    def build_steps(self, cfg, data):
        steps = super().build_steps(cfg, data)
        inner, calls, bad = steps.d, [0], self.bad

        def d(ctx):
            calls[0] += 1
            loss, sc = inner(ctx)
            return (loss * float("nan"), sc) if bad(calls[0]) else (loss, sc)

        steps.d = d
        return steps


@pytest.fixture
def nan_family():
    def register(bad):
        FAMILIES["nan_test"] = _NaNFamily(bad)
    yield register
    FAMILIES.pop("nan_test", None)


@pytest.mark.parametrize("fused_adam", [True, False])   # the non-finite rule on the device, and on the host
def test_sporadic_nan_steps_are_skipped_and_counted(synthetic_shards, tmp_path, nan_family, fused_adam) -> None:
    nan_family(lambda call: call % 5 == 0)
    metrics = train(tiny_cfg(synthetic_shards, tmp_path / "r", model={"family": "nan_test"},
                             train={"fused_adam": fused_adam}))
    assert metrics["bad_steps"] == 5 and metrics["step"] == 25
    rows = [json.loads(line) for line in (tmp_path / "r" / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == [s for s in range(1, 26) if s % 5]   # skipped: no row
    state, _ = load_checkpoint(list_checkpoints(tmp_path / "r" / "checkpoints")[-1])
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())


def test_persistent_nan_stops_with_clear_error_and_keeps_last_checkpoint(synthetic_shards, tmp_path, nan_family):
    nan_family(lambda call: call > 14)
    cfg = tiny_cfg(synthetic_shards, tmp_path / "r", model={"family": "nan_test"}, train={"max_bad_steps": 4})
    with pytest.raises(TrainingError, match=r"non-finite for 4 steps in a row.*last good checkpoint: .*ckpt-000000104"):
        train(cfg)
    assert [p.name for p in list_checkpoints(tmp_path / "r" / "checkpoints")] == ["ckpt-000000104"]


def test_sample_cli_draws_a_grid(synthetic_shards: Path, tmp_path: Path) -> None:
    train(tiny_cfg(synthetic_shards, tmp_path / "r", train={"total_kimg": 0.05}))
    ckpt = list_checkpoints(tmp_path / "r" / "checkpoints")[-1]
    assert cli(["sample", "--checkpoint", str(ckpt), "-n", "9", "--out", str(tmp_path / "g.png")]) == 0
    from PIL import Image

    with Image.open(tmp_path / "g.png") as im:
        assert im.size == (3 * 34 + 2, 3 * 34 + 2)
    assert cli(["sample", "--checkpoint", str(tmp_path), "-n", "4", "--out", str(tmp_path / "x.png")]) == 2


def test_bad_config_fails_before_training(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {shards: x}\noptim: {g_lr: 5}\n")
    assert cli(["train", str(bad), "--no-ray"]) == 2
    assert "optim.g_lr: expected 0 < lr < 1, got 5" in capsys.readouterr().err
    bad.write_text("data: {shards: x}\ntrain: {total_kimgs: 3}\n")
    assert cli(["train", str(bad), "--no-ray"]) == 2
    assert "unknown key train.total_kimgs" in capsys.readouterr().err


def _ddp_worker(rank: int, world: int, cfg_dict: dict, result_dir: str) -> None:
    cfg = from_dict(RunConfig, cfg_dict)
    train(cfg, hooks=Hooks(rank=rank, world_size=world))
    G_state = torch.load(sorted((Path(cfg.train.out_dir) / "checkpoints").glob("ckpt-*"))[-1] / "state.pt",
                         weights_only=True)["G"] if rank == 0 else None
    if rank == 0:
        torch.save(G_state, Path(result_dir) / "g.pt")


@pytest.mark.slow
def test_two_rank_gloo_ddp_without_ray(synthetic_shards: Path, tmp_path: Path) -> None:
    from ranks import run_ranks

    from facegan.config import to_dict

    cfg = tiny_cfg(synthetic_shards, tmp_path / "ddp", train={"total_kimg": 0.096})
    run_ranks(_ddp_worker, to_dict(cfg), str(tmp_path), store=tmp_path / "pg")
    meta = json.loads((list_checkpoints(tmp_path / "ddp" / "checkpoints")[-1] / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["images_seen"] == 96 and meta["step"] == 6
    state, _ = load_checkpoint(list_checkpoints(tmp_path / "ddp" / "checkpoints")[-1])
    assert "gen_rank1" in state["rng"] and not torch.equal(state["rng"]["gen_rank0"], state["rng"]["gen_rank1"])


def test_wandb_offline_run_per_job_and_max_minutes(synthetic_shards: Path, tmp_path: Path) -> None:
    from facegan.launch.sinks import make_sinks

    cfg = tiny_cfg(synthetic_shards, tmp_path / "r", wandb={"enabled": True, "project": "facegan-test"},
                   train={"total_kimg": 50, "max_minutes": 0.001})
    sinks = make_sinks(cfg)
    assert sinks and sinks[0].mode == "offline"
    metrics = train(cfg, hooks=Hooks(sinks=sinks))
    assert metrics["kimg"] < 1                     # stopped by the time budget at the first tick ...
    assert list_checkpoints(tmp_path / "r" / "checkpoints")   # ... with a checkpoint
    runs = list((tmp_path / "r" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert sum(p.stat().st_size for p in runs[0].glob("*.wandb")) > 0
    assert list((runs[0] / "files" / "media").rglob("*.png")), "the sample grid goes to W&B too"


def test_time_budget_counts_training_time_before_a_restart(synthetic_shards: Path, tmp_path: Path) -> None:
    """A run restarted from a checkpoint (Ray retry, --resume) does not get a fresh train.max_minutes."""
    from facegan.checkpoint import read_meta

    train(tiny_cfg(synthetic_shards, tmp_path / "r", train={"total_kimg": 0.1}))
    ckpt = list_checkpoints(tmp_path / "r" / "checkpoints")[-1]
    spent = read_meta(ckpt)["train_seconds"]
    assert spent > 0
    # A budget already used up before the restart: stop at the first tick after resuming.
    metrics = train(tiny_cfg(synthetic_shards, tmp_path / "r", train={
        "total_kimg": 0.4, "resume": "latest", "max_minutes": spent / 60 * 0.9}))
    assert metrics["kimg"] == pytest.approx(0.152)  # 0.104 kimg at the checkpoint + one 0.05-kimg tick (6 steps)
