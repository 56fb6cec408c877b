"""Shard builder, verify and inspect: round trips, damaged inputs, resume, determinism, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from facegan.cli import main as cli
from facegan.config import ConfigError, from_dict
from facegan.data.recipe import ShardRecipe
from facegan.data.records import CELEBA_ATTRS, DataError
from facegan.data.stream import ShardSet, eval_loader
from facegan.data.writer import build_shards, inspect_shards, load_manifest, verify_shards

from conftest import make_celeba, make_utkface, write_jpeg


def recipe(**kw) -> ShardRecipe:
    return from_dict(ShardRecipe, dict({"workers": 2}, **kw))


def read_all(out: Path, split: str) -> dict[str, dict]:
    """Every sample of a split via the evaluation stream: key -> labels and image."""
    found: dict[str, dict] = {}
    for batch in eval_loader(ShardSet.open(str(out)), split=split, batch_size=5):
        for i, key in enumerate(batch["key"]):
            assert key not in found
            found[key] = {k: batch[k][i] for k in batch if k not in ("key", "num_skipped", "num_bad_shards")}
    return found


def test_celeba_round_trip_attributes_identity_partition(tmp_path: Path) -> None:
    expected = make_celeba(tmp_path / "celeba", n=30, crlf=True)
    out = tmp_path / "shards"
    result = build_shards(recipe(source="celeba", resolution=16, shard_size=7), root=tmp_path / "celeba",
                          out=out, progress=False)
    m = result.manifest
    assert m["attr_names"] == list(CELEBA_ATTRS)
    assert m["counts"]["total"] == 30 and m["num_skipped"] == 0
    split_names = {0: "train", 1: "val", 2: "test"}
    for split in ("train", "val", "test"):
        want = {k: v for k, v in expected.items() if split_names[v["partition"]] == split}
        assert m["counts"][split] == len(want)
        if not want:
            continue
        got = read_all(out, split)
        assert set(got) == set(want)
        for key, labels in want.items():
            assert got[key]["attrs"].tolist() == labels["attrs"]
            assert int(got[key]["identity"]) == labels["identity"]
            assert int(got[key]["partition"]) == labels["partition"]
            assert tuple(got[key]["image"].shape) == (3, 16, 16)
    assert verify_shards(out) == []


def test_annotations_apart_from_images_count_rows_without_image(tmp_path: Path) -> None:
    make_celeba(tmp_path / "imgs", n=10, extra_rows=25, annotations=tmp_path / "ann", crlf=False)
    m = build_shards(recipe(source="celeba", resolution=16, annotations=str(tmp_path / "ann")),
                     root=tmp_path / "imgs", out=tmp_path / "out", progress=False).manifest
    assert m["counts"]["total"] == 10
    assert m["rows_without_image"] == 25


def test_corrupt_and_zero_byte_jpegs_are_skipped_and_listed(tmp_path: Path) -> None:
    make_celeba(tmp_path / "c", n=12)
    imgs = tmp_path / "c" / "img_align_celeba"
    (imgs / "000003.jpg").write_bytes(b"")                                   # zero bytes
    data = (imgs / "000005.jpg").read_bytes()
    (imgs / "000005.jpg").write_bytes(data[: len(data) // 2])                # truncated JPEG
    (imgs / "000007.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # garbage
    m = build_shards(recipe(source="celeba", resolution=16), root=tmp_path / "c", out=tmp_path / "o",
                     progress=False).manifest
    skipped = {Path(s["input"]).name: s["reason"] for s in m["skipped"]}
    assert set(skipped) == {"000003.jpg", "000005.jpg", "000007.jpg"}
    assert all(reason for reason in skipped.values())
    assert m["counts"]["total"] == 9 and m["num_skipped"] == 3
    assert verify_shards(tmp_path / "o") == []


def test_utkface_malformed_names_are_counted_not_fatal(tmp_path: Path) -> None:
    make_utkface(tmp_path / "utk", n=10)
    m = build_shards(recipe(source="utkface", resolution=16), root=tmp_path / "utk", out=tmp_path / "o",
                     progress=False).manifest
    assert m["counts"]["total"] == 12            # 10 good + 2 with the race field missing
    assert m["num_partial_labels"] == 2
    assert [Path(s["input"]).name for s in m["skipped"]] == ["notaface.jpg.chip.jpg"]
    races = [int(r) for split in ("train", "val", "test") if m["counts"][split]
             for r in (b["race"] for b in read_all(tmp_path / "o", split).values())]
    assert races.count(-1) == 2                  # unknown race stored as missing, not invented


def test_folder_source_and_png_raw_formats(tmp_path: Path) -> None:
    for i in range(9):
        write_jpeg(tmp_path / "faces" / f"sub{i % 2}" / f"img{i}.jpg", seed=i)
    for fmt in ("png", "raw"):
        out = tmp_path / f"o_{fmt}"
        m = build_shards(recipe(source="folder", resolution=[20, 16], crop="none", format=fmt),
                         root=tmp_path / "faces", out=out, progress=False).manifest
        assert m["counts"]["total"] == 9 and m["resolution"] == [20, 16]
        assert verify_shards(out) == []
        images = [v["image"] for s in ("train", "val", "test") if m["counts"][s] for v in read_all(out, s).values()]
        assert all(tuple(img.shape) == (3, 20, 16) for img in images)
        assert all(-1.0 <= float(img.min()) and float(img.max()) <= 1.0 for img in images)


def test_build_is_deterministic(tmp_path: Path) -> None:
    shas = []
    for run in range(2):
        m = build_shards(recipe(source="synthetic", count=40, resolution=16, shard_size=10, workers=1 + run),
                         root=None, out=tmp_path / f"o{run}", progress=False).manifest
        shas.append([s["sha256"] for s in m["shards"]])
    assert shas[0] == shas[1]
    other = build_shards(recipe(source="synthetic", count=40, resolution=16, shard_size=10, seed=1),
                         root=None, out=tmp_path / "o_seed1", progress=False).manifest
    assert [s["sha256"] for s in other["shards"]] != shas[0]


def test_whole_shard_workers_write_the_bytes_of_a_chunked_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys) -> None:
    """With many shards per worker, workers build whole shards (as Ray tasks do) instead of
    handing chunks to the parent: same manifest, shard for shard, as one process and as chunks;
    the progress bar still counts every image, and the run still resumes. While workers run, the
    scan is kept out of garbage collections (frozen); afterwards the collector is as it was."""
    import gc

    from facegan.data import writer

    calls = {"whole": 0}
    original = writer._run_whole_shards

    def spy(*args: object, token: int | None) -> None:
        calls["whole"] += 1
        assert token is not None   # forked workers are sent task indices, not pickled shard items
        assert gc.get_freeze_count() > 0 and gc.isenabled()
        original(*args, token=token)

    monkeypatch.setattr(writer, "_run_whole_shards", spy)
    r = dict(source="synthetic", count=130, resolution=16, shard_size=10)   # 14 shards: >= 4 per worker
    serial = build_shards(recipe(**r, workers=1), root=None, out=tmp_path / "serial", progress=False).manifest
    assert calls["whole"] == 0
    whole = build_shards(recipe(**r), root=None, out=tmp_path / "whole", progress=True)
    assert calls["whole"] == 1
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any("130/130" in line for line in bar), bar[-3:]
    monkeypatch.setattr(writer, "SHARDS_PER_WORKER", 10 ** 6)
    chunked = build_shards(recipe(**r), root=None, out=tmp_path / "chunked", progress=False).manifest
    assert calls["whole"] == 1
    assert len(serial["shards"]) == 14
    assert whole.manifest["shards"] == serial["shards"] == chunked["shards"]
    assert whole.stage_seconds["encode"] > 0 and whole.stage_seconds["write"] > 0
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    assert verify_shards(tmp_path / "whole") == []
    (tmp_path / "whole" / "train-000003.tar").unlink()
    again = build_shards(recipe(**r), root=None, out=tmp_path / "whole", progress=False)
    assert again.built == ["train-000003.tar"] and again.manifest["shards"] == serial["shards"]


def test_whole_shard_workers_under_forkserver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver connected to Ray builds with forkserver workers (facegan.data.writer._pool_context):
    the shared progress counter and whole-shard tasks must work there too."""
    import multiprocessing as mp

    from facegan.data import writer

    r = dict(source="synthetic", count=90, resolution=16, shard_size=10, val_fraction=0.0, test_fraction=0.0)
    serial = build_shards(recipe(**r, workers=1), root=None, out=tmp_path / "serial", progress=False).manifest
    monkeypatch.setattr(writer, "_pool_context", lambda: mp.get_context("forkserver"))
    forked = build_shards(recipe(**r), root=None, out=tmp_path / "fs", progress=True)
    assert len(serial["shards"]) == 9 and forked.manifest["shards"] == serial["shards"]


def test_whole_shard_workers_write_to_pipes_and_not_to_memory(tmp_path: Path) -> None:
    """Workers that build whole shards open the destination themselves: a pipe: command runs in
    each of them (same bytes as a local build); memory:// exists only in this process, so such a
    build joins chunks here instead (and is still complete and verified)."""
    import uuid

    r = recipe(source="synthetic", count=130, resolution=16, shard_size=10)
    local = build_shards(r, root=None, out=tmp_path / "local", progress=False).manifest
    dest = tmp_path / "piped"
    dest.mkdir()
    piped = build_shards(r, root=None, out=f"pipe:cat > {dest}/{{name}}", progress=False).manifest
    assert piped["shards"] == local["shards"] and verify_shards(dest) == []
    url = f"memory://facegan-test-{uuid.uuid4().hex}"
    in_memory = build_shards(r, root=None, out=url, progress=False).manifest
    assert in_memory["shards"] == local["shards"] and verify_shards(url) == []

    from facegan.launch.shards import build_shards_on_ray   # refused before any Ray start
    with pytest.raises(DataError, match="exists only in this process"):
        build_shards_on_ray(r, root=None, out=f"memory://facegan-test-{uuid.uuid4().hex}", progress=False)


def test_resume_after_killed_build_keeps_finished_shards(tmp_path: Path) -> None:
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "facegan.cli", "shards", "build", "--source", "synthetic", "--count", "600",
           "--resolution", "48", "--shard-size", "20", "--workers", "1", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    partial = out / ".partial"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(partial.glob("*.json")) if partial.is_dir() else []) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name.removesuffix(".json") for p in partial.glob("*.json")}
    assert 3 <= len(done_before) < 25, "the build should have been killed part way"
    assert not (out / "manifest.json").exists()

    r = recipe(source="synthetic", count=600, resolution=48, shard_size=20, workers=2)
    result = build_shards(r, root=None, out=out, progress=False)
    assert done_before <= set(result.kept)
    total = len(result.manifest["shards"])
    assert len(result.built) == total - len(result.kept)
    assert not partial.exists() and not list(out.glob(".*.tmp-*"))
    assert verify_shards(out) == []
    fresh = build_shards(r, root=None, out=tmp_path / "fresh", progress=False).manifest
    assert fresh["shards"] == result.manifest["shards"]

    again = build_shards(r, root=None, out=out, progress=False)   # complete: nothing to rebuild
    assert again.built == [] and len(again.kept) == total


def test_resume_rebuilds_a_damaged_finished_shard(tmp_path: Path) -> None:
    r = recipe(source="synthetic", count=30, resolution=16, shard_size=10)
    out = tmp_path / "o"
    build_shards(r, root=None, out=out, progress=False)
    shard = out / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:-700])
    result = build_shards(r, root=None, out=out, progress=False)
    assert result.built == ["train-000001.tar"]
    assert verify_shards(out) == []


def test_verify_catches_a_flipped_byte_and_names_the_shard(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    build_shards(recipe(source="synthetic", count=30, resolution=16, shard_size=10), root=None, out=out,
                 progress=False)
    assert cli(["shards", "verify", str(out)]) == 0
    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[512 + 300] ^= 0x01                # inside the first image (its data follows one header)
    shard.write_bytes(bytes(data))
    assert cli(["shards", "verify", str(out)]) == 1
    err = capsys.readouterr().err
    assert "train-000001.tar" in err and "sha256" in err and "crc32" in err
    assert "train-000000.tar" not in err


def test_pipe_output_matches_local_output(tmp_path: Path) -> None:
    r = recipe(source="synthetic", count=25, resolution=16, shard_size=10)
    local = build_shards(r, root=None, out=tmp_path / "local", progress=False).manifest
    dest = tmp_path / "piped"
    dest.mkdir()
    piped = build_shards(r, root=None, out=f"pipe:cat > {dest}/{{name}}", progress=False).manifest
    assert piped["shards"] == local["shards"]
    assert verify_shards(dest) == []
    assert json.loads((dest / "manifest.json").read_text())["shards"] == local["shards"]


def test_inspect_reports_frequencies_and_writes_preview(tmp_path: Path, synthetic_shards: Path) -> None:
    report = inspect_shards(synthetic_shards, preview=tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    freqs = report["attr_frequencies"]
    assert set(freqs) == set(CELEBA_ATTRS)
    assert 0.2 < freqs["Male"] < 0.7           # drawn attributes vary
    assert freqs["Bald"] in (0.0, 1.0)          # undrawn ones are constant


@pytest.mark.parametrize("bad, message", [
    ({"resolution": 0}, "resolution"),
    ({"resolution": -3}, "resolution"),
    ({"resolution": "big"}, "resolution"),
    ({"resolution": 12.5}, "resolution"),
    ({"colour": "blue"}, "unknown key colour"),
    ({"format": "gif"}, "format"),
    ({"shard_size": 0}, "shard_size"),
    ({"crop": "wide"}, "crop"),
])
def test_bad_recipe_values_name_the_field(bad: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(ShardRecipe, dict({"source": "synthetic"}, **bad))


def test_cli_errors_are_clear(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: celeba\nresolutoin: 64\n")
    assert cli(["shards", "build", str(bad), "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "unknown key resolutoin" in err
    assert cli(["shards", "build", "--source", "celeba", "--root", str(tmp_path / "nope"),
                "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli(["shards", "build", "--source", "celeba", "--resolution", "-4", "--root", str(tmp_path),
                "--out", str(tmp_path / "o")]) == 2
    assert "resolution" in capsys.readouterr().err


def test_missing_attribute_file_and_zero_usable_images(tmp_path: Path) -> None:
    (tmp_path / "c" / "img_align_celeba").mkdir(parents=True)
    write_jpeg(tmp_path / "c" / "img_align_celeba" / "000001.jpg", seed=0)
    with pytest.raises(DataError, match="list_attr_celeba.txt"):
        build_shards(recipe(source="celeba"), root=tmp_path / "c", out=tmp_path / "o", progress=False)
    import gc

    assert gc.isenabled() and gc.get_freeze_count() == 0   # the scan turned the collector off, and back on
    make_celeba(tmp_path / "d", n=3)
    for p in (tmp_path / "d" / "img_align_celeba").glob("*.jpg"):
        p.write_bytes(b"")
    with pytest.raises(DataError, match="no usable images"):
        build_shards(recipe(source="celeba"), root=tmp_path / "d", out=tmp_path / "o2", progress=False)


def test_wrong_column_count_names_the_line(tmp_path: Path) -> None:
    make_celeba(tmp_path / "c", n=5)
    path = tmp_path / "c" / "list_attr_celeba.txt"
    lines = path.read_bytes().split(b"\r\n")
    lines[4] = lines[4].rsplit(b" ", 1)[0]                  # drop one value from line 5
    path.write_bytes(b"\r\n".join(lines))
    with pytest.raises(DataError, match=r"list_attr_celeba.txt.*line 5"):
        build_shards(recipe(source="celeba"), root=tmp_path / "c", out=tmp_path / "o", progress=False)


def test_manifest_lists_counts_and_checksums(synthetic_shards: Path) -> None:
    m = load_manifest(synthetic_shards)
    assert m["counts"]["total"] == 160 == sum(s["count"] for s in m["shards"])
    for s in m["shards"]:
        assert (synthetic_shards / s["name"]).stat().st_size == s["bytes"]
        assert len(s["sha256"]) == 64
    assert m["recipe"]["source"] == "synthetic" and m["resolution"] == [32, 32]
    assert np.isclose(m["counts"]["train"] / 160, 0.8, atol=0.12)
