"""Checkpoints written by earlier facegans still load, sample and resume.

The fixtures in tests/fixtures/legacy_v1/ were written by facegan at commit 41172b7 (tiny 16 px
DCGAN and conditional runs, a 32 px report-CNN classifier); their configs name shard folders that
no longer exist, which loading must not need. tests/fixtures/format_2/ holds format-2 checkpoints
(16 px DCGAN and BEGAN, 2 steps) written at commit 8f8dfce, before the loop's run state became one
object (facegan.runstate), by tests/fixtures/format_2/make.py, with what resuming each for 2 more
steps ended with at that commit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import REPO
from facegan.checkpoint import FORMAT_VERSION, list_checkpoints, load_checkpoint
from facegan.config import from_dict
from facegan.errors import CheckpointError
from facegan.families import RunConfig
from facegan.families.loading import load_generator, load_run
from facegan.loop import train

FIXTURES = REPO / "tests" / "fixtures" / "legacy_v1"
FORMAT_2 = REPO / "tests" / "fixtures" / "format_2"


@pytest.mark.parametrize("name", ["dcgan", "conditional", "classifier"])
def test_format_1_checkpoints_load(name: str) -> None:
    assert json.loads((FIXTURES / name / "meta.json").read_text())["format_version"] == 1
    run = load_run(FIXTURES / name)
    assert run.family.name == name
    if name == "classifier":
        from facegan.families.classifier.scoring import load_classifier

        net = load_classifier(FIXTURES / name)
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 40) and net.scored_attrs
        return
    gen = load_generator(FIXTURES / name)
    img = gen.sample(4, seed=0)
    assert img.shape == (4, 3, 16, 16) and torch.isfinite(img).all()
    if name == "conditional":      # attribute names and rates came from the v1 meta, not the shards
        assert len(gen.attr_names) == 40 and gen.prevalence_A is not None


def test_a_format_1_dcgan_checkpoint_resumes_training(tmp_path: Path) -> None:
    from facegan.data.recipe import ShardRecipe
    from facegan.data.writer import build_shards

    shards = tmp_path / "shards"
    build_shards(from_dict(ShardRecipe, {"source": "synthetic", "count": 64, "resolution": 16, "shard_size": 16,
                                         "workers": 1, "seed": 1}), root=None, out=shards, progress=False)
    old = json.loads((FIXTURES / "dcgan" / "meta.json").read_text())["config"]
    cfg = from_dict(RunConfig, {**old, "data": {**old["data"], "shards": str(shards)},
                                "train": {**old["train"], "out_dir": str(tmp_path / "run"), "total_kimg": 0.032,
                                          "resume": str(FIXTURES / "dcgan")}})
    metrics = train(cfg)
    assert metrics["images_seen"] == 32 and metrics["step"] == 4   # 2 steps in the fixture + 2 more
    state, meta = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert meta["format_version"] == FORMAT_VERSION and "family" in state and {"G", "D", "G_ema", "opt_G", "opt_D"} <= set(state)


def _flat(state: dict) -> dict[str, torch.Tensor]:
    """As tests/fixtures/format_2/make.py keeps a run's end: per net, EMA copy and family state, its
    floating-point tensors in key order as one tensor."""
    return {key: torch.cat([t.detach().flatten().float() for _, t in sorted(part.items())
                            if isinstance(t, torch.Tensor) and t.is_floating_point()])
            for key, part in state.items() if key not in ("rng", "scaler") and not key.startswith("opt_") and part}


@pytest.mark.parametrize("name", ["dcgan", "began"])
def test_a_format_2_checkpoint_from_before_the_run_state_resumes_to_the_same_tensors(name: str, tmp_path: Path):
    from facegan.data.recipe import ShardRecipe
    from facegan.data.writer import build_shards

    fixture = FORMAT_2 / name
    saved = json.loads((fixture / "meta.json").read_text())
    assert saved["format_version"] == 2 and saved["step"] == 2
    shards = tmp_path / "shards"
    build_shards(from_dict(ShardRecipe, {"source": "synthetic", "count": 64, "resolution": 16, "shard_size": 16,
                                         "workers": 1, "seed": 1}), root=None, out=shards, progress=False)
    old = saved["config"]
    cfg = from_dict(RunConfig, {**old, "data": {**old["data"], "shards": str(shards)},
                                "train": {**old["train"], "out_dir": str(tmp_path / "run"), "total_kimg": 0.032,
                                          "resume": str(fixture),
                                          # what `auto` meant on CPU when the fixture was recorded
                                          "precision": "fp32", "channels_last": False}})
    metrics = train(cfg)
    assert metrics["step"] == 4 and metrics["images_seen"] == 32
    state, meta = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert meta["step"] == 4 and meta["loader"]["start_batch"] == 4
    expected = torch.load(FORMAT_2 / f"{name}.after_resume.pt", weights_only=True)
    got = _flat(state)
    assert set(got) == set(expected) and ("family" in got) == (name == "began")
    for key, t in expected.items():
        torch.testing.assert_close(got[key], t, rtol=0, atol=0, msg=f"{name}: {key}")


def test_a_newer_format_is_refused_naming_both_versions(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "dcgan", tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(CheckpointError, match="format 99 is newer than this facegan's"):
        load_run(tmp_path / "ckpt")


def test_loop_names_no_family() -> None:
    """The loop runs any family's phases; it never asks which family it runs."""
    from facegan.families import FAMILIES

    text = (REPO / "facegan" / "loop.py").read_text()
    for name in FAMILIES:
        assert f'"{name}"' not in text and f"'{name}'" not in text, name
    assert "uses_attrs" not in text and "d_noise_std" not in text
