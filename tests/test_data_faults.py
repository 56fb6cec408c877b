"""Regression tests for the data defects of issue 15: stale resumes and stale shards, tiny and
extreme images, honest counts for damaged sets, failed builds that clean up, memory bounds,
disk full, Ctrl-C, and one-line errors for ordinary mistakes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from facegan.cli import build_parser
from facegan.cli import main as cli
from facegan.config import from_dict
from facegan.data.recipe import ShardRecipe
from facegan.data.records import DataError
from facegan.data.store import LocalStore
from facegan.data.stream import ShardSet, eval_loader, train_loader
from facegan.data.writer import build_shards, inspect_shards, verify_shards

from conftest import REPO, make_celeba, skip_unless_required, write_jpeg


def recipe(**kw: Any) -> ShardRecipe:
    return from_dict(ShardRecipe, dict({"workers": 2}, **kw))


def synth(out: Path, **kw: Any) -> dict[str, Any]:
    r = recipe(**dict({"source": "synthetic", "count": 40, "resolution": 16, "shard_size": 10}, **kw))
    return build_shards(r, root=None, out=out, progress=False).manifest


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-2000:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name] if root.exists() else []


def tar_names(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.tar"))


# =========================================================================== 1. resume and inputs

def test_resume_rebuilds_shards_whose_source_files_changed(tmp_path: Path) -> None:
    """Issue 15.1: a fixed junk image and an image with new pixels under its old name are rebuilt;
    untouched shards are kept; the result equals a fresh build."""
    src = tmp_path / "faces"
    for i in range(12):
        write_jpeg(src / f"f{i:02d}.jpg", seed=i)
    (src / "f03.jpg").write_bytes(b"junk, not a jpeg")
    r = recipe(source="folder", resolution=16, shard_size=4, val_fraction=0.0, test_fraction=0.0, shuffle=False)
    out = tmp_path / "out"
    first = build_shards(r, root=src, out=out, progress=False).manifest
    assert [Path(s["input"]).name for s in first["skipped"]] == ["f03.jpg"] and first["counts"]["total"] == 11

    write_jpeg(src / "f03.jpg", seed=100)     # the junk image fixed
    write_jpeg(src / "f09.jpg", seed=200)     # new pixels under an old name
    second = build_shards(r, root=src, out=out, progress=False)
    assert second.built == ["train-000000.tar", "train-000002.tar"]    # f00-f03 and f08-f11
    assert second.kept == ["train-000001.tar"]
    assert second.manifest["num_skipped"] == 0 and second.manifest["counts"]["total"] == 12
    fresh = build_shards(r, root=src, out=tmp_path / "fresh", progress=False).manifest
    assert [s["sha256"] for s in second.manifest["shards"]] == [s["sha256"] for s in fresh["shards"]]
    assert verify_shards(out) == []

    # A touched file (same bytes, new mtime) is rebuilt too: the record cannot prove it unchanged.
    os.utime(src / "f05.jpg", ns=(time.time_ns(), time.time_ns() + 10**9))
    third = build_shards(r, root=src, out=out, progress=False)
    assert third.built == ["train-000001.tar"]
    assert [s["sha256"] for s in third.manifest["shards"]] == [s["sha256"] for s in fresh["shards"]]


def test_resume_rebuilds_shards_whose_labels_or_recipe_changed(tmp_path: Path) -> None:
    expected = make_celeba(tmp_path / "c", n=12, seed=4)
    r = recipe(source="celeba", resolution=16, shard_size=100)     # one shard per split
    out = tmp_path / "out"
    first = build_shards(r, root=tmp_path / "c", out=out, progress=False)
    attr = tmp_path / "c" / "list_attr_celeba.txt"
    lines = attr.read_bytes().split(b"\r\n")
    assert lines[2].startswith(b"000001.jpg")
    lines[2] = lines[2][:-2] + (b" 1" if lines[2].endswith(b"-1") else b"-1")   # its last attribute flipped
    attr.write_bytes(b"\r\n".join(lines))
    again = build_shards(r, root=tmp_path / "c", out=out, progress=False)
    split = ("train", "val", "test")[expected["000001"]["partition"]]
    assert again.built == [f"{split}-000000.tar"]
    assert sorted(again.kept + again.built) == sorted(first.built)
    assert verify_shards(out) == []
    requality = build_shards(recipe(source="celeba", resolution=16, shard_size=100, quality=80),
                             root=tmp_path / "c", out=out, progress=False)
    assert requality.kept == []


# =========================================================================== 2. stale shards

def test_rebuild_into_a_used_out_leaves_only_listed_shards(tmp_path: Path) -> None:
    """Issue 15.2: an earlier, bigger set's extra tars are removed; verify flags unlisted tars."""
    out = tmp_path / "o"
    big = synth(out, count=80)
    small = synth(out, count=20, seed=1)
    assert len(small["shards"]) < len(big["shards"])
    assert tar_names(out) == sorted(s["name"] for s in small["shards"])
    assert verify_shards(out) == []
    shutil.copy(out / small["shards"][0]["name"], out / "train-000042.tar")
    problems = verify_shards(out)
    assert len(problems) == 1 and problems[0].startswith("train-000042.tar: not listed in manifest.json")


def test_build_refuses_a_foreign_non_empty_out_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "old.tar").write_bytes(b"not ours")
    with pytest.raises(DataError, match="not empty.*--overwrite"):
        synth(out)
    assert sorted(os.listdir(out)) == ["notes.txt", "old.tar"]          # nothing written
    m = build_shards(recipe(source="synthetic", count=40, resolution=16, shard_size=10), root=None, out=out,
                     progress=False, overwrite=True).manifest
    assert (out / "notes.txt").read_text() == "keep me" and not (out / "old.tar").exists()
    assert tar_names(out) == sorted(s["name"] for s in m["shards"]) and verify_shards(out) == []


# =========================================================================== 5. tiny and extreme images

def test_tiny_and_extreme_sources_are_skipped_with_their_reason(tmp_path: Path) -> None:
    src = tmp_path / "faces"
    for i in range(6):
        write_jpeg(src / f"ok{i}.jpg", seed=i)
    odd = {"dot.png": (1, 1), "tall.png": (10, 2000), "wide.png": (3000, 8), "strip.png": (200, 1000)}
    for name, (w, h) in odd.items():
        Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(src / name)
    m = build_shards(recipe(source="folder", resolution=32), root=src, out=tmp_path / "o", progress=False).manifest
    reasons = {Path(s["input"]).name: s["reason"] for s in m["skipped"]}
    assert set(reasons) == set(odd) and m["counts"]["total"] == 6
    for name in ("dot.png", "tall.png", "wide.png"):
        assert "min_side 32" in reasons[name], reasons[name]
    assert "max_aspect 4" in reasons["strip.png"] and "200x1000" in reasons["strip.png"]
    # The bounds are recipe fields: lowering them lets the same inputs in.
    loose = build_shards(recipe(source="folder", resolution=32, min_side=1, max_aspect=400), root=src,
                         out=tmp_path / "o2", progress=False).manifest
    assert loose["counts"]["total"] == 10 and loose["num_skipped"] == 0


# =========================================================================== 6. damaged sets: honest counts

def damage(out: Path, m: dict[str, Any]) -> tuple[str, str]:
    """Delete one train shard and cut another in half; returns their names."""
    train = [s["name"] for s in m["shards"] if s["split"] == "train"]
    (out / train[1]).unlink()
    raw = (out / train[2]).read_bytes()
    (out / train[2]).write_bytes(raw[: len(raw) // 2])
    return train[1], train[2]


def test_stream_cli_counts_missing_and_truncated_shards(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "o"
    m = synth(out, count=80, val_fraction=0.0, test_fraction=0.0)
    damage(out, m)
    assert cli(["shards", "stream", str(out), "--batches", "9", "--batch-size", "8", "--workers", "0"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    skipped = int(line.split(" samples skipped")[0].rsplit(" ", 1)[-1])
    failed = int(line.split(" shard reads failed")[0].rsplit(" ", 1)[-1])
    assert skipped >= 15 and failed >= 2, line          # 10 missing + 5 cut, per pass over the set


def test_inspect_damaged_set_says_so(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "o"
    m = synth(out, count=40, val_fraction=0.0, test_fraction=0.0)
    # A flipped byte inside a label (not the image): caught by the labels' own crc32.
    first = out / m["shards"][0]["name"]
    data = bytearray(first.read_bytes())
    at = data.index(b'"attrs": [') + len(b'"attrs": [')
    data[at] ^= 0x01                                    # 0 <-> 1: still valid JSON, a wrong label
    first.write_bytes(bytes(data))
    report = inspect_shards(out)
    assert len(report["problems"]) == 1 and "labels do not match their crc32" in report["problems"][0]
    assert report["samples_read"] == 39
    assert any("labels do not match their crc32" in p for p in verify_shards(out))
    keys = [k for b in eval_loader(ShardSet.open(str(out)), split="train", batch_size=8) for k in b["key"]]
    assert len(keys) == 39                              # the stream skips it too

    missing, cut = damage(out, m)
    capsys.readouterr()                                  # only what inspect prints below
    assert cli(["shards", "inspect", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "damaged shard set" in err
    report = inspect_shards(out)
    text = "\n".join(report["problems"])
    assert f"{missing}: missing" in text and f"{cut}: truncated" in text
    assert report["samples_read"] < 39


# =========================================================================== 7. failed builds clean up

def test_a_build_that_produces_nothing_leaves_nothing(tmp_path: Path) -> None:
    make_celeba(tmp_path / "c", n=6)
    for p in (tmp_path / "c" / "img_align_celeba").glob("*.jpg"):
        p.write_bytes(p.read_bytes()[:200])              # headers intact, pixels gone
    out = tmp_path / "new"
    with pytest.raises(DataError, match="all 6 inputs were skipped"):
        build_shards(recipe(source="celeba", resolution=16), root=tmp_path / "c", out=out, progress=False)
    assert not out.exists()


def test_disk_full_mid_build_keeps_the_previous_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC injected into the third shard written: a clear error, no temp files, and the earlier
    set unchanged and loadable; the rerun resumes from the two shards that were finished."""
    out = tmp_path / "o"
    synth(out, count=40, val_fraction=0.0, test_fraction=0.0)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    original = LocalStore.open_write
    writes = {"tar": 0}

    class Full:
        def __init__(self, f: Any) -> None:
            self.f, self.n = f, 0

        def write(self, data: bytes) -> int:
            if self.n + len(data) > 3000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.n += len(data)
            return self.f.write(data)

    @contextlib.contextmanager
    def filling(self: LocalStore, name: str) -> Any:
        with original(self, name) as f:
            if name.endswith(".tar"):
                writes["tar"] += 1
                yield Full(f) if writes["tar"] >= 3 else f
            else:
                yield f

    monkeypatch.setattr(LocalStore, "open_write", filling)
    bigger = recipe(source="synthetic", count=60, resolution=16, shard_size=10, seed=1, val_fraction=0.0,
                    test_fraction=0.0)
    with pytest.raises(DataError, match="disk full while writing .partial/train-000002.tar"):
        build_shards(bigger, root=None, out=out, progress=False)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert temp_files(out) == []
    assert verify_shards(out) == []
    keys = [k for b in eval_loader(ShardSet.open(str(out)), split="train", batch_size=8) for k in b["key"]]
    assert len(keys) == 40
    resumed = build_shards(bigger, root=None, out=out, progress=False)
    assert resumed.kept == ["train-000000.tar", "train-000001.tar"] and verify_shards(out) == []


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -rm` and a tmpfs mount (user namespaces)")
def test_disk_full_on_a_real_small_filesystem(tmp_path: Path) -> None:
    """A 400 KiB tmpfs: the first set fits, a bigger rebuild does not (a worker writing whole
    shards hits the full disk); the first stays verified, and nothing is left half-written."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"""
import subprocess, sys
from facegan.cli import main
from facegan.data.stream import ShardSet, eval_loader
from facegan.data.writer import verify_shards
build = ['shards', 'build', '--source', 'synthetic', '--resolution', '32', '--shard-size', '10', '--workers', '2',
         '--out', '{disk}/set']   # the second build: 40 shards, so each worker writes whole shards
print('first', main(build + ['--count', '30']))
print('second', main(build + ['--count', '400', '--seed', '1']), file=sys.stderr)
print('problems', verify_shards('{disk}/set'))
s = ShardSet.open('{disk}/set')
print('read', sum(len(b['key']) for sp in ('train', 'val', 'test') if s.count(sp)
                  for b in eval_loader(s, split=sp, batch_size=8)))
print('temp files', subprocess.run('find {disk} -name "*.tmp-*"', shell=True, capture_output=True).stdout)
"""
    (tmp_path / "script.py").write_text(script)
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", f"mount -t tmpfs -o size=400k tmpfs {disk} && "
                           f"{sys.executable} {tmp_path / 'script.py'}"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0"))
    out, err = proc.stdout, proc.stderr.strip().splitlines()
    assert proc.returncode == 0 and "first 0" in out, (out, proc.stderr)
    assert err[-1] == "second 2" and len(err) == 2, proc.stderr           # one error line, then the status
    assert err[0].startswith("error: --out ") and "disk full while writing" in err[0], err
    assert "problems []" in out and "read 30" in out and "temp files b''" in out, out


# =========================================================================== 8/9. bounds on memory

def test_sizes_that_multiply_memory_are_refused_before_allocating(synthetic_shards: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import facegan.data.limits as limits

    monkeypatch.setattr(limits, "available_memory", lambda: 8 << 20)     # an 8 MiB machine
    with pytest.raises(DataError, match=r"count 100,000: needs about .* of memory"):
        synth(Path("/nonexistent/never-written"), count=100_000)
    with pytest.raises(DataError, match=r"resolution 512x512: needs about"):
        synth(Path("/nonexistent/never-written"), resolution=512)
    with pytest.raises(DataError, match=r"batch_size 64: needs about"):
        train_loader(ShardSet.open(str(synthetic_shards)), batch_size=64, num_workers=0)
    assert not Path("/nonexistent").exists()


def test_memory_bounds_hold_under_ulimit(tmp_path: Path) -> None:
    """The real thing: under a 6 GB address-space limit a huge synthetic count or resolution is
    refused in one line (no MemoryError, no traceback) before anything is allocated or written."""
    out = tmp_path / "o"
    script = (f"import sys; from facegan.cli import main; "
              f"sys.exit(10 * main(['shards', 'build', '--source', 'synthetic', '--count', '50000000', '--out', '{out}'])"
              f" + main(['shards', 'build', '--source', 'synthetic', '--resolution', '4096', '--workers', '2', "
              f"'--out', '{out}']))")
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(["bash", "-c", f"ulimit -v 6000000; {sys.executable} -c \"{script}\""], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 22, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: count 50,000,000: needs about") and "of memory" in lines[0]
    assert lines[1].startswith("error: resolution 4096x4096: needs about") and "of memory" in lines[1]
    assert not out.exists()


# =========================================================================== ordinary mistakes

def _stream_set(tmp_path: Path) -> Path:
    out = tmp_path / "set"
    synth(out, count=40, val_fraction=0.0, test_fraction=0.0)
    return out


def _damaged_set(tmp_path: Path, how: str) -> Path:
    out = _stream_set(tmp_path)
    shard = out / "train-000001.tar"
    if how == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:1500])
    return out


def _celeba_without_annotations(tmp_path: Path) -> Path:
    write_jpeg(tmp_path / "c" / "img_align_celeba" / "000001.jpg", seed=1)
    return tmp_path / "c"


MISTAKES: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]] = {
    "out is a file": (lambda t: ["shards", "build", "--source", "synthetic", "--count", "20",
                                 "--out", str((t / "f.txt").write_text("x") and t / "f.txt")],
                      ("f.txt", "is a file")),
    "out is a failing pipe": (lambda t: ["shards", "build", "--source", "synthetic", "--count", "20",
                                         "--resolution", "16", "--out", "pipe:false {name}"],
                              ("pipe:false {name}", "exited with status 1")),
    "crop larger than every image": (lambda t: (make_celeba(t / "c", n=6) and None) or
                                     ["shards", "build", "--source", "celeba", "--root", str(t / "c"),
                                      "--crop", "5000", "--out", str(t / "o")],
                                     ("nothing would be built", "crop 5000x5000 is larger than the image")),
    "resolution beyond 4096": (lambda t: ["shards", "build", "--source", "synthetic", "--resolution", "100000",
                                          "--out", str(t / "o")],
                               ("--resolution: expected at most 4096 per side",)),
    "flag value names the flag": (lambda t: ["shards", "build", str(REPO / "shards" / "synthetic_demo.yaml"),
                                             "--quality", "101", "--out", str(t / "o")],
                                  ("--quality: expected 1..100",)),
    "set value names the key": (lambda t: ["shards", "build", str(REPO / "shards" / "synthetic_demo.yaml"),
                                           "--set", "shard_size=0", "--out", str(t / "o")],
                                ("--set shard_size: expected",)),
    "missing annotations names the flag": (lambda t: ["shards", "build", "--source", "celeba",
                                                      "--root", str(_celeba_without_annotations(t)),
                                                      "--out", str(t / "o")],
                                           ("list_attr_celeba.txt", "--annotations DIR")),
    "inspect a missing shard": (lambda t: ["shards", "inspect", str(_damaged_set(t, "missing"))],
                                ("train-000001.tar: missing",)),
    "inspect a truncated shard": (lambda t: ["shards", "inspect", str(_damaged_set(t, "cut"))],
                                  ("train-000001.tar: truncated",)),
    "stream batch size 0": (lambda t: ["shards", "stream", str(_stream_set(t)), "--batch-size", "0"],
                            ("--batch-size: expected an integer >= 1, got 0",)),
    "stream rank beyond world size": (lambda t: ["shards", "stream", str(_stream_set(t)), "--rank", "2",
                                                 "--world-size", "2"],
                                      ("--rank: expected 0 <= rank < --world-size (2), got 2",)),
    "stream batch larger than the split": (lambda t: ["shards", "stream", str(_stream_set(t)),
                                                      "--batch-size", "100000"],
                                           ("--batch-size: 100000 is larger than this rank's share",)),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_ordinary_mistakes_exit_2_with_one_line(case: str, tmp_path: Path, capsys: Any) -> None:
    """In this process (an uncaught exception would fail the test with its traceback); the
    subprocess tests below check the real exit status and stderr for the rest."""
    make_args, needles = MISTAKES[case]
    argv = make_args(tmp_path)
    capsys.readouterr()
    t0 = time.time()
    rc = cli(argv)
    err = assert_one_line_error(subprocess.CompletedProcess(argv, rc, *capsys.readouterr()), *needles)
    assert time.time() - t0 < 30                          # refused at once, not after a long wait
    if case == "flag value names the flag":
        assert "synthetic_demo.yaml" not in err          # the file did not say 101
    assert not (tmp_path / "o").exists()                  # refused before writing


def test_out_on_a_read_only_filesystem(tmp_path: Path) -> None:
    if not _can_mount_tmpfs():
        skip_unless_required("FACEGAN_REQUIRE_MOUNTS", "needs `unshare -rm` to mount a read-only filesystem")
    ro = tmp_path / "ro"
    ro.mkdir()
    cmd = " ".join([f"PYTHONPATH={REPO}", sys.executable, "-m", "facegan.cli", "shards", "build",
                    "--source", "synthetic", "--count", "20", "--out", f"{ro}/set"])
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", f"mount -t tmpfs -o ro tmpfs {ro} && {cmd}"],
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, f"--out {ro}/set", "Read-only file system")


def test_ctrl_c_during_a_build_exits_130_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "o"
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    argv = [sys.executable, "-m", "facegan.cli", "shards", "build", "--source", "synthetic", "--count", "1000",
            "--resolution", "24", "--shard-size", "10", "--workers", "2", "--out", str(out), "--no-progress"]
    # A shell starts background jobs with SIGINT ignored, and this test may run under one: give the
    # build the default disposition a terminal's foreground job has.
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / ".partial").glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)                      # what Ctrl-C sends: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted; rerun to resume", err
    assert temp_files(out) == [] and not (out / "manifest.json").exists()
    finished = {p.name.removesuffix(".json") for p in (out / ".partial").glob("*.json")}
    assert len(finished) >= 2
    r = recipe(source="synthetic", count=1000, resolution=24, shard_size=10)
    result = build_shards(r, root=None, out=out, progress=False)
    assert finished <= set(result.kept) and verify_shards(out) == []


def test_every_shards_option_has_help() -> None:
    parser = build_parser()
    shards = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "shards")[1]
    subs = shards._subparsers._group_actions[0].choices
    assert set(subs) == {"build", "import", "verify", "inspect", "stream"}
    for name, sub in subs.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"shards {name}: {action.option_strings or action.dest} has no help"
