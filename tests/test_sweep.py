"""Sweeps: sweep-file validation, a toy sweep through Ray Tune (interrupted, resumed), the report,
and a PBT exploit end to end (the donor's checkpoint, the exploiter's own rates).

The Ray test uses the session's two-node cluster (conftest_ray) and 1-worker trials of a 32 px
DCGAN with 8 base channels on the session's synthetic shards; Train worker start-up dominates.

    .venv/bin/python -m pytest -q tests/test_sweep.py
"""

from __future__ import annotations

import _thread
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from ray.tune import Callback

from conftest import chromium, skip_unless_required
from facegan.config import ConfigError, from_dict
from facegan.families import RunConfig
from facegan.sweeps.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]



# A session of its own in `make test`: in one long session with the other Ray tests, the driver's
# ray.cluster_resources() was seen to block for good once Tune started (Ray 2.60).
pytestmark = pytest.mark.tune

def toy_sweep(tmp: Path, shards: Path, **sections: Any) -> Path:
    """A sweep file over a tiny DCGAN: 6 steps of 8 images per trial, a report every 2 steps."""
    data: dict[str, Any] = {
        "name": "toy",
        "family": "dcgan",
        "base": str(REPO / "configs" / "dcgan_demo.yaml"),
        "config": {
            "data": {"shards": str(shards), "batch_size": 8, "num_workers": 0, "shuffle_buffer": 16},
            "model": {"resolution": 32, "base_channels": 8, "z_dim": 16},
            "train": {"tick_kimg": 0.016, "checkpoint_kimg": 0.032, "grid_size": 4, "num_threads": 1,
                      "ema_kimg": 0.1, "max_minutes": 0},
            "wandb": {"enabled": False},
        },
        "space": {"optim.g_lr": {"grid": ["1e-4", "2e-4", "4e-4"]}, "gan.label_smoothing": {"grid": [0.1]}},
        "objective": {"metric": "loss/g", "mode": "min"},
        "resources": {"num_workers": 1, "max_concurrent": 2},
        "budget": {"trial_kimg": 0.048},
        "out": str(tmp / "sweep"),
    }
    for name, value in sections.items():  # sections are merged into the toy's, a space replaces it
        merge = isinstance(value, dict) and isinstance(data.get(name), dict) and name != "space"
        data[name] = {**data[name], **value} if merge else value
    path = tmp / "toy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ============================================================================ validation (no Ray)

@pytest.mark.parametrize("overrides, message", [
    (["epochs=3"], "unknown key epochs"),
    (["space.optim.g_lrate.grid=[1e-4]"], "unknown key optim.g_lrate"),
    (["space.model.depth.grid=[3]"], "unknown key model.depth"),
    (["space.optim.g_lr.grid=[1e-4,1.5]"], "optim.g_lr: expected 0 < lr < 1, got 1.5"),
    (["space.gan.label_flip.grid=[0.6]"], "label_flip must be in [0, 0.5), got 0.6"),
    (["space.model.resolution.grid=[48]"], "model.resolution: expected a power of two"),
    (["search.algorithm=random", "space.optim.d_lr.loguniform=[1e-4,2]"], "optim.d_lr: expected 0 < lr < 1, got 2.0"),
    (["space.optim.d_lr.uniform=[1e-4,2e-4]"], "grid search needs grid or choice values"),
    (["space.optim.d_lr.loguniform=[0,1e-3]", "search.algorithm=random"], "loguniform: expected low > 0"),
    (["family=stylegan"], "got 'stylegan'"),
    (["objective.metric=loss/q"], "dcgan does not report 'loss/q'"),
    (["objective.mode=lowest"], "objective.mode: expected one of ['min', 'max']"),
    (["objective.metric=fid_attr"], "fid_attr is reported only every eval.every_kimg"),
    (["objective.metric=fid_attr", "config.eval.every_kimg=0.032", "config.eval.classifier=clf"],
     "eval.every_kimg must be <= train.tick_kimg=0.016"),
    (["objective.metric=fid_attr", "config.eval.every_kimg=0.016", "config.eval.classifier=clf",
      "config.eval.features=inception", "config.eval.inception_weights=w.pth"], "fid_attr needs eval.features: attr"),
    (["scheduler.kind=asha", "scheduler.grace_kimg=1"], "scheduler.grace_kimg: expected < the trial length"),
    (["scheduler.kind=pbt", "scheduler.perturbation_kimg=0.016", "scheduler.mutations.model.z_dim.grid=[8]"],
     "pbt can mutate only optim.*, gan.*"),
    (["scheduler.synch=true"], "scheduler.synch: only pbt perturbs, not fifo"),
    (["resources.num_workers=0"], "resources.num_workers: expected >= 1"),
    (["budget.max_minutes=-1"], "budget.max_minutes: expected >= 0"),
])
def test_bad_sweeps_fail_before_anything_starts(tmp_path: Path, synthetic_shards: Path, overrides: list[str],
                                                message: str) -> None:
    path = toy_sweep(tmp_path, synthetic_shards)
    with pytest.raises(ConfigError) as exc:
        load_sweep(path, overrides=overrides)
    assert message in str(exc.value)
    assert str(path) in str(exc.value)
    assert not (tmp_path / "sweep").exists()


def test_unknown_family_and_keys_of_another_family_are_refused(tmp_path: Path, synthetic_shards: Path) -> None:
    path = toy_sweep(tmp_path, synthetic_shards, family="stylegan9", space={"optim.g_lr": {"grid": ["1e-4"]}})
    with pytest.raises(ConfigError, match=r"family: expected one of \[.*'dcgan'.*\], got 'stylegan9'"):
        load_sweep(path)
    # A key only another family has is unknown to this one (the family's own option dataclasses decide).
    path = toy_sweep(tmp_path, synthetic_shards, space={"gan.alpha": {"grid": [0.5]}})
    with pytest.raises(ConfigError, match="unknown key gan.alpha"):
        load_sweep(path)


def test_grid_points_linked_keys_and_trial_configs(tmp_path: Path, synthetic_shards: Path) -> None:
    path = toy_sweep(tmp_path, synthetic_shards, space={
        "optim.g_lr": {"grid": ["1e-4", "2e-4"], "also": ["optim.d_lr"]},
        "model.resolution": {"grid": [32, 16], "sets": {16: {"data.shards": "/elsewhere/16px"}}},
    }, budget={"trial_kimg": 0.048, "max_trials": 3})
    plan = load_sweep(path)
    assert plan.points == [{"optim.g_lr": 1e-4, "model.resolution": 32}, {"optim.g_lr": 1e-4, "model.resolution": 16},
                           {"optim.g_lr": 2e-4, "model.resolution": 32}]
    cfg = from_dict(RunConfig, plan.trial_config(plan.points[1], trial_id="abc"))
    assert cfg.optim.g_lr == cfg.optim.d_lr == 1e-4 and cfg.data.shards == "/elsewhere/16px"
    assert cfg.train.total_kimg == 0.048 and cfg.ray.num_workers == 1
    assert cfg.train.out_dir == str(tmp_path / "sweep" / "trials" / "abc")
    assert (cfg.wandb.group, cfg.wandb.name) == ("toy", "toy-abc")      # one W&B run per trial, grouped by sweep
    assert cfg.wandb.job_type == "sweep-trial"                          # tagged with the sweep's name (launch.sinks)


def test_pbt_resume_point_takes_the_trials_own_rates(tmp_path: Path) -> None:
    """PBT's exploit hands a trial another trial's checkpoint: its Adam rates must become the trial's own."""
    from facegan.checkpoint import load_checkpoint, save_checkpoint
    from facegan.launch.tune import _resume_point

    net = torch.nn.Linear(2, 2)
    opts = {name: torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999)) for name in ("opt_G", "opt_D")}
    donor = save_checkpoint(tmp_path / "donor", state={k: o.state_dict() for k, o in opts.items()},
                            meta={"kimg": 1.5, "config": {}})

    class TuneCheckpoint:  # what tune.get_checkpoint() returns, as far as _resume_point uses it
        path = str(donor)

        def to_directory(self, path: str) -> None:
            shutil.copytree(donor, path)

    data = {"data": {"shards": "unused"}, "optim": {"g_lr": 3e-4, "d_lr": 1e-4, "beta1": 0.0, "beta2": 0.99}}
    got = _resume_point(TuneCheckpoint(), data, tmp_path / "trial" / "resume" / "attempt-1")
    state, meta = load_checkpoint(got["dir"])
    assert got["kimg"] == 1.5
    assert state["opt_G"]["param_groups"][0]["lr"] == 3e-4 and state["opt_D"]["param_groups"][0]["lr"] == 1e-4
    assert tuple(state["opt_G"]["param_groups"][0]["betas"]) == (0.0, 0.99)
    assert meta["config"]["optim"]["g_lr"] == 3e-4
    assert got["rates"] == {"opt_G": [3e-4], "opt_D": [1e-4]} and got["checkpoint"] == str(donor)


# ============================================================================ through Ray Tune

_INTERRUPT = {"after": 2, "completed": 0, "fired": False}


class InterruptAfter(Callback):
    """A Tune callback: Ctrl-C for the sweep once Tune has seen _INTERRUPT["after"] trials complete.

    Tune's SIGINT handler saves the experiment state and ends the run; trials still running are
    killed and stay unfinished in the saved state. Module-level with module-level state: the
    Tuner pickles its callbacks into the sweep folder.
    """

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        _INTERRUPT["completed"] += 1
        if _INTERRUPT["completed"] == _INTERRUPT["after"] and not _INTERRUPT["fired"]:
            _INTERRUPT["fired"] = True
            _thread.interrupt_main()


@pytest.mark.slow
def test_toy_sweep_interrupted_resumed_and_reported(tmp_path: Path, synthetic_shards: Path,
                                                    ray_cluster: Any) -> None:
    from facegan.launch.tune import run_sweep
    from facegan.cli.sweep import register as add_sweep_parsers

    plan = load_sweep(toy_sweep(tmp_path, synthetic_shards))
    out = Path(plan.out_dir)
    t0 = time.time()
    try:
        first = run_sweep(plan, callbacks=[InterruptAfter()])
    except KeyboardInterrupt:      # the interrupt landed outside Tune's handler: the state is saved all the same
        first = None
    assert _INTERRUPT["fired"]
    finished_first = {p.parent.name for p in (out / "trials").glob("*/done.json")}
    assert len(finished_first) >= 2
    if first is not None:
        assert first["num_trials"] == 3

    with pytest.raises(ConfigError, match="pass --resume"):
        run_sweep(plan)
    summary = run_sweep(plan, resume=True)
    t_total = time.time() - t0
    trials = sorted((out / "trials").iterdir())
    assert len(trials) == 3 and summary["num_errors"] == 0, summary
    starts = {t.name: [json.loads(x) for x in (t / "starts.jsonl").read_text().splitlines()] for t in trials}
    for trial_id in finished_first:
        assert len(starts[trial_id]) == 1, f"finished trial {trial_id} was run again"
    assert all((t / "done.json").is_file() for t in trials)
    rates = sorted(json.loads((t / "trial.json").read_text())["config"]["optim"]["g_lr"] for t in trials)
    assert rates == [1e-4, 2e-4, 4e-4]
    best = summary["best"]
    assert best["last"]["loss/g"] == min(t["last"]["loss/g"] for t in summary["trials"])
    for t in trials:
        assert (t / "samples" / "latest.png").stat().st_size > 0
        rows = [json.loads(x) for x in (t / "results.jsonl").read_text().splitlines()]
        assert rows[-1]["kimg"] == pytest.approx(0.048)

    # The report, through the CLI handler, then rendered by a real browser.
    import argparse

    parser = argparse.ArgumentParser()
    add_sweep_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sweep-report", str(out)])
    assert args.func(args) == 0
    html_path, csv_path = out / "report.html", out / "trials.csv"
    csv_rows = csv_path.read_text().splitlines()
    assert csv_rows[0].startswith("trial,status,optim.g_lr,gan.label_smoothing,loss/g") and len(csv_rows) == 4
    page = html_path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|<link|@import|url\((?!#)""", page)   # nothing to fetch
    check_report_in_browser(html_path, best["trial_id"], num_trials=3)
    print(f"toy sweep: interrupted + resumed in {t_total:.0f} s")


@pytest.mark.slow
def test_pbt_exploit_continues_from_the_donors_checkpoint_with_its_own_rates(
        tmp_path: Path, synthetic_shards: Path, ray_cluster: Any) -> None:
    """Two trials under synchronous PBT: at the one perturbation the weaker trial exploits the other.

    The objective is d_noise_std (max), a tick metric fixed by gan.d_noise_power: the batch-8 trial
    has std 0.1, the batch-16 trial 0.3, so the batch-8 trial must exploit. Trials run 3 reports,
    perturbing at report 2 only (asynchronous PBT with 2 trials exploits only if their reports
    interleave, and on the tie after an exploit the same trial exploits again; synch makes it one
    exploit, always). The batch sizes make the donor's step count differ from the exploiter's own at
    the same kimg, so the step after the restore tells whose checkpoint the loop loaded. Mutations
    are x0.8 / x1.2 (no resampling), so a mutated rate never equals the donor's 2e-4.
    """
    from facegan.checkpoint import list_checkpoints, load_checkpoint
    from facegan.launch.tune import run_sweep

    tick, total = 16, 48                     # images per report, per trial
    plan = load_sweep(toy_sweep(
        tmp_path, synthetic_shards,
        config={"data": {"shards": str(synthetic_shards), "batch_size": 8, "num_workers": 0, "shuffle_buffer": 16},
                "model": {"resolution": 32, "base_channels": 8, "z_dim": 16},
                "gan": {"d_noise_power": 0.01},
                "train": {"tick_kimg": tick / 1000, "checkpoint_kimg": tick / 1000, "grid_size": 4,
                          "num_threads": 1, "ema_kimg": 0.1, "max_minutes": 0},
                "wandb": {"enabled": False}},
        space={"data.batch_size": {"grid": [8, 16], "sets": {16: {"gan.d_noise_power": 0.09}}},
               "optim.g_lr": {"grid": ["2e-4"]}, "optim.d_lr": {"grid": ["2e-4"]}},
        objective={"metric": "d_noise_std", "mode": "max"},
        scheduler={"kind": "pbt", "perturbation_kimg": 2 * tick / 1000, "quantile_fraction": 0.5,
                   "resample_probability": 0.0, "synch": True,
                   "mutations": {"optim.g_lr": {"uniform": ["1e-5", "1e-2"]},
                                 "optim.d_lr": {"uniform": ["1e-5", "1e-2"]}}},
        budget={"trial_kimg": total / 1000}))
    out = Path(plan.out_dir)
    t0 = time.time()
    summary = run_sweep(plan)
    seconds = time.time() - t0
    assert summary["num_trials"] == 2 and summary["num_errors"] == 0, summary

    def rows(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    trials = {t.name: t for t in (out / "trials").iterdir()}
    starts = {tid: rows(t / "starts.jsonl") for tid, t in trials.items()}
    (low,) = [tid for tid, s in starts.items() if s[0]["params"]["data.batch_size"] == 8]
    (high,) = [tid for tid, s in starts.items() if s[0]["params"]["data.batch_size"] == 16]
    assert all(s[0]["resume"] is None for s in starts.values())       # both started from scratch

    # (1) One exploit, recorded by facegan as a start from the other trial's checkpoint and by Tune.
    exploits = [(tid, s) for tid, ss in starts.items() for s in ss if s["resume"] and s["resume"]["trial"] != tid]
    tune_log = rows(out / "pbt_global.txt")       # [trial tag, donor tag, ..., donor config, new config]
    assert len(exploits) == len(tune_log) == 1, (exploits, tune_log)
    (who, start), = exploits
    resume, params = start["resume"], start["params"]
    assert who == low and resume["trial"] == high and tune_log[0][5] == params
    assert Path(resume["checkpoint"]).parent.name == f"tune_{high}"    # Tune handed over the donor's

    # (2) The donor's checkpoint at the perturbation: the donor's step (batch 16), not the low
    # trial's own (twice that at batch 8), nor 0; the next report continues from it.
    assert (resume["images_seen"], resume["step"]) == (2 * tick, 2)
    high_rows = rows(trials[high] / "results.jsonl")
    assert {"images_seen": 2 * tick, "step": 2} in [{k: r[k] for k in ("images_seen", "step")} for r in high_rows]
    low_rows = rows(trials[low] / "results.jsonl")
    assert [(r["attempt"], r["step"], r["images_seen"]) for r in low_rows if r["attempt"] == 0][:2] == \
        [(0, 2, tick), (0, 4, 2 * tick)]
    after = [r for r in low_rows if r["attempt"] == start["attempt"]]
    assert [(r["step"], r["images_seen"], r["d_noise_std"]) for r in after] == [(3, total, pytest.approx(0.3))]

    # (3) Its own mutated rates (the donor's 2e-4 x0.8 or x1.2), in the copy it resumed from and in
    # the checkpoint its loop wrote after the restore; the donor keeps 2e-4.
    assert params["data.batch_size"] == 16
    for key in ("optim.g_lr", "optim.d_lr"):
        assert params[key] in (pytest.approx(1.6e-4), pytest.approx(2.4e-4))
    assert resume["rates"] == {"opt_G": [pytest.approx(params["optim.g_lr"])],
                               "opt_D": [pytest.approx(params["optim.d_lr"])]}
    state, meta = load_checkpoint(list_checkpoints(trials[low] / "checkpoints")[-1])
    assert (meta["images_seen"], meta["step"]) == (total, 3)
    assert state["opt_G"]["param_groups"][0]["lr"] == pytest.approx(params["optim.g_lr"])
    assert state["opt_D"]["param_groups"][0]["lr"] == pytest.approx(params["optim.d_lr"])
    assert starts[low][-1]["params"] == params
    # The donor only ever resumed its own checkpoint (synch pauses every trial at the perturbation).
    assert all(s["resume"]["trial"] == high for s in starts[high][1:])
    state, meta = load_checkpoint(list_checkpoints(trials[high] / "checkpoints")[-1])
    assert meta["images_seen"] == total and state["opt_G"]["param_groups"][0]["lr"] == pytest.approx(2e-4)
    print(f"pbt sweep: 1 exploit in {seconds:.0f} s")


def _dump_dom(url: str) -> str:
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-extensions", "--virtual-time-budget=3000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def check_report_in_browser(html_path: Path, best_id: str, *, num_trials: int) -> None:
    """Headless Chromium runs the page's script: rows sorted by the objective (or #sort=...), plots present."""
    if chromium() is None:
        skip_unless_required("FACEGAN_REQUIRE_CHROMIUM", "chromium is not installed (make chromium installs it)")
    dom = _dump_dom(html_path.as_uri())
    assert 'data-sorted-by="loss/g:asc"' in dom
    rows = re.findall(r'<tr data-trial="([^"]+)"', dom)
    assert len(rows) == num_trials and rows[0] == best_id
    values = [float(v) for v in re.findall(r'<tr data-trial="[^"]+"[^>]*>(?:<td[^>]*>[^<]*</td>){4}<td data-value="([^"]+)"', dom)]
    assert values == sorted(values)
    assert dom.count("<svg") >= 2 and 'id="objective-plots"' in dom and 'id="curves"' in dom
    assert dom.count('src="data:image/png;base64,') >= min(num_trials, 4)
    dom = _dump_dom(html_path.as_uri() + "#sort=optim.g_lr:desc")
    assert 'data-sorted-by="optim.g_lr:desc"' in dom
    rates = [float(v) for v in re.findall(r'<tr data-trial="[^"]+"[^>]*>(?:<td[^>]*>[^<]*</td>){2}<td data-value="([^"]+)"', dom)]
    assert rates == sorted(rates, reverse=True) and len(rates) == num_trials
