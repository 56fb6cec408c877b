"""Ordinary mistakes get one line naming the flag, field or file, exit status 2, no traceback, and
leave nothing half-written; the CLI's help is complete and fast.

    .venv/bin/python -m pytest -q tests/test_cli_errors.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from facegan.cli import build_parser, main
from facegan.config import from_dict
from facegan.families import RunConfig
from facegan.loop import train


@pytest.fixture(scope="module")
def runs(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_runs(tmp_path_factory.mktemp("cli_errors"), synthetic_shards)


def make_runs(root: Path, synthetic_shards: Path, *, conditional: bool = False) -> dict[str, Path]:
    """Tiny finished runs under root: a DCGAN (gan), a classifier (clf), with `conditional` a
    conditional GAN (cond); the DCGAN's config (cfg) and a folder of three PNGs (three)."""
    gan = {"data": {"shards": str(synthetic_shards), "batch_size": 8, "num_workers": 0},
           "model": {"family": "dcgan", "resolution": 32, "z_dim": 8, "base_channels": 4},
           "train": {"total_kimg": 0.016, "tick_kimg": 0.016, "checkpoint_kimg": 0.016, "out_dir": str(root / "gan"),
                     "num_threads": 1, "grid_size": 4},
           "wandb": {"enabled": False}}
    train(from_dict(RunConfig, gan))
    if conditional:
        train(from_dict(RunConfig, {**gan, "model": {**gan["model"], "family": "conditional"},
                                    "train": {**gan["train"], "out_dir": str(root / "cond")}}))
    train(from_dict(RunConfig, {"data": gan["data"], "model": {"family": "classifier", "resolution": 32,
                                                                "dense_units": 8},
                                "train": {**{k: v for k, v in gan["train"].items() if k != "grid_size"},
                                          "out_dir": str(root / "clf")},
                                "eval": {"splits": ["val"]}, "wandb": {"enabled": False}}))
    (root / "gan.yaml").write_text(yaml.safe_dump(gan))
    three = root / "three"
    three.mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(three / f"{i}.png")
    return {"root": root, "gan": root / "gan", "clf": root / "clf", "cfg": root / "gan.yaml",
            "shards": synthetic_shards, "three": three, **({"cond": root / "cond"} if conditional else {})}


MISTAKES = [
    # (argv with placeholders, expected message regex, paths that must not exist afterwards)
    (["sample", "--checkpoint", "{gan}", "-n", "0", "--out", "{tmp}/s.png"], r"-n: expected a positive", ["s.png"]),
    (["sample", "--checkpoint", "{gan}", "-n", "-3", "--out", "{tmp}/s.png"], r"-n: expected a positive", ["s.png"]),
    (["sample", "--checkpoint", "{gan}", "--out", "{tmp}"], r"--out: expected a .png file", []),
    (["sample", "--checkpoint", "{gan}", "--out", "{tmp}/s.txt"], r"--out: expected a .png file", ["s.txt"]),
    (["sample", "--checkpoint", "{clf}", "--out", "{tmp}/s.png"], r"a classifier checkpoint has no generator", ["s.png"]),
    (["sample", "--checkpoint", "{tmp}/nothing", "--out", "{tmp}/s.png"], r"no facegan checkpoint here", ["s.png"]),
    (["eval", "--images", "{three}", "--shards", "{shards}", "--classifier", "{clf}", "--num-real", "16"],
     r"holds 3 images .*evaluation needs at least 10", []),
    (["eval", "--baseline", "random", "--shards", "{shards}", "--classifier", "{clf}", "--num-real", "1"],
     r"--num-real\): expected 10\.\.", []),
    (["eval", "--baseline", "random", "--shards", "{shards}", "--classifier", "{clf}", "--num-samples", "16",
      "--num-real", "16", "--json", "{tmp}"], r"--json: expected a .json file", []),
    (["eval", "--checkpoint", "{gan}", "--shards", "{tmp}/noshards", "--classifier", "{clf}"], r"noshards", []),
    (["train", "{cfg}", "--no-ray", "--set", "train.out_dir={ro}/run"], r"train.out_dir: cannot write to", []),
    (["train", "{cfg}", "--no-ray", "--set", "train.out_dir={tmp}/afile"], r"train.out_dir: .*afile exists and is not a directory", []),
    (["train", "{cfg}", "--no-ray", "--set", "train.resume=latest", "--set", "train.out_dir={tmp}/fresh"],
     r"train.resume: latest, but .* holds no checkpoint", []),
    (["train", "{cfg}", "--no-ray", "--set", "data.batch_size=100000"], r"data.batch_size: expected 1..65536", []),
    (["train", "{cfg}", "--no-ray", "--set", "data.batch_size=5000"], r"data.batch_size 5000 x 1 rank is more than", []),
    (["train", "{cfg}", "--no-ray", "--set", "model.resolution=100000"], r"model.resolution: expected a power of two", []),
    (["train", "{cfg}", "--set", "ray.num_workers=2", "--set", "train.out_dir={ro}/run"], r"train.out_dir: cannot write", []),
    (["sweep", "{tmp}/sweep.yaml", "--check"], r"does not exist|no manifest", []),
]


@pytest.mark.parametrize("argv, message, absent", MISTAKES, ids=[" ".join(m[0][:2]) + f"-{i}" for i, m in enumerate(MISTAKES)])
def test_ordinary_mistakes_exit_2_with_one_line(argv: list[str], message: str, absent: list[str], runs: dict[str, Path],
                                                tmp_path: Path, capsys: Any) -> None:
    ro = Path("/proc/facegan-not-writable")   # not writable even for root (CI runs as root)
    (tmp_path / "afile").write_text("x")
    sweep = yaml.safe_load((REPO / "sweeps" / "dcgan_lr_asha.yaml").read_text())
    sweep["config"] = {**sweep.get("config", {}), "data": {"shards": str(tmp_path / "missing_shards")}}
    sweep["out"] = str(tmp_path / "sweep_out")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    filled = [a.format(tmp=tmp_path, ro=ro, **{k: str(v) for k, v in runs.items()}) for a in argv]
    code = main(filled)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), lines[0]
    for name in absent:
        assert not (tmp_path / name).exists(), name
    assert not (tmp_path / "sweep_out").exists()


def test_blank_yaml_values_mean_the_default_never_the_string_none(runs: dict[str, Path], tmp_path: Path) -> None:
    from facegan.families import load_run_config

    cfg_path = tmp_path / "blank.yaml"
    cfg_path.write_text(runs["cfg"].read_text().replace(f"out_dir: {runs['root'] / 'gan'}", "out_dir:")
                        + "eval:\n  classifier:\n")
    cfg = load_run_config(str(cfg_path), [])
    assert cfg.train.out_dir == "runs/default" and cfg.eval.classifier == ""
    from facegan.config import to_dict

    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, (list, tuple)):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []

    # No value became the string "None" (a field whose default is null stays null).
    assert "None" not in strings(to_dict(cfg)) and all("None" not in s for s in strings(to_dict(cfg)))
    cfg_path.write_text("data:\n  shards:\n")
    with pytest.raises(Exception, match="data.shards: expected the location of a shard set"):
        load_run_config(str(cfg_path), [])


def test_every_option_has_help_and_the_top_help_has_examples() -> None:
    parser = build_parser()
    missing = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(parser, "facegan")
    assert not missing, missing
    text = parser.format_help()
    for group in ("shards build", "train", "classifier train", "eval", "sweep", "generate", "invert", "edit"):
        assert f"facegan {group}" in text, group


def test_version_and_help_are_fast_and_import_no_torch() -> None:
    code = ("import sys, time; t = time.perf_counter(); from facegan.cli import build_parser; "
            "build_parser().format_help(); print('torch' in sys.modules, time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False" and float(out[1]) < 0.5, out
    t0 = time.perf_counter()
    ver = subprocess.run([sys.executable, "-m", "facegan.cli", "--version"], capture_output=True, text=True, check=True)
    assert ver.stdout.startswith("facegan ") and time.perf_counter() - t0 < 5
