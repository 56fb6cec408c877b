"""`facegan eval`: a GAN checkpoint, an image folder and the baselines scored against real shards.

    .venv/bin/python -m pytest -q tests/test_evaluate.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facegan.config import ConfigError, from_dict
from facegan.evaluation.offline import CHUNK, EvalRequest, draw_chunk, evaluate
from facegan.families import RunConfig
from facegan.families.loading import load_generator
from facegan.loop import train

METRIC_KEYS = {"fid_attr", "kid_attr", "kid_std_attr", "precision_attr", "recall_attr", "ms_ssim", "ms_ssim_real",
               "ms_ssim_alarm", "d_acc_real", "d_acc_fake"}


@pytest.fixture(scope="module")
def trained(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny DCGAN and a tiny attribute classifier, both trained on the synthetic shards."""
    root = tmp_path_factory.mktemp("evaluate")
    gan = from_dict(RunConfig, {
        "data": {"shards": str(synthetic_shards), "batch_size": 16, "num_workers": 0},
        "model": {"family": "dcgan", "resolution": 32, "z_dim": 16, "base_channels": 8},
        "train": {"total_kimg": 0.32, "tick_kimg": 0.16, "checkpoint_kimg": 0.16, "out_dir": str(root / "gan"),
                  "num_threads": 1, "grid_size": 4},
        "wandb": {"enabled": False}})
    train(gan)
    clf = from_dict(RunConfig, {
        "data": {"shards": str(synthetic_shards), "batch_size": 16, "num_workers": 0, "shuffle_buffer": 64},
        "model": {"family": "classifier", "arch": "report_cnn", "resolution": 32, "dense_units": 64},
        "train": {"total_kimg": 0.32, "tick_kimg": 0.16, "checkpoint_kimg": 0.32, "out_dir": str(root / "clf"),
                  "num_threads": 1},
        "eval": {"splits": ["val"]},
        "wandb": {"enabled": False}})
    train(clf)
    return {"gan": root / "gan", "clf": root / "clf", "shards": synthetic_shards}


def request(trained: dict[str, Path], **kw) -> EvalRequest:
    base = dict(shards=str(trained["shards"]), classifier=str(trained["clf"]), num_samples=96,
                ms_ssim_pairs=32, kid_subset_size=16)
    return EvalRequest(**{**base, **kw})


def test_checkpoint_scores_are_named_after_the_attr_features(trained: dict[str, Path]) -> None:
    result = evaluate(request(trained, checkpoint=str(trained["gan"])))
    scores = result["scores"]
    assert METRIC_KEYS <= set(scores), sorted(scores)
    assert not {"fid", "kid", "precision", "recall"} & set(scores)  # never reported as a plain (Inception) FID
    from facegan.data.stream import ShardSet

    counts = ShardSet.open(str(trained["shards"]))
    assert scores["num_fake"] == 96
    assert scores["num_real_eval"] == counts.count("val") and scores["num_real_train"] == counts.count("train")
    assert all(np.isfinite(v) for v in scores.values())
    assert result["kimg"] == pytest.approx(0.32)
    assert any(k.startswith("memorisation") and k.endswith("_attr") for k in scores)


def test_real_held_out_is_near_the_floor_and_random_is_far(trained: dict[str, Path]) -> None:
    real = evaluate(request(trained, baseline="real"))["scores"]
    rand = evaluate(request(trained, baseline="random"))["scores"]
    assert real["fid_attr"] < 0.5 * rand["fid_attr"], (real["fid_attr"], rand["fid_attr"])
    assert real["recall_attr"] > rand["recall_attr"]


def test_image_folder_scores_equal_the_checkpoint_that_drew_them(trained: dict[str, Path], tmp_path: Path) -> None:
    """Another program's samples are scored on equal terms: the same images as PNG files give the same scores."""
    loaded = load_generator(trained["gan"])
    images = torch.cat([draw_chunk(loaded.G, i, seed=0, num=CHUNK if i == 0 else 96 - CHUNK, steps=loaded.steps)
                        for i in range(2)])
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    (folder / "0050b.png").write_bytes(b"not a png")
    from_folder = evaluate(request(trained, images=str(folder)))["scores"]
    from_ckpt = evaluate(request(trained, checkpoint=str(trained["gan"])))["scores"]
    assert from_folder["skipped_inputs"] == 1
    for key in ("fid_attr", "kid_attr", "precision_attr", "recall_attr", "ms_ssim"):
        assert from_folder[key] == pytest.approx(from_ckpt[key], rel=1e-4, abs=1e-6), key


def test_bad_requests_fail_before_any_work(trained: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of --checkpoint, --images, --baseline"):
        request(trained, checkpoint=str(trained["gan"]), baseline="random")
    with pytest.raises(ConfigError, match="needs --inception-weights"):
        request(trained, baseline="random", features="inception")
    with pytest.raises(ConfigError, match="classifier: .*does not exist"):
        request(trained, baseline="random", classifier=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="unknown"):
        request(trained, baseline="random", metrics=["fid_typo"])
    with pytest.raises(ConfigError, match="needs --classifier"):
        evaluate(request(trained, baseline="random", classifier=""))


def test_cli_prints_a_table_and_writes_json(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    from facegan.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", "--baseline", "random", "--shards", str(trained["shards"]), "--classifier",
                 str(trained["clf"]), "--num-samples", "64", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fid_attr" in text and "random baseline" in text
    assert json.loads(out.read_text())["scores"]["num_fake"] == 64


def test_cli_logs_the_scores_as_an_eval_run_on_wandb(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    """--wandb PROJECT: one offline W&B run of job_type eval beside the JSON, whose history holds the
    scores, and the line that uploads it."""
    from test_wandb import history, offline_runs, run_record

    from facegan.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", "--baseline", "random", "--shards", str(trained["shards"]), "--classifier",
                 str(trained["clf"]), "--num-samples", "32", "--face", "off", "--json", str(out),
                 "--wandb", "facegan-test"]) == 0
    text = capsys.readouterr().out
    (run,) = offline_runs(tmp_path)
    assert f"wandb sync {run}" in text
    record = run_record(run)
    assert record.job_type == "eval" and "features-attr" in record.tags and "baseline" in record.tags
    scores = json.loads(out.read_text())["scores"]
    (row,) = [r for r in history(run) if "fid_attr" in r]
    assert row["fid_attr"] == pytest.approx(scores["fid_attr"]) and row["num_fake"] == 32


def test_training_reports_the_metrics_every_k_images(trained: dict[str, Path], tmp_path: Path) -> None:
    cfg = from_dict(RunConfig, {
        "data": {"shards": str(trained["shards"]), "batch_size": 16, "num_workers": 0},
        "model": {"family": "dcgan", "resolution": 32, "z_dim": 16, "base_channels": 8},
        "train": {"total_kimg": 0.32, "tick_kimg": 0.08, "checkpoint_kimg": 0.32, "out_dir": str(tmp_path / "run"),
                  "num_threads": 1, "grid_size": 4},
        "eval": {"every_kimg": 0.16, "num_samples": 64, "num_real": 64, "classifier": str(trained["clf"])},
        "wandb": {"enabled": False}})
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    ticks = [r for r in rows if r["kind"] == "tick"]
    with_eval = [r for r in ticks if "fid_attr" in r]
    assert len(ticks) == 4 and [r["kimg"] for r in with_eval] == pytest.approx([0.16, 0.32])
    assert all(np.isfinite(r["fid_attr"]) and 0 <= r["ms_ssim"] <= 1 for r in with_eval)
    with pytest.raises(ConfigError, match="eval.classifier"):
        from_dict(RunConfig, {"data": {"shards": "x"}, "eval": {"every_kimg": 1}})


@pytest.mark.slow
def test_ray_workers_gather_the_same_sets(trained: dict[str, Path], ray_cluster) -> None:
    req = request(trained, checkpoint=str(trained["gan"]))
    alone = evaluate(req)["scores"]
    from facegan.launch.evaluate import ray_shares

    shared = evaluate(req, shares=ray_shares(req, workers=2))["scores"]
    assert shared["num_fake"] == alone["num_fake"] and shared["num_real_train"] == alone["num_real_train"]
    for key in ("fid_attr", "kid_attr", "precision_attr", "recall_attr", "d_acc_real", "d_acc_fake", "ms_ssim",
                "ms_ssim_real"):
        assert shared[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6), key
