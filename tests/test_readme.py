"""Keep the README and the recipes true: run every README example and every shards/*.yaml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    for name in ("shards", "configs"):
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
