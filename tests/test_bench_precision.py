"""benchmarks/bench_precision.py: the verdict, the table and JSON, and one toy run end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_precision.py"

_spec = importlib.util.spec_from_file_location("bench_precision", SCRIPT)
bp = importlib.util.module_from_spec(_spec)
sys.modules["bench_precision"] = bp   # its dataclasses look their module up there
_spec.loader.exec_module(bp)


# ---------------------------------------------------------------- verdict

def test_within_noise():
    v = bp.verdict(40.0, 44.0, 45.0, higher_is_better=False)   # spread 4, diff 5 <= 1.5 x 4
    assert v["verdict"] == "same within noise"
    assert v["seed_spread"] == pytest.approx(4.0) and v["diff"] == pytest.approx(5.0)
    assert v["tolerance"] == pytest.approx(6.0)


def test_degraded_lower_is_better():
    assert bp.verdict(40.0, 41.0, 45.0, higher_is_better=False)["verdict"] == "degraded"


def test_better_lower_is_better():
    assert bp.verdict(40.0, 41.0, 35.0, higher_is_better=False)["verdict"] == "better"


def test_direction_for_higher_is_better():
    assert bp.verdict(0.80, 0.801, 0.70, higher_is_better=True)["verdict"] == "degraded"
    assert bp.verdict(0.80, 0.801, 0.90, higher_is_better=True)["verdict"] == "better"


def test_zero_spread_uses_one_percent_floor():
    # seed_spread 0: tolerance = 1.5 x 1% x 100 = 1.5
    v = bp.verdict(100.0, 100.0, 101.4, higher_is_better=False)
    assert v["seed_spread"] == 0 and v["tolerance"] == pytest.approx(1.5)
    assert v["verdict"] == "same within noise"
    assert bp.verdict(100.0, 100.0, 101.6, higher_is_better=False)["verdict"] == "degraded"
    assert bp.verdict(100.0, 100.0, 98.4, higher_is_better=False)["verdict"] == "better"


def test_boundary_is_within_noise():
    assert bp.verdict(10.0, 12.0, 13.0, higher_is_better=False)["verdict"] == "same within noise"   # diff == 1.5 x 2


def test_missing_value_is_incomplete():
    assert bp.verdict(1.0, None, 1.0, higher_is_better=False)["verdict"] == "incomplete"
    assert bp.verdict(1.0, 1.0, float("nan"), higher_is_better=False)["verdict"] == "incomplete"


# ---------------------------------------------------------------- table and JSON

def _arms(t0, t1, tb, q0, q1, qb):
    return {"fp32_s0": {"train_seconds": t0, "quality": q0}, "fp32_s1": {"train_seconds": t1, "quality": q1},
            "bf16_s0": {"train_seconds": tb, "quality": qb}}


def test_table_and_json_from_hand_made_arms():
    rows = [bp.summarise_family("dcgan", _arms(100.0, 101.0, 50.0, 0.40, 0.42, 0.41), metric="fid_face",
                                higher_is_better=False),
            bp.summarise_family("classifier", _arms(30.0, 30.0, 20.0, 0.85, 0.851, 0.70),
                                metric="eval/val/mean_acc", higher_is_better=True),
            bp.summarise_family("wgangp", {"fp32_s0": {"train_seconds": 10.0, "quality": 1.0},
                                           "fp32_s1": {"error": "train exit 1"}}, metric="fid_face",
                                higher_is_better=False)]
    assert rows[0]["speedup"] == pytest.approx(2.0) and rows[0]["verdict"] == "same within noise"
    assert rows[1]["speedup"] == pytest.approx(1.5) and rows[1]["verdict"] == "degraded"
    assert rows[2]["speedup"] is None and rows[2]["verdict"] == "incomplete"

    table = bp.markdown_table(rows).splitlines()
    assert table[0] == ("| family | fp32 s | bf16 s | speed-up | quality metric | fp32 s0 | fp32 s1 | bf16 s0 "
                        "| verdict |")
    assert len(table) == 2 + 3
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells == ["dcgan", "100.0", "50.0", "2.00x", "fid_face (lower better)", "0.4", "0.42", "0.41",
                     "same within noise"]
    assert "eval/val/mean_acc (higher better)" in table[3] and table[3].endswith("| degraded |")
    assert table[4].split("|")[4].strip() == "-"   # no bf16 time: no speed-up

    doc = json.loads(json.dumps(bp.report_doc(rows, {"predictor": "needs a generator"}, {"kimg": 3})))
    assert set(doc["families"]) == {"dcgan", "classifier", "wgangp"}
    assert doc["families"]["dcgan"]["quality"] == {"fp32_s0": 0.40, "fp32_s1": 0.42, "bf16_s0": 0.41}
    assert doc["families"]["dcgan"]["seed_spread"] == pytest.approx(0.02)
    assert doc["skipped"] == {"predictor": "needs a generator"} and doc["settings"] == {"kimg": 3}


def test_default_families_have_celeba64_configs():
    fams = bp.celeba64_families()
    assert "dcgan" in fams and "progressive" in fams
    # every family its own celeba64 config, progressive (none) its UTKFace 64x64 one on the same shards
    assert all((REPO / "configs" / f"{f}_celeba64.yaml").is_file() for f in fams if f not in bp.OTHER_CONFIGS)
    assert bp.config_path("progressive") == REPO / "configs" / "progressive_utkface64.yaml"
    assert bp.config_path("dcgan") == REPO / "configs" / "dcgan_celeba64.yaml"


def test_predictor_and_overlay_skipped_without_inputs(tmp_path):
    args = bp.argparse.Namespace(families="predictor,overlay,dcgan", kimg=1.0, shards=str(tmp_path), batch_size=64,
                                 data_workers=0, threads=1, set=[], smoke=False, classifier="",
                                 predictor_generator="")
    arms, skipped = bp.build_arms(args, tmp_path)
    assert "predictor" in skipped and "--predictor-generator" in skipped["predictor"]
    if not (REPO / "runs" / "classifier_celeba64").exists():
        assert "overlay" in skipped and "--classifier" in skipped["overlay"]
    assert [a.name for a in arms if a.family == "dcgan"] == ["fp32_s0", "fp32_s1", "bf16_s0"]
    bf16 = next(a for a in arms if a.name == "bf16_s0")
    assert "train.precision=bf16" in bf16.sets and "train.channels_last=true" in bf16.sets
    fp32 = next(a for a in arms if a.name == "fp32_s1")
    assert {"train.precision=fp32", "train.channels_last=false", "train.seed=1"} <= set(fp32.sets)


# ---------------------------------------------------------------- end to end (toy)

def test_toy_run_end_to_end(synthetic_shards, tmp_path):
    out, js = tmp_path / "bp", tmp_path / "bp.json"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", WANDB_MODE="offline")
    cmd = [sys.executable, str(SCRIPT), "--shards", str(synthetic_shards), "--out", str(out), "--families", "dcgan",
           "--kimg", "0.1", "--smoke", "--set", "model.base_channels=4", "--num-samples", "20", "--num-real", "20",
           "--jobs", "2", "--threads", "1", "--json", str(js)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(js.read_text())
    row = doc["families"]["dcgan"]
    assert set(row["arms"]) == {"fp32_s0", "fp32_s1", "bf16_s0"}
    assert row["speedup"] > 0
    assert row["verdict"] in ("same within noise", "degraded", "better")
    assert all(row["quality"][a] is not None for a in bp.ARMS)
    resolved = row["arms"]["bf16_s0"]["resolved"]
    assert resolved["precision"] == "bf16" and resolved["channels_last"] is True
    assert row["arms"]["fp32_s0"]["resolved"]["precision"] == "fp32"
    for arm in bp.ARMS:
        assert (out / "dcgan" / arm / bp.TIMING_JSON).is_file()
    assert "| dcgan |" in res.stdout
    assert res.stdout.count("trained in") == 3
    assert (out / "logs" / "dcgan_fp32_s0.train.log").is_file()
    # The judge scores the raw generator: a few-kimg EMA is still mostly the seed's initialisation.
    eval_cmd = json.loads((out / "dcgan" / "bf16_s0" / (bp.EVAL_JSON + ".cmd")).read_text())
    assert "--no-ema" in eval_cmd and not json.loads((out / "dcgan" / "bf16_s0" / bp.EVAL_JSON).read_text())["request"]["use_ema"]

    # A rerun with --reuse trains and evaluates nothing again.
    res2 = subprocess.run(cmd + ["--reuse"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert res2.returncode == 0, res2.stdout + res2.stderr
    assert res2.stdout.count("reused") == 6 and "trained in" not in res2.stdout
    assert json.loads(js.read_text())["families"]["dcgan"]["quality"] == row["quality"]
