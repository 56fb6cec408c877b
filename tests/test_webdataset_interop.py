"""facegan's shards are standard WebDataset, both ways: the ecosystem's readers (webdataset, Ray
Data) read what `shards build` writes, and `shards import` adopts what webdataset's ShardWriter,
img2dataset or tar itself wrote, so `verify`, `stream`, `inspect` and `train` take it.

    .venv/bin/python -m pytest tests/test_webdataset_interop.py -q
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch
import webdataset as wds

from facegan.data.importer import ImportOptions, import_shards
from facegan.data.stream import ShardSet, eval_loader, train_loader
from facegan.data.tario import iter_samples
from facegan.data.writer import inspect_shards, load_manifest, verify_shards
from facegan.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def facegan_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "facegan.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def brace_url(shards: Path, split: str = "train") -> tuple[str, list[str]]:
    names = [s["name"] for s in load_manifest(shards)["shards"] if s["split"] == split]
    first, last = names[0][len(split) + 1:-4], names[-1][len(split) + 1:-4]
    return f"{shards}/{split}-{{{first}..{last}}}.tar", names


def facegan_samples(shards: Path, split: str = "train") -> dict[str, tuple[np.ndarray, dict]]:
    """key -> (uint8 HWC pixels, labels) as facegan's own loader delivers them."""
    out: dict[str, tuple[np.ndarray, dict]] = {}
    for batch in eval_loader(ShardSet.open(str(shards)), split=split, batch_size=32, normalize=False):
        for key, img, attrs in zip(batch["key"], batch["image"], batch["attrs"]):
            out[key] = (img.permute(1, 2, 0).numpy(), attrs.tolist())
    return out


# -- facegan -> the ecosystem ----------------------------------------------------------------

def test_webdataset_reads_facegan_shards_with_identical_pixels_and_labels(synthetic_shards: Path) -> None:
    url, names = brace_url(synthetic_shards)
    assert len(names) > 2
    ours = facegan_samples(synthetic_shards)
    ds = wds.WebDataset(url, shardshuffle=False).decode("rgb8").to_tuple("__key__", "jpg", "json")
    seen = 0
    for key, img, labels in ds:
        pixels, attrs = ours[key]
        assert img.dtype == np.uint8 and img.shape == pixels.shape
        np.testing.assert_array_equal(img, pixels)
        assert labels["attrs"] == attrs and "img_crc32" in labels and "labels_crc32" in labels
        seen += 1
    assert seen == len(ours) == ShardSet.open(str(synthetic_shards)).count("train")


def test_webdataset_split_by_node_and_worker_partition_facegan_shards(synthetic_shards: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url, names = brace_url(synthetic_shards)
    everything = set(facegan_samples(synthetic_shards))
    per_node = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        ds = wds.WebDataset(url, shardshuffle=False, nodesplitter=wds.split_by_node,
                            workersplitter=wds.split_by_worker).to_tuple("__key__")
        loader = wds.WebLoader(ds, batch_size=None, num_workers=2)
        keys = [key for (key,) in loader]
        assert len(keys) == len(set(keys))    # each worker read its own shards
        per_node.append(set(keys))
    assert per_node[0].isdisjoint(per_node[1]) and per_node[0] | per_node[1] == everything
    assert all(per_node)


def test_webdataset_shardshuffle_and_resampled_read_facegan_shards(synthetic_shards: Path) -> None:
    url, _ = brace_url(synthetic_shards)
    everything = set(facegan_samples(synthetic_shards))
    shuffled = [key for (key,) in wds.WebDataset(url, shardshuffle=100, seed=1).to_tuple("__key__")]
    assert set(shuffled) == everything and len(shuffled) == len(everything)
    endless = wds.WebDataset(url, resampled=True, shardshuffle=False).to_tuple("__key__")
    keys = [key for (key,), _ in zip(endless, range(3 * len(everything)))]
    assert len(keys) == 3 * len(everything) and set(keys) <= everything


@pytest.mark.slow
def test_ray_data_reads_facegan_shards_with_tar_extension_only(ray_cluster, synthetic_shards: Path) -> None:
    import ray.data

    # A shard set folder holds manifest.json beside the tars: tell Ray to read only the .tar files.
    ds = ray.data.read_webdataset(str(synthetic_shards), file_extensions=["tar"])
    rows = ds.take_all()
    manifest = load_manifest(synthetic_shards)
    assert len(rows) == manifest["counts"]["total"]
    row = next(r for r in rows if r["__key__"] in facegan_samples(synthetic_shards))
    pixels, attrs = facegan_samples(synthetic_shards)[row["__key__"]]
    np.testing.assert_array_equal(np.asarray(row["jpg"]), pixels)
    labels = row["json"] if isinstance(row["json"], dict) else json.loads(row["json"])
    assert labels["attrs"] == attrs


# -- the ecosystem -> facegan ----------------------------------------------------------------

def faces(n: int, *, seed: int = 0, size: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def shard_writer_set(out: Path, *, n: int = 40, per_shard: int = 10, compress: bool = False) -> list[np.ndarray]:
    """What a webdataset user writes: ShardWriter, key.jpg + key.cls + key.json."""
    out.mkdir(parents=True, exist_ok=True)
    imgs = faces(n)
    pattern = str(out / ("faces-%06d.tar.gz" if compress else "faces-%06d.tar"))
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
        for i, img in enumerate(imgs):
            sink.write({"__key__": f"face{i:05d}", "jpg": simplejpeg.encode_jpeg(img, quality=95),
                        "cls": i % 4, "json": {"smiling": i % 2 == 0, "age": 20 + i}})
    return imgs


def test_shard_writer_output_imports_streams_verifies_and_inspects(tmp_path: Path) -> None:
    src = tmp_path / "wds"
    imgs = shard_writer_set(src)
    res = facegan_cli("shards", "import", str(src), "--attrs", "smiling", "--val", "faces-000003*")
    assert res.returncode == 0, res.stderr
    assert "imported 40 samples (train 30, val 10, test 0) in 4 shards at 32x32 jpg" in res.stdout
    manifest = load_manifest(src)
    assert manifest["attr_names"] == ["smiling"] and set(manifest["label_fields"]) == {"identity", "age"}
    assert [s["count"] for s in manifest["shards"]] == [10, 10, 10, 10]
    assert verify_shards(src) == []
    report = inspect_shards(src)
    assert report["samples_read"] == 40 and report["attr_frequencies"]["smiling"] == pytest.approx(0.5)
    shards = ShardSet.open(str(src))
    seen: dict[str, tuple[torch.Tensor, float, int, int]] = {}
    for batch in eval_loader(shards, split="train", batch_size=8, normalize=False):
        for key, img, attrs, ident, age in zip(batch["key"], batch["image"], batch["attrs"], batch["identity"],
                                               batch["age"]):
            seen[key] = (img, float(attrs[0]), int(ident), int(age))
    assert len(seen) == 30
    for key, (img, smiling, ident, age) in seen.items():
        i = int(key[4:])
        want = simplejpeg.decode_jpeg(simplejpeg.encode_jpeg(imgs[i], quality=95), colorspace="RGB")
        np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), want)   # no re-encoding on the way
        assert (smiling, ident, age) == (float(i % 2 == 0), i % 4, 20 + i)
    batch = next(train_loader(shards, batch_size=8, num_workers=0))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["num_skipped"] == 0
    assert facegan_cli("shards", "stream", str(src), "--batch-size", "8", "--batches", "3",
                       "--workers", "0").returncode == 0


@pytest.mark.slow
def test_imported_set_trains(tmp_path: Path) -> None:
    from facegan.config import from_dict
    from facegan.families import RunConfig
    from facegan.loop import train

    src = tmp_path / "wds"
    shard_writer_set(src, n=48, per_shard=12)
    import_shards([str(src)], opts=ImportOptions(attrs=("smiling",)))
    cfg = from_dict(RunConfig, {
        "data": {"shards": str(src), "batch_size": 8, "num_workers": 0},
        "model": {"family": "dcgan", "resolution": 32, "z_dim": 16, "base_channels": 8},
        "train": {"total_kimg": 0.04, "tick_kimg": 0.02, "checkpoint_kimg": 0.04, "out_dir": str(tmp_path / "run"),
                  "num_threads": 1, "grid_size": 4},
        "wandb": {"enabled": False}})
    metrics = train(cfg)
    assert metrics["images_seen"] >= 40
    assert any((tmp_path / "run").rglob("*.pt"))


def test_gzip_shards_are_read_in_the_stream(tmp_path: Path) -> None:
    src = tmp_path / "gz"
    shard_writer_set(src, n=20, compress=True)
    assert sorted(p.name for p in src.iterdir()) == ["faces-000000.tar.gz", "faces-000001.tar.gz"]
    m = import_shards([str(src)])
    assert m["counts"]["total"] == 20 and verify_shards(src) == []
    assert sum(len(b["key"]) for b in eval_loader(ShardSet.open(str(src)), split="train", batch_size=8)) == 20


def _tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> None:
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def img2dataset_folder(out: Path, *, n_shards: int = 3, per_shard: int = 6) -> None:
    """img2dataset's output: NNNNN.tar (KEY.jpg, KEY.txt caption, KEY.json), NNNNN.parquet and
    NNNNN_stats.json per shard; GNU and pax tars with long member names mixed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True)
    imgs = faces(n_shards * per_shard, seed=5, size=32)
    for s in range(n_shards):
        members, rows = [], []
        for j in range(per_shard):
            i = s * per_shard + j
            key = f"{s:05d}{j:04d}"
            meta = {"url": f"http://example.invalid/{i}.jpg", "caption": f"a face {i}", "key": key,
                    "status": "success", "width": 32, "height": 32}
            members += [(f"{key}.jpg", simplejpeg.encode_jpeg(imgs[i], quality=90)),
                        (f"{key}.txt", f"a face {i}".encode()), (f"{key}.json", json.dumps(meta).encode())]
            rows.append(meta)
        if s == 1:   # a long name: pax / GNU long-name records ahead of the member
            members += [("x" * 120 + ".jpg", simplejpeg.encode_jpeg(imgs[0], quality=90))]
        _tar(out / f"{s:05d}.tar", members, fmt=tarfile.GNU_FORMAT if s % 2 else tarfile.PAX_FORMAT)
        pq.write_table(pa.Table.from_pylist(rows), out / f"{s:05d}.parquet")
        (out / f"{s:05d}_stats.json").write_text(json.dumps({"count": per_shard, "successes": per_shard}))


@pytest.mark.slow
def test_img2dataset_folder_imports_and_trains_with_cli(tmp_path: Path) -> None:
    src = tmp_path / "laion_faces"
    img2dataset_folder(src)
    res = facegan_cli("shards", "import", str(src), "--test", "00002.tar")
    assert res.returncode == 0, res.stderr
    m = load_manifest(src)
    assert m["counts"] == {"train": 13, "val": 0, "test": 6, "total": 19}
    assert m["image_ext"] == "jpg" and m["resolution"] == [32, 32] and m["label_fields"] == []
    assert verify_shards(src) == []
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
data: {{shards: {src}, batch_size: 4, num_workers: 0}}
model: {{family: dcgan, resolution: 32, z_dim: 8, base_channels: 4}}
train: {{total_kimg: 0.012, tick_kimg: 0.004, checkpoint_kimg: 0.012, out_dir: {tmp_path / 'run'}, num_threads: 1,
        grid_size: 4}}
wandb: {{enabled: false}}
""")
    res = facegan_cli("train", str(cfg))
    assert res.returncode == 0, res.stdout + res.stderr


def test_bad_input_is_skipped_counted_and_verify_stays_clean(tmp_path: Path) -> None:
    src = tmp_path / "mixed"
    src.mkdir()
    good = [simplejpeg.encode_jpeg(img, quality=90) for img in faces(8)]
    _tar(src / "a-000000.tar", [("k0.jpg", good[0]), ("k0.cls", b"1"),
                                (".json", b"{}"),                      # a member without a key
                                ("k1.jpg", b"\xff\xd8 not really a jpeg"),   # does not decode
                                ("k2.txt", b"no image here"),
                                ("k3.jpg", good[3]), ("k3.cls", b"2")])
    (src / "a-000001.tar").write_bytes(b"this is not a tar file at all" * 40)
    whole = io.BytesIO()
    _tar(tmp_path / "full.tar", [(f"t{i}.jpg", good[i]) for i in range(4, 8)])
    cut = (tmp_path / "full.tar").read_bytes()
    (src / "a-000002.tar").write_bytes(cut[:len(cut) // 2])          # the last shard cut short
    del whole
    m = import_shards([str(src)])
    assert m["counts"]["total"] == 2 and m["num_skipped"] == 3
    reasons = {s["key"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"", "k1", "k2"}
    assert "without a key" in reasons[""] and "decode" in reasons["k1"] and "no .jpg image" in reasons["k2"]
    left_out = {s["name"]: s["reason"] for s in m["skipped_shards"]}
    assert left_out.keys() == {"a-000001.tar", "a-000002.tar"}
    assert left_out["a-000001.tar"].startswith("not a tar") and "cut short" in left_out["a-000002.tar"]
    assert verify_shards(src) == []            # what the import counted is not a new problem
    keys = [k for b in eval_loader(ShardSet.open(str(src)), split="train", batch_size=4) for k in b["key"]]
    assert keys == ["k0", "k3"]


def test_nothing_is_written_for_unusable_or_mixed_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.tar").write_bytes(b"garbage" * 200)
    with pytest.raises(DataError, match="no usable sample.*nothing written"):
        import_shards([str(bad)])
    assert not (bad / "manifest.json").exists()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _tar(mixed / "m.tar", [("a.jpg", simplejpeg.encode_jpeg(faces(1, size=32)[0])),
                           ("b.jpg", simplejpeg.encode_jpeg(faces(1, size=16)[0]))])
    with pytest.raises(DataError, match=r"several sizes \(.*32x32.*16x16"):
        import_shards([str(mixed)])
    assert not (mixed / "manifest.json").exists()
    res = facegan_cli("shards", "import", str(tmp_path / "nowhere"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "nowhere" in res.stderr


def test_out_and_brace_patterns_leave_the_shards_alone(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shard_writer_set(src, n=30)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = tmp_path / "manifest_only"
    res = facegan_cli("shards", "import", f"{src}/faces-{{000000..000001}}.tar", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert verify_shards(out) == []     # the third tar beside them is not this set's business
    assert ShardSet.open(str(out)).count("train") == 20
    assert facegan_cli("shards", "verify", str(out)).returncode == 0
    assert facegan_cli("shards", "stream", str(out), "--batch-size", "4", "--batches", "2",
                       "--workers", "0").returncode == 0


def test_read_only_source_asks_for_out(tmp_path: Path) -> None:
    """A source folder facegan cannot write to: import asks for --out and writes nothing. As root
    (CI) a chmod does not stop writes, so the folder is bind-mounted read-only in a mount
    namespace of its own (`unshare -rm`), as the other read-only tests do."""
    import shlex

    from conftest import skip_unless_required

    src = tmp_path / "ro"
    shard_writer_set(src, n=10)
    cmd = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "facegan.cli", "shards", "import", str(src)))
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount --bind {src} {src} && "
                            f"mount -o remount,ro,bind {src} {src}"], capture_output=True)
    if probe.returncode != 0:
        skip_unless_required("FACEGAN_REQUIRE_MOUNTS", "needs `unshare -rm` to bind-mount a folder read-only")
    res = subprocess.run(["unshare", "-rm", "bash", "-c", f"mount --bind {src} {src} && "
                          f"mount -o remount,ro,bind {src} {src} && {cmd}"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert res.returncode == 2 and "--out" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (src / "manifest.json").exists()


def test_a_built_sets_manifest_is_never_replaced(synthetic_shards: Path) -> None:
    with pytest.raises(DataError, match="that `shards import` did not write"):
        import_shards([str(synthetic_shards)])


def test_gzip_tar_is_named_when_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "s.tar.gz"
    path.write_bytes(gzip.compress(b"\0" * 100)[:-8])
    from facegan.data.tario import TarFormatError

    with pytest.raises(TarFormatError, match="gzip"):
        with open(path, "rb") as f:
            list(iter_samples(f))
