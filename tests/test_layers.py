"""The import layers hold by themselves (import-linter contract in pyproject.toml), and a run
config validates without torch.

    .venv/bin/lint-imports          # what `make test` runs first
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def test_the_layer_contracts_hold() -> None:
    proc = subprocess.run([str(LINT), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


def test_a_layer_break_fails_the_contract(tmp_path: Path) -> None:
    """The contract bites: the loop reaching up into launch (the cycle this layout removed) fails."""
    shutil.copytree(REPO / "facegan", tmp_path / "facegan", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with open(tmp_path / "facegan" / "evaluation" / "offline.py", "a") as f:
        f.write("\nfrom facegan.launch.evaluate import ray_shares  # noqa\n")
    proc = subprocess.run([str(LINT), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout
    assert "facegan.evaluation.offline -> facegan.launch.evaluate" in proc.stdout


def test_run_configs_validate_without_torch() -> None:
    code = ("import sys\n"
            "from facegan.families import load_run_config\n"
            "import glob\n"
            "for path in sorted(glob.glob('configs/*.yaml')):\n"
            "    load_run_config(path, [], default_family='classifier' if 'classifier' in path else '')\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "print('ok', len(glob.glob('configs/*.yaml')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stdout + proc.stderr
