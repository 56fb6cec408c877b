"""Round two of "nothing lost, nothing silent" (issue 23): each bad input gets one line naming the
flag, field or file, exit status 2 (130 for Ctrl-C), no traceback, and the files around it stay as
they were; one writer per run folder and per shard --out; checkpoints checked against their
checksums; 16-bit and EXIF-rotated photos converted as they look.

    .venv/bin/python -m pytest -q tests/test_cli_errors2.py
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from facegan.cli import main
from facegan.config import from_dict
from facegan.families import RunConfig
from test_cli_errors import make_runs


@pytest.fixture(scope="module")
def runs(synthetic_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_runs(tmp_path_factory.mktemp("cli_errors2"), synthetic_shards, conditional=True)


def snapshot(*roots: Path) -> dict[str, Any]:
    """Every file's sha1 and every folder's entries under `roots` (mtimes of folders aside: a lock
    file made and removed again leaves the tree as it was)."""
    out: dict[str, Any] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
            elif path.is_dir():
                out[str(path)] = sorted(p.name for p in path.iterdir())
    return out


def _prepare(tmp: Path, runs: dict[str, Path]) -> None:
    (tmp / "afile").write_text("x")
    (tmp / "adir").mkdir()
    cfg = runs["cfg"].read_text()
    (tmp / "dup.yaml").write_text(cfg + "data:\n  batch_size: 4\n")
    (tmp / "name_only.yaml").write_text("name: x\n")
    (tmp / "empty.pth").write_bytes(b"")
    bad = tmp / "badmeta"
    shutil.copytree(next((runs["gan"] / "checkpoints").iterdir()), bad)
    (bad / "meta.json").write_text("[]")


# (id, argv with placeholders, expected message regex, extra environment)
CASES: list[tuple[str, list[str], str, dict[str, str]]] = [
    # data destroyed or mixed
    ("augment-src-as-out", ["augment", "{shards}", "--checkpoint", "{gan}", "--jitter", "0.1", "--out", "{shards}"],
     r"--out .*is the input SRC itself", {}),
    ("augment-out-inside-src", ["augment", "{shards}", "--checkpoint", "{gan}", "--jitter", "0.1",
                                "--out", "{shards}/aug"], r"--out .*is inside the input SRC", {}),
    ("build-out-is-root", ["shards", "build", "--source", "folder", "--root", "{tmp}/adir", "--out", "{tmp}/adir"],
     r"--out .*is the input --root itself", {}),
    ("train-over-a-run", ["train", "{cfg}", "--no-ray"], r"train.out_dir: .*already holds a run .*--overwrite", {}),
    ("resume-past-total", ["train", "{cfg}", "--no-ray", "--set", "train.resume=latest"],
     r"train.total_kimg: .*already at 0.016 kimg", {}),
    ("dup-yaml-key", ["train", "{tmp}/dup.yaml", "--no-ray"], r"dup.yaml: line \d+: key 'data' given twice", {}),
    ("sweep-trial-kimg-inf", ["sweep", "sweeps/dcgan_lr_asha.yaml", "--check", "--config-only",
                              "--set", "budget.trial_kimg=inf"], r"budget.trial_kimg: expected a finite number", {}),
    ("sweep-trial-kimg-huge", ["sweep", "sweeps/dcgan_lr_asha.yaml", "--check", "--config-only",
                               "--set", "budget.trial_kimg=1e300"], r"budget.trial_kimg: expected 0\.\.1,000,000", {}),
    ("sweep-total-kimg-inf", ["sweep", "sweeps/dcgan_lr_asha.yaml", "--check", "--config-only", "--set",
                              "budget.trial_kimg=0", "--set", "config.train.total_kimg=inf"],
     r"train.total_kimg: expected a finite number", {}),
    ("compare-bogus-attr", ["compare", "{gan}", "--shards", "{shards}", "--classifier", "{clf}", "--attrs", "Bogus",
                            "--out", "{tmp}/c.html"], r"--attrs: unknown attribute Bogus", {}),
    # unbounded sizes and hangs
    ("stream-workers", ["shards", "stream", "{shards}", "--workers", "100000"], r"--workers: expected 0\.\.64", {}),
    ("sample-n", ["sample", "--checkpoint", "{gan}", "-n", "100000000", "--out", "{tmp}/s.png"],
     r"-n 100000000 \(32x32 images\): needs about .* of memory", {}),
    ("generate-n", ["generate", "--checkpoint", "{cond}", "-n", "100000000", "--out", "{tmp}/g.png"],
     r"-n 100000000 \(32x32 images\): needs about", {}),
    ("directions-num-samples", ["directions", "--checkpoint", "{gan}", "--classifier", "{clf}",
                                "--num-samples", "100000000000"], r"--num-samples: expected 20\.\.1,000,000", {}),
    ("num-threads", ["train", "{cfg}", "--no-ray", "--set", "train.num_threads=100000"],
     r"train.num_threads: expected 0\.\.1024", {}),
    ("ray-address", ["train", "{cfg}", "--set", "ray.address=127.0.0.1:1", "--set", "train.out_dir={tmp}/r"],
     r"no Ray cluster at 127.0.0.1:1 \(ray.address", {}),
    ("build-ray-address", ["shards", "build", "--source", "synthetic", "--count", "32", "--resolution", "16",
                           "--ray", "--address", "127.0.0.1:1", "--out", "{tmp}/rs"],
     r"no Ray cluster at 127.0.0.1:1 \(--address", {}),
    ("ray-address-env", ["train", "{cfg}", "--set", "train.out_dir={tmp}/r"],
     r"\$RAY_ADDRESS: expected auto or host:port", {"RAY_ADDRESS": "garbage"}),
    # fsspec URLs
    ("verify-missing-package", ["shards", "verify", "nopkg://bucket/set"],
     r"nopkg://bucket/set: the nopkg:// protocol needs a package that is not installed \(Install nopkgfs", {}),
    ("verify-s3-no-credentials", ["shards", "verify", "s3://bucket/set"],
     r"s3://bucket/set: the s3:// protocol needs .*s3fs|s3://bucket/set/manifest.json: cannot read: NoCredentialsError"
     r"|s3://bucket: no S3 credentials found; set AWS_ACCESS_KEY_ID",
     {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_CONFIG_FILE": "/nonexistent",
      "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}),
    ("stream-foo", ["shards", "stream", "foo://x/set"], r"foo://x/set: unknown protocol foo://", {}),
    ("build-foo", ["shards", "build", "--source", "synthetic", "--count", "32", "--out", "foo://x/set"],
     r"unknown protocol foo://", {}),
    ("train-missing-package", ["train", "{cfg}", "--no-ray", "--set", "data.shards=nopkg://bucket/set"],
     r"data.shards|nopkg:// protocol needs .*nopkgfs", {}),
    # a file where a folder is needed, or the reverse
    ("sample-out-dir-file", ["sample", "--checkpoint", "{gan}", "--out-dir", "{tmp}/afile"],
     r"--out-dir: .*afile is a file; expected a folder", {}),
    ("eval-json-under-file", ["eval", "--baseline", "random", "--shards", "{shards}", "--classifier", "{clf}",
                              "--json", "{tmp}/afile/x.json"], r"--json: .*afile is a file, not a folder", {}),
    ("eval-images-file", ["eval", "--images", "{tmp}/afile", "--shards", "{shards}", "--classifier", "{clf}"],
     r"--images: .*afile is a file; expected a folder", {}),
    ("classifier-eval-json", ["classifier", "eval", "--checkpoint", "{clf}", "--shards", "{shards}",
                              "--json", "{tmp}/afile/x.json"], r"--json: .*afile is a file, not a folder", {}),
    ("compare-out-under-file", ["compare", "{gan}", "--shards", "{shards}", "--classifier", "{clf}",
                                "--out", "{tmp}/afile/c.html"], r"--out: .*afile is a file, not a folder", {}),
    ("inspect-preview-under-file", ["shards", "inspect", "{shards}", "--preview", "{tmp}/afile/x.png"],
     r"--preview: .*afile is a file, not a folder", {}),
    ("inspect-json-dir", ["shards", "inspect", "{shards}", "--json", "{tmp}/adir"], r"--json: .*adir is a folder", {}),
    # ordinary mistakes that were tracebacks
    ("total-kimg-inf", ["train", "{cfg}", "--no-ray", "--set", "train.total_kimg=inf"],
     r"train.total_kimg: expected a finite number", {}),
    ("meta-json-list", ["sample", "--checkpoint", "{tmp}/badmeta", "--out", "{tmp}/s.png"],
     r"meta.json: expected a JSON object", {}),
    ("sweep-name-only", ["sweep", "{tmp}/name_only.yaml", "--check"], r"name_only.yaml: missing keys family, base", {}),
    ("augment-identities", ["augment", "{shards}", "--checkpoint", "{gan}", "--jitter", "0.1", "--identities",
                            "1,2,x", "--out", "{tmp}/aug"], r"--identities: expected comma-separated integer ids", {}),
    ("inception-empty", ["eval", "--baseline", "random", "--shards", "{shards}", "--features", "inception",
                         "--inception-weights", "{tmp}/empty.pth"], r"empty.pth: the file is empty", {}),
    ("wandb-mode-bogus", ["train", "{cfg}", "--no-ray", "--set", "wandb.enabled=true", "--set",
                          "train.out_dir={tmp}/w"], r"\$WANDB_MODE: expected one of online, offline, disabled",
     {"WANDB_MODE": "bogus"}),
    ("wandb-garbage-key", ["train", "{cfg}", "--no-ray", "--set", "wandb.enabled=true", "--set",
                           "train.out_dir={tmp}/w"], r"WANDB_API_KEY: API key must have 40\+ characters",
     {"WANDB_MODE": "online", "WANDB_API_KEY": "garbage"}),
]


@pytest.mark.parametrize("argv, message, env", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_inputs_exit_2_with_one_line_and_change_nothing(argv: list[str], message: str, env: dict[str, str],
                                                            runs: dict[str, Path], tmp_path: Path, capsys: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _prepare(tmp_path, runs)
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from fsspec.registry import known_implementations

    # A protocol fsspec knows whose package is not installed (whether s3fs, gcsfs are, varies).
    monkeypatch.setitem(known_implementations, "nopkg", {"class": "nopkgfs.NoPkgFileSystem",
                                                         "err": "Install nopkgfs to access nopkg://"})
    before = snapshot(tmp_path, runs["root"], runs["shards"])
    filled = [a.format(tmp=tmp_path, **{k: str(v) for k, v in runs.items()}) for a in argv]
    t0 = time.monotonic()
    code = main(filled)
    seconds = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and re.search(message, lines[0]), lines[0]
    assert snapshot(tmp_path, runs["root"], runs["shards"]) == before
    assert seconds < 30, f"took {seconds:.0f} s"   # an unreachable Ray address is named within seconds


def test_a_blank_out_dir_means_the_default_as_in_yaml(runs: dict[str, Path]) -> None:
    from facegan.families import load_run_config

    assert load_run_config(str(runs["cfg"]), ["train.out_dir="]).train.out_dir == "runs/default"
    with pytest.raises(Exception, match="train.out_dir: expected a folder"):
        from_dict(RunConfig, {"data": {"shards": "x"}, "train": {"out_dir": " "}})


def test_overwrite_replaces_an_earlier_run(runs: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["gan"], run)
    (run / "notes.txt").write_text("mine")
    old_losses = (run / "losses.jsonl").read_text()
    argv = ["train", str(runs["cfg"]), "--no-ray", "--no-progress", "--set", f"train.out_dir={run}"]
    assert main(argv) == 2 and (run / "losses.jsonl").read_text() == old_losses
    capsys.readouterr()
    assert main(argv + ["--overwrite"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "losses.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 2, steps   # one run's steps (16 images / 8), not two appended
    assert (run / "notes.txt").read_text() == "mine"  # only what a run writes is replaced
    assert not (run / ".facegan.lock").exists()


def test_two_trains_into_one_folder_one_is_refused_and_ctrl_c_is_one_line_and_130(runs: dict[str, Path],
                                                                                   tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "facegan.cli", "train", str(runs["cfg"]), "--no-ray", "--no-progress",
           "--set", f"train.out_dir={run}", "--set", "train.total_kimg=50", "--set", "train.checkpoint_kimg=0.016"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("ckpt-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    second = subprocess.run(cmd[:5] + ["--no-ray", "--set", f"train.out_dir={run}", "--set", "train.resume=latest",
                                       "--set", "train.total_kimg=50"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert second.returncode == 2, second.stderr
    assert re.fullmatch(rf"error: train.out_dir: {run} is being written by another facegan process \(pid {first.pid} "
                        r"on .*\); wait for it to finish or choose another folder\n", second.stderr), second.stderr
    first.send_signal(signal.SIGINT)   # Ctrl-C
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.fullmatch(rf"interrupted; the last checkpoint is {run}/checkpoints/ckpt-\d+: rerun with --set "
                        r"train.resume=latest to continue", lines[0]), lines[0]
    steps = [json.loads(x)["step"] for x in (run / "losses.jsonl").read_text().splitlines()]
    assert steps == sorted(steps), steps   # one writer's steps, not two interleaved
    assert not (run / ".facegan.lock").exists() and not list((run / "checkpoints").glob(".*tmp*"))


def test_two_builds_into_one_out_one_is_refused_and_a_dead_writers_lock_is_taken_over(tmp_path: Path,
                                                                                     caplog: Any) -> None:
    out = tmp_path / "set"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom facegan.data.lock import hold_lock\n"
                               f"with hold_lock({str(out)!r}, what='--out'):\n    print('held', flush=True)\n"
                               "    time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "held"
        argv = ["shards", "build", "--source", "synthetic", "--count", "32", "--resolution", "16", "--shard-size", "16",
                "--workers", "1", "--no-progress", "--out", str(out)]
        r = subprocess.run([sys.executable, "-m", "facegan.cli", *argv], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
        assert r.returncode == 2, r.stderr
        assert re.fullmatch(rf"error: --out {out}: {out} is being written by another facegan process "
                            rf"\(pid {holder.pid} on .*\); wait for it to finish or choose another folder\n", r.stderr)
        assert sorted(p.name for p in out.iterdir()) == [".facegan.lock"]   # no .partial/, no shards
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level("WARNING", logger="facegan.data.lock"):
        assert main(argv) == 0
    assert f"took over a stale lock left by pid {holder.pid}" in caplog.text
    assert (out / "manifest.json").is_file() and not (out / ".facegan.lock").exists()


def _flip_bits(path: Path, count: int, *, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    # Bits in the tensor payload (the zip's stored data), not its directory: torch would still load it.
    for pos in rng.choice(np.arange(len(data) // 4, len(data) * 3 // 4), size=count, replace=False):
        data[pos] ^= 1 << int(rng.integers(8))
    path.write_bytes(bytes(data))


def test_a_checkpoint_with_flipped_bits_is_refused_where_it_is_loaded(runs: dict[str, Path], tmp_path: Path,
                                                                       capsys: Any) -> None:
    import torch

    from facegan.checkpoint import load_checkpoint, read_meta

    ckpt = tmp_path / "ckpt"
    shutil.copytree(next((runs["gan"] / "checkpoints").iterdir()), ckpt)
    meta = read_meta(ckpt)
    assert meta["format_version"] == 3 and len(meta["checksums"]["state.pt"]["sha256"]) == 64
    _flip_bits(ckpt / "state.pt", 30)
    torch.load(ckpt / "state.pt", weights_only=True)   # the damage is invisible to torch itself
    for argv in (["sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "s.png")],
                 ["train", str(runs["cfg"]), "--no-ray", "--set", f"train.resume={ckpt}", "--set",
                  "train.total_kimg=0.032", "--set", f"train.out_dir={tmp_path / 'resumed'}"]):
        assert main(argv) == 2
        line, = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        assert re.search(rf"{ckpt / 'state.pt'}: damaged \(sha256 .*, expected .*\); use an earlier checkpoint", line)
    assert not (tmp_path / "s.png").exists()
    (ckpt / "state.pt").write_bytes((ckpt / "state.pt").read_bytes()[:-10])
    with pytest.raises(Exception, match=r"damaged \(\d+ bytes, expected \d+\)"):
        load_checkpoint(ckpt)


def test_a_checkpoint_from_before_checksums_loads_with_a_note(caplog: Any) -> None:
    from facegan.checkpoint import load_checkpoint

    with caplog.at_level("WARNING", logger="facegan.checkpoint"):
        state, meta = load_checkpoint(REPO / "tests" / "fixtures" / "legacy_v1" / "dcgan")
    assert meta["format_version"] == 1 and "G" in state
    assert "before checkpoints carried checksums: loaded unverified" in caplog.text


def _png16(value_HW: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(value_HW.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _exif_jpeg(arr_HWC: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(arr_HWC)
    exif = img.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_16_bit_and_exif_rotated_photos_go_into_shards_as_they_look(tmp_path: Path) -> None:
    from facegan.data.recipe import ShardRecipe
    from facegan.data.stream import ShardSet
    from facegan.data.tario import iter_samples
    from facegan.data.imageio import decode_hwc
    from facegan.data.writer import build_shards, verify_shards

    photos = tmp_path / "photos"
    photos.mkdir()
    ramp = np.tile(np.linspace(0, 65535, 64), (64, 1))                 # 16-bit grey, dark left to white right
    (photos / "grey16.png").write_bytes(_png16(ramp))
    assert Image.open(photos / "grey16.png").mode.startswith("I")
    # Stored 96 wide x 64 high: left half red, right half blue; orientation 6 = turn 90 degrees
    # clockwise to view, so the upright photo is 64 wide x 96 high, red on top, blue below.
    stored = np.zeros((64, 96, 3), np.uint8)
    stored[:, :48] = (255, 0, 0)
    stored[:, 48:] = (0, 0, 255)
    (photos / "phone.jpg").write_bytes(_exif_jpeg(stored, 6))
    recipe = from_dict(ShardRecipe, {"source": "folder", "resolution": [48, 32], "crop": "none", "format": "png",
                                     "shard_size": 8, "workers": 1, "val_fraction": 0, "test_fraction": 0})
    build_shards(recipe, root=photos, out=tmp_path / "set", progress=False)
    assert verify_shards(tmp_path / "set") == []
    shards = ShardSet.open(str(tmp_path / "set"))
    images = {}
    for url in shards.urls("train"):
        with open(url, "rb") as f:
            for sample in iter_samples(f):
                images[sample["__key__"]] = decode_hwc(sample["png"], ext="png", height=48, width=32)
    grey, = [v for k, v in images.items() if "grey16" in k]
    phone, = [v for k, v in images.items() if "phone" in k]
    assert grey[:, :, 0].std() > 40 and grey[:, 0, 0].mean() < 20 and grey[:, -1, 0].mean() > 235  # a ramp, not white
    assert np.allclose(grey[:, :, 0], grey[:, :, 1]) and (np.diff(grey[24, :, 0].astype(int)) >= -1).all()
    top, bottom = phone[:20].reshape(-1, 3).mean(0), phone[-20:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50, (top, bottom)


def test_eval_warns_when_the_real_baseline_is_the_eval_split(runs: dict[str, Path], tmp_path: Path,
                                                            capsys: Any) -> None:
    assert main(["eval", "--baseline", "real", "--real-split", "val", "--eval-split", "val", "--shards",
                 str(runs["shards"]), "--classifier", str(runs["clf"]), "--num-samples", "16", "--num-real", "16",
                 "--metrics", "fid", "--no-progress", "--json", str(tmp_path / "e.json")]) == 0
    err = capsys.readouterr().err
    assert "WARNING: --real-split val is also --eval-split" in err


def test_stream_workers_beyond_the_process_limit_are_refused_before_forking(runs: dict[str, Path]) -> None:
    # A process cap (ulimit -u) a few processes above what this user runs now, in a subshell.
    script = (f"ulimit -u $(( $(ps -U $(id -u) -o pid= | wc -l) + 20 )) && "
              f"{sys.executable} -m facegan.cli shards stream {runs['shards']} --workers 60 --batches 1")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2, r.stderr
    assert re.fullmatch(r"error: --workers: 60 worker processes, but the process limit \(ulimit -u\) leaves room "
                        r"for \d+ more\n", r.stderr), r.stderr


def test_augment_lists_the_photos_it_skipped_in_the_new_sets_manifest(runs: dict[str, Path], tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)).save(photos / "good.png")
    (photos / "bad.jpg").write_bytes(b"not a jpeg")
    assert main(["augment", str(photos), "--checkpoint", str(runs["gan"]), "--variants", "1", "--jitter", "0.1",
                 "--steps", "2", "--restarts", "1", "--no-progress", "--max-identity-distance", "0",
                 "--out", str(tmp_path / "aug")]) == 0
    manifest = json.loads((tmp_path / "aug" / "manifest.json").read_text())
    assert manifest["counts"]["total"] == 1 and manifest["num_skipped"] == 1
    assert manifest["skipped"][0]["input"] == str(photos / "bad.jpg")
    assert "cannot identify image file" in manifest["skipped"][0]["reason"]
