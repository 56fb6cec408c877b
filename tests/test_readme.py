"""Keep the README and the recipes true: run every README example and every shards/*.yaml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from facegan.config import load_yaml
from facegan.data.recipe import ShardRecipe
from facegan.data.writer import build_shards, verify_shards

from conftest import REPO, make_celeba, make_utkface, write_jpeg

README = (REPO / "README.md").read_text()


def code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def toy_sources(root: Path) -> dict[str, str]:
    """Tiny stand-ins for the data a README reader points the commands at."""
    make_celeba(root / "celeba", n=20, seed=1)
    make_celeba(root / "celeba_imgs", n=8, extra_rows=30, annotations=root / "celeba_ann", seed=2)
    make_utkface(root / "utkface", n=10)
    faces = root / "faces"
    rows = ["file,Smiling,Male"]
    for i in range(6):
        write_jpeg(faces / ("a" if i % 2 else "b") / f"f{i}.png", seed=i)
        rows.append(f"{'a' if i % 2 else 'b'}/f{i}.png,{i % 2},{(i // 2) % 2}")
    (faces / "labels.csv").write_text("\n".join(rows) + "\n")
    return {"CELEBA": str(root / "celeba"), "CELEBA_ANN": str(root / "celeba_ann"),
            "UTKFACE": str(root / "utkface"), "FACES": str(faces)}


def commands(block: str) -> list[str]:
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_readme_commands_run(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for name in ("shards", "configs", "sweeps"):
        (work / name).symlink_to(REPO / name)
    env = dict(os.environ, **toy_sources(tmp_path / "src"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    # Every bash example but the `make` one (test_make_demo_runs covers `make demo`).
    blocks = [b for b in code_blocks("bash") if not b.lstrip().startswith("make ")]
    assert any("facegan shards" in b for b in blocks) and any("facegan train" in b for b in blocks)
    ran = 0
    for block in blocks:
        for cmd in commands(block):
            # The CelebA-annotations-apart example uses the partial image folder.
            if "--annotations $CELEBA_ANN" in cmd:
                cmd = cmd.replace("--root $CELEBA ", f"--root {tmp_path / 'src' / 'celeba_imgs'} ")
            proc = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, f"README command failed: {cmd}\n{proc.stdout}\n{proc.stderr}"
            ran += 1
    assert ran >= 10
    assert "rows without an image: 30" in _run_out(work, env, "facegan shards build shards/celeba_native.yaml "
                                                   f"--root {tmp_path / 'src' / 'celeba_imgs'} --annotations "
                                                   "$CELEBA_ANN --out data/again --no-progress")


def _run_out(cwd: Path, env: dict[str, str], cmd: str) -> str:
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_readme_python_examples_run(tmp_path: Path) -> None:
    from facegan.config import from_dict

    blocks = code_blocks("python")
    assert blocks
    recipe = from_dict(ShardRecipe, {"source": "synthetic", "count": 300, "resolution": 64, "shard_size": 50})
    build_shards(recipe, root=None, out=tmp_path / "demo_out" / "shards", progress=False)
    for block in blocks:
        proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"README python example failed:\n{block}\n{proc.stderr}"


def test_readme_lists_the_family_registry() -> None:
    """The family table under "## Model families" and the Layout's family folders are the registry, in its order."""
    from facegan.families import FAMILIES

    section = README.split("\n## Model families\n", 1)[1].split("\n## ", 1)[0]
    table = re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M)
    assert table == list(FAMILIES), f"README family table {table} != facegan.families.FAMILIES {list(FAMILIES)}"
    folders = " ".join(f"{name}/" for name in FAMILIES)
    assert f"\n  {folders}\n" in README, f"README Layout should list the family folders: {folders}"


@pytest.mark.slow
def test_make_demo_runs(tmp_path: Path) -> None:
    """`make demo` as a new user runs it (the venv already exists: `make test` made it)."""
    proc = subprocess.run(["make", "demo", f"OUT={tmp_path / 'demo'}",
                           "DEMO_ARGS=--set train.total_kimg=0.5 --set train.tick_kimg=0.25"],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ok: " in proc.stdout and "trained dcgan" in proc.stdout
    assert (tmp_path / "demo" / "run" / "samples" / "latest.png").stat().st_size > 0
    assert list((tmp_path / "demo" / "run" / "checkpoints").glob("ckpt-*"))


@pytest.mark.parametrize("recipe_path", sorted(p.name for p in (REPO / "shards").glob("*.yaml")))
def test_every_shard_recipe_builds_at_toy_size(recipe_path: str, tmp_path: Path) -> None:
    sources = toy_sources(tmp_path / "src")
    recipe = load_yaml(ShardRecipe, REPO / "shards" / recipe_path, overrides=["count=40", "shard_size=8"])
    root = {"celeba": sources["CELEBA"], "utkface": sources["UTKFACE"], "folder": sources["FACES"],
            "synthetic": None}[recipe.source]
    m = build_shards(recipe, root=root, out=tmp_path / "out", progress=False).manifest
    assert m["counts"]["total"] > 0 and m["resolution"] == [recipe.height, recipe.width]
    assert verify_shards(tmp_path / "out") == []


# ============================================================================ sweeps/*.yaml

def toy_sweep_overrides(path: Path, shards: Path, out: Path) -> list[str]:
    """`--set` overrides that shrink a shipped sweep to seconds: 32 px shards, 8 channels, 6 steps, 1-2 trials."""
    raw = yaml.safe_load(path.read_text())
    sets = [f"config.data.shards={shards}", "config.data.batch_size=8", "config.data.num_workers=0",
            "config.data.shuffle_buffer=16", "config.model.resolution=32", "config.model.base_channels=8",
            "config.train.tick_kimg=0.016", "config.train.checkpoint_kimg=0.016", "config.train.grid_size=4",
            "config.train.num_threads=1", "config.train.ema_kimg=0.1", "config.wandb.enabled=false",
            "budget.trial_kimg=0.048", "budget.max_trials=1", "budget.max_minutes=10", "resources.num_workers=1",
            "resources.max_concurrent=2", f"out={out}"]
    kind = raw.get("scheduler", {}).get("kind", "fifo")
    if kind == "asha":
        sets.append("scheduler.grace_kimg=0.016")
    if kind == "pbt":  # a population of 2 where the worse one copies the better at the first perturbation
        sets += ["scheduler.perturbation_kimg=0.016", "scheduler.quantile_fraction=0.5", "budget.max_trials=2"]
    if raw["objective"]["metric"].startswith("eval/"):  # the family's own scoring (the VAE's ELBO): every tick
        sets.append("config.eval.every_kimg=0.016")
    elif raw["objective"]["metric"] not in ("loss/g", "loss/d"):  # an eval metric needs a classifier: not at toy size
        sets += ["objective.metric=loss/g", "config.eval.every_kimg=0"]
    if raw["family"] == "overlay":  # the attributes from the shards' labels: no classifier checkpoint needed
        sets.append("config.gan.attr_source=labels")
    return sets


def _sweep_files(*, runnable_only: bool = False) -> list[str]:
    """sweeps/*.yaml; with runnable_only, those whose family is built (the others are checked to be
    refused by name in test_every_sweep_validates)."""
    from facegan.families import FAMILIES

    paths = sorted((REPO / "sweeps").glob("*.yaml"))
    return [p.name for p in paths if not runnable_only or yaml.safe_load(p.read_text())["family"] in FAMILIES]


@pytest.mark.parametrize("sweep_name", _sweep_files())
def test_every_sweep_validates(sweep_name: str) -> None:
    """Every shipped sweep checks out; a sweep of a family not built yet is refused naming the family."""
    from facegan.config import ConfigError
    from facegan.families import FAMILIES
    from facegan.sweeps.spec import load_sweep

    path = REPO / "sweeps" / sweep_name
    family = yaml.safe_load(path.read_text())["family"]
    if family not in FAMILIES:
        with pytest.raises(ConfigError, match=f"family: expected one of .*, got '{family}'"):
            load_sweep(path)
        return
    plan = load_sweep(path)
    assert plan.num_trials >= 1 and plan.spec.name == path.stem


@pytest.mark.slow
@pytest.mark.tune
@pytest.mark.parametrize("sweep_name", _sweep_files(runnable_only=True))
def test_every_sweep_runs_at_toy_size(sweep_name: str, tmp_path: Path, synthetic_shards: Path,
                                      ray_cluster: object) -> None:
    from facegan.launch.tune import run_sweep
    from facegan.sweeps.spec import load_sweep

    path = REPO / "sweeps" / sweep_name
    plan = load_sweep(path, overrides=toy_sweep_overrides(path, synthetic_shards, tmp_path / "sweep"))
    summary = run_sweep(plan)
    assert summary["num_errors"] == 0, summary
    trials = list((tmp_path / "sweep" / "trials").iterdir())
    assert len(trials) == plan.num_trials
    assert all((t / "done.json").is_file() for t in trials)
    assert summary["best"] is not None and Path(summary["report"]).stat().st_size > 0
