"""What a newcomer's terminal shows during `facegan train`: one updating progress line (kimg, img/s,
ETA, losses) on stderr and a summary naming only files that exist on stdout; no per-tick log lines,
and on Ray none of the workers' chatter (`Reporting training result N: TrainingReport(...)`).

    .venv/bin/python -m pytest -q tests/test_cli_progress.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

FACEGAN = [str(Path(sys.executable).parent / "facegan")]
CHATTER = ("Reporting training result", "TrainingReport(", "Wrapping provided model", "Started training worker group",
           "INFO", "Traceback")


def tiny(shards: Path, out: Path, **ray: object) -> dict[str, object]:
    return {"data": {"shards": str(shards), "batch_size": 8, "num_workers": 0},
            "model": {"family": "dcgan", "resolution": 32, "z_dim": 8, "base_channels": 4},
            "train": {"total_kimg": 0.064, "tick_kimg": 0.016, "checkpoint_kimg": 0.032, "out_dir": str(out),
                      "num_threads": 1, "grid_size": 4},
            "ray": {"num_workers": 2, "cpus_per_worker": 1, **ray},
            "wandb": {"enabled": False}}


def run_cli(args: list[str], tmp_path: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(tmp_path / "home"), RAY_USAGE_STATS_ENABLED="0", RES_OPTIONS="attempts:0",
               PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(FACEGAN + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def check_terminal(proc: subprocess.CompletedProcess[str], *, desc: str) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # tqdm redraws one line with carriage returns: every state of the bar is one '\r'-separated piece.
    states = [s for s in re.split(r"[\r\n]", proc.stderr) if s.strip()]
    bars = [s for s in states if s.startswith(desc)]
    assert bars, proc.stderr
    last = bars[-1]
    assert re.search(r"0\.06/0\.06 kimg", last) and "img/s=" in last and re.search(r"\bg=", last), last
    assert re.search(r"<\d\d:\d\d", bars[len(bars) // 2]), bars  # an ETA
    others = [s for s in states if not s.startswith(desc)]
    # Outside the bar, at most a few notices of Ray's start-up (token auth, no route to the internet).
    assert len(others) <= 3, others
    for text in (proc.stdout, proc.stderr):
        for word in CHATTER:
            assert word not in text, (word, text)
    # The summary names only files that exist.
    paths = re.findall(r":\s+(/\S+)", proc.stdout)
    assert paths and proc.stdout.startswith("trained dcgan to 0.1 kimg"), proc.stdout
    for p in paths:
        assert Path(p.rstrip("/").split(",")[0]).exists(), (p, proc.stdout)
    assert "checkpoint:" in proc.stdout and "(none)" not in proc.stdout


def test_in_process_train_shows_one_progress_line_and_a_true_summary(synthetic_shards: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny(synthetic_shards, tmp_path / "run")))
    proc = run_cli(["train", str(cfg), "--no-ray"], tmp_path, timeout=300)
    check_terminal(proc, desc="dcgan")
    # Short runs write no per-epoch folder: the summary does not point at one.
    assert not (tmp_path / "run" / "losses").exists() or "per epoch" in proc.stdout


@pytest.mark.slow
def test_ray_train_shows_the_progress_line_not_the_workers_chatter(synthetic_shards: Path, tmp_path: Path) -> None:
    """The demo's path: a local Ray cluster started by `facegan train`, two workers."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny(synthetic_shards, tmp_path / "run")))
    proc = run_cli(["train", str(cfg)], tmp_path, timeout=400)
    check_terminal(proc, desc="dcgan (Ray, 2 workers)")


def test_eval_shows_a_progress_bar_over_every_image_it_featurises(synthetic_shards: Path, tmp_path: Path) -> None:
    from facegan.config import from_dict
    from facegan.data.stream import ShardSet
    from facegan.families import RunConfig
    from facegan.loop import train

    train(from_dict(RunConfig, {"data": {"shards": str(synthetic_shards), "batch_size": 8, "num_workers": 0},
                                "model": {"family": "classifier", "resolution": 32, "dense_units": 8},
                                "train": {"total_kimg": 0.016, "tick_kimg": 0.016, "checkpoint_kimg": 0.016,
                                          "out_dir": str(tmp_path / "clf"), "num_threads": 1},
                                "eval": {"splits": ["val"]}, "wandb": {"enabled": False}}))
    proc = run_cli(["eval", "--baseline", "random", "--shards", str(synthetic_shards), "--classifier",
                    str(tmp_path / "clf"), "--num-samples", "24", "--num-real", "1000", "--json",
                    str(tmp_path / "e.json")], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shards = ShardSet.open(synthetic_shards)
    total = 24 + shards.count("train") + shards.count("val")
    from facegan.metrics.face import face_available

    if face_available():     # --face auto: the generated and val images again, through dlib's descriptor
        total += 24 + shards.count("val")
    states = [s for s in re.split(r"[\r\n]", proc.stderr) if s.strip()]
    assert states and all(s.startswith("featurising generated and real images") for s in states), states
    assert f"{total}/{total}" in states[-1], states[-1]
    assert (tmp_path / "e.json").is_file()


@pytest.mark.parametrize("total_kimg, batch", [(40, 128), (12, 96), (4, 24), (0.048, 16)])
def test_progress_line_ends_exactly_at_the_total(total_kimg: float, batch: int) -> None:
    """Step by step past the total (the last step may overshoot by less than a batch): the bar
    stops at its total, with no tqdm warning (a float sum of increments once drifted past it)."""
    import io
    import warnings

    from facegan.stats import ProgressSink

    sink = ProgressSink(total_kimg=total_kimg, file=io.StringIO())
    seen = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        while seen < total_kimg * 1000:
            seen += batch
            sink.progress(seen)
        sink.close()
    assert sink.bar.n == sink.bar.total == total_kimg
