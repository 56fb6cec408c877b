"""Build, verify and inspect WebDataset shard sets.

    facegan shards build shards/celeba64.yaml --root ~/celeba --out /data/shards/celeba64
    facegan shards verify /data/shards/celeba64
    facegan shards inspect /data/shards/celeba64

Layout of DIR: `train-000000.tar ...`, `val-000000.tar ...`, `test-...`, and `manifest.json`.
Each sample is `KEY.jpg|png|npy` plus `KEY.json` = the source's labels and `img_crc32`, so a
reader can tell a damaged image from a good one without re-hashing whole shards.

Building is parallel per shard, deterministic (fixed tar headers, seeded order) and resumable:
each finished shard leaves a record in `DIR/.partial/`; a rerun keeps every shard whose bytes
still match its record and builds only the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import random
import signal
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from facegan.data.imageio import ImageError, crc32, decode_chw, encode, load_and_prepare
from facegan.data.recipe import IMAGE_EXT, ShardRecipe
from facegan.data.records import SPLITS, DataError, SourceItem, SourceScan
from facegan.data.store import LocalStore, Store, open_store
from facegan.data.tario import TarFormatError, iter_samples

MANIFEST = "manifest.json"
PARTIAL = ".partial"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- scanning

def scan_source(recipe: ShardRecipe, *, root: str | Path | None) -> SourceScan:
    """List the recipe's source items (no pixels read)."""
    if recipe.source == "synthetic":
        from facegan.data.synthetic import scan_synthetic

        scan = scan_synthetic(count=recipe.count, seed=recipe.seed,
                              val_fraction=recipe.val_fraction, test_fraction=recipe.test_fraction)
    else:
        if root is None:
            raise DataError(f"source {recipe.source}: --root is required (the folder holding the images)")
        from facegan.data import sources

        if recipe.source == "celeba":
            scan = sources.scan_celeba(root=root, annotations=recipe.annotations,
                                       val_fraction=recipe.val_fraction, test_fraction=recipe.test_fraction)
        elif recipe.source == "utkface":
            scan = sources.scan_utkface(root=root, val_fraction=recipe.val_fraction,
                                        test_fraction=recipe.test_fraction, seed=recipe.seed)
        else:
            scan = sources.scan_folder(root=root, labels_csv=recipe.labels_csv,
                                       val_fraction=recipe.val_fraction,
                                       test_fraction=recipe.test_fraction, seed=recipe.seed)
    if recipe.limit:
        scan.items = scan.items[: recipe.limit]
    return scan


@dataclass
class ShardJob:
    name: str
    split: str
    items: list[SourceItem]
    keys_sha256: str = ""

    def __post_init__(self) -> None:
        h = hashlib.sha256()
        for item in self.items:
            h.update(item.key.encode() + b"\n")
        self.keys_sha256 = h.hexdigest()


def plan_shards(recipe: ShardRecipe, items: list[SourceItem]) -> list[ShardJob]:
    """Assign items to shards: per split, sorted by key; train shuffled with the recipe seed.

    CelebA files are identity-ordered (30 photos per person in the sample); without the shuffle a
    shard would hold few identities and a resampling reader would see them in long runs.
    """
    jobs: list[ShardJob] = []
    for split in SPLITS:
        part = sorted((it for it in items if it.split == split), key=lambda it: it.key)
        if split == "train" and recipe.shuffle:
            random.Random(recipe.seed).shuffle(part)
        for i, start in enumerate(range(0, len(part), recipe.shard_size)):
            jobs.append(ShardJob(name=f"{split}-{i:06d}.tar", split=split,
                                 items=part[start:start + recipe.shard_size]))
    return jobs


# ----------------------------------------------------------------------------- writing

class _HashingWriter(io.RawIOBase):
    """Write-through wrapper that counts bytes and hashes them (tar streams through it)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.f.write(data)
        self.sha.update(data)
        self.nbytes += len(data)
        return len(data)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata so the same inputs give byte-identical shards (and the same sha256).
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _render(item: SourceItem, recipe: ShardRecipe) -> np.ndarray:
    if item.path is None:
        from facegan.data.synthetic import render_face

        return render_face(seed=recipe.seed, index=item.index, height=recipe.height, width=recipe.width)
    return load_and_prepare(item.path, crop=recipe.crop_hw, out_h=recipe.height, out_w=recipe.width)


# Items per task handed to a worker: small enough to balance load across workers even when a
# set has fewer shards than workers, large enough to keep inter-process traffic negligible.
CHUNK = 32


def _encode_chunk(args: tuple[list[SourceItem], dict[str, Any]]) -> tuple[list[tuple[str, bytes, bytes]], list[dict[str, str]]]:
    """Worker: read/render, crop, resize and encode some items -> (samples, skipped inputs)."""
    items, recipe_dict = args
    recipe = ShardRecipe(**recipe_dict)
    samples: list[tuple[str, bytes, bytes]] = []
    skipped: list[dict[str, str]] = []
    for item in items:
        try:
            img = _render(item, recipe)
        except ImageError as exc:
            skipped.append({"input": item.path or item.key, "reason": str(exc)})
            continue
        data = encode(img, fmt=recipe.format, quality=recipe.quality)
        meta = dict(item.labels, img_crc32=crc32(data))
        samples.append((item.key, data, json.dumps(meta, sort_keys=True).encode()))
    return samples, skipped


def _worker_init() -> None:
    # Forked workers inherit the parent's signal handlers: a Ray driver's SIGTERM handler would
    # run in a worker on pool.terminate() and tear down the connection the parent shares with
    # its raylet. Workers just die on SIGTERM and ignore Ctrl-C (the parent handles it).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _write_shard(store: Store, job: ShardJob, recipe: ShardRecipe,
                 chunks: Iterator[tuple[list[tuple[str, bytes, bytes]], list[dict[str, str]]]]) -> dict[str, Any]:
    """Write one shard from its encoded chunks (in order); return its record."""
    ext = IMAGE_EXT[recipe.format]
    skipped: list[dict[str, str]] = []
    count = 0
    with store.open_write(job.name) as f:
        hw = _HashingWriter(f)
        with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for samples, chunk_skipped in chunks:
                skipped += chunk_skipped
                for key, data, meta in samples:
                    _add_member(tar, f"{key}.{ext}", data)
                    _add_member(tar, f"{key}.json", meta)
                    count += 1
    return {"name": job.name, "split": job.split, "count": count, "bytes": hw.nbytes,
            "sha256": hw.sha.hexdigest(), "keys_sha256": job.keys_sha256,
            "fingerprint": recipe.fingerprint(), "skipped": skipped, "num_items": len(job.items)}


def _sha256_of(store: Store, name: str) -> str | None:
    if not store.readable or not store.exists(name):
        return None
    h = hashlib.sha256()
    with store.open_read(name) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _previous_records(store: Store, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Shard records from an earlier (maybe interrupted) build with the same settings."""
    if not store.readable:
        return {}
    records: dict[str, dict[str, Any]] = {}
    raw = store.read_bytes(MANIFEST)
    if raw:
        try:
            manifest = json.loads(raw)
            if manifest.get("fingerprint") == fingerprint:
                for rec in manifest.get("shards", []):
                    records[rec["name"]] = dict(rec, fingerprint=fingerprint)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    if isinstance(store, LocalStore) and (store.root / PARTIAL).is_dir():
        for p in sorted((store.root / PARTIAL).glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except json.JSONDecodeError:
                continue
            if rec.get("fingerprint") == fingerprint:
                records[rec["name"]] = rec
    return records


@dataclass
class BuildResult:
    manifest: dict[str, Any]
    built: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    seconds: float = 0.0


def build_shards(recipe: ShardRecipe, *, root: str | Path | None, out: str | Path,
                 progress: bool = True) -> BuildResult:
    """Scan the source, write shards in parallel, then manifest.json. Resumes where it can."""
    t0 = time.time()
    store = open_store(out)
    if isinstance(store, LocalStore):
        store.clean_temp()
    scan = scan_source(recipe, root=root)
    jobs = plan_shards(recipe, scan.items)
    if not jobs:
        raise DataError(f"no usable images in {root or 'the synthetic source'}: "
                        f"{len(scan.skipped)} inputs skipped")
    fingerprint = recipe.fingerprint()
    previous = _previous_records(store, fingerprint)

    kept: dict[str, dict[str, Any]] = {}
    todo: list[ShardJob] = []
    for job in jobs:
        rec = previous.get(job.name)
        if rec and rec.get("keys_sha256") == job.keys_sha256 and _sha256_of(store, job.name) == rec["sha256"]:
            kept[job.name] = rec
        else:
            todo.append(job)

    records = dict(kept)
    recipe_dict = recipe.as_dict()
    total = sum(len(j.items) for j in todo)
    bar = _progress(total=total, enabled=progress and total > 0)
    # Workers encode chunks of items; this process writes them into shards in order (an ordered
    # imap keeps every worker busy while the tar stream stays sequential and deterministic).
    tasks = [(job.items[i:i + CHUNK], recipe_dict) for job in todo for i in range(0, len(job.items), CHUNK)]
    workers = max(1, min(recipe.num_workers, len(tasks)))
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool = ctx.Pool(workers, initializer=_worker_init) if workers > 1 else None
    try:
        results = iter(pool.imap(_encode_chunk, tasks, chunksize=1) if pool else map(_encode_chunk, tasks))

        def take(num_chunks: int) -> Iterator[Any]:
            for _ in range(num_chunks):
                chunk = next(results)
                bar.update(len(chunk[0]) + len(chunk[1]))
                yield chunk

        for job in todo:
            rec = _write_shard(store, job, recipe, take(-(-len(job.items) // CHUNK)))
            records[rec["name"]] = rec
            if isinstance(store, LocalStore):
                # Record each finished shard at once: this is what a resumed build trusts.
                store.write_bytes(f"{PARTIAL}/{rec['name']}.json", json.dumps(rec).encode())
        if pool:
            pool.close()  # a normal exit: the workers finish on their own
    finally:
        if pool:
            pool.terminate()
            pool.join()
        bar.close()

    manifest = make_manifest(recipe, scan, [records[j.name] for j in jobs], root=root)
    if manifest["counts"]["total"] == 0:
        raise DataError(f"no usable images in {root or 'the synthetic source'}: "
                        f"all {len(manifest['skipped'])} inputs were skipped "
                        f"(first: {manifest['skipped'][0] if manifest['skipped'] else 'n/a'})")
    store.write_bytes(MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    if isinstance(store, LocalStore):
        for p in (store.root / PARTIAL).glob("*.json") if (store.root / PARTIAL).is_dir() else []:
            p.unlink()
        if (store.root / PARTIAL).is_dir():
            (store.root / PARTIAL).rmdir()
    return BuildResult(manifest=manifest, built=[j.name for j in todo], kept=sorted(kept),
                       seconds=time.time() - t0)


def make_manifest(recipe: ShardRecipe, scan: SourceScan, records: list[dict[str, Any]], *,
                  root: str | Path | None) -> dict[str, Any]:
    skipped = list(scan.skipped)
    for rec in records:
        skipped.extend(rec.get("skipped", []))
    counts = {split: 0 for split in SPLITS}
    shards_per_split = {split: 0 for split in SPLITS}
    for rec in records:
        counts[rec["split"]] += rec["count"]
        shards_per_split[rec["split"]] += 1
    partial = sorted(it.key for it in scan.items if it.labels.get("partial_name"))
    return {
        "format_version": FORMAT_VERSION,
        "source": scan.source,
        "root": str(root) if root is not None else None,
        "recipe": {k: v for k, v in recipe.as_dict().items() if k != "workers"},
        "fingerprint": recipe.fingerprint(),
        "resolution": [recipe.height, recipe.width],
        "image_ext": IMAGE_EXT[recipe.format],
        "attr_names": list(scan.attr_names),
        "label_fields": list(scan.label_fields),
        "counts": dict(counts, total=sum(counts.values())),
        "shards_per_split": shards_per_split,
        "shards": [{k: rec[k] for k in ("name", "split", "count", "bytes", "sha256", "keys_sha256")}
                   for rec in records],
        "num_skipped": len(skipped),
        "skipped": skipped,
        "rows_without_image": scan.rows_without_image,
        "num_partial_labels": len(partial),
        "partial_labels": partial,
    }


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(*, total: int, enabled: bool) -> Any:
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="building shards", file=sys.stderr, smoothing=0.1)


# ----------------------------------------------------------------------------- reading back

def load_manifest(location: str | Path) -> dict[str, Any]:
    store = open_store(location)
    if not store.readable:
        raise DataError(f"{location}: cannot read a manifest from a pipe: destination")
    raw = store.read_bytes(MANIFEST)
    if raw is None:
        raise DataError(f"{location}: no {MANIFEST} (is this a shard set built by `facegan shards build`?)")
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{store.url(MANIFEST)}: not valid JSON: {exc}") from None
    for key in ("shards", "resolution", "image_ext", "attr_names"):
        if key not in manifest:
            raise DataError(f"{store.url(MANIFEST)}: missing field {key!r}")
    return manifest


def check_sample(sample: dict[str, Any], *, ext: str, height: int, width: int) -> dict[str, Any]:
    """Validate one sample; returns its labels. Raises ImageError/ValueError naming the problem."""
    if ext not in sample:
        raise ImageError(f"sample {sample['__key__']}: no .{ext} image")
    if "json" not in sample:
        raise ValueError(f"sample {sample['__key__']}: no .json labels")
    labels = json.loads(sample["json"])
    data = sample[ext]
    if "img_crc32" in labels and crc32(data) != labels["img_crc32"]:
        raise ImageError(f"sample {sample['__key__']}: image bytes do not match their crc32")
    decode_chw(data, ext=ext, height=height, width=width)
    return labels


def verify_shards(location: str | Path, *, progress: bool = False) -> list[str]:
    """Check every shard's size and sha256 and decode every sample; returns the problems found."""
    manifest = load_manifest(location)
    store = open_store(location)
    height, width = manifest["resolution"]
    ext = manifest["image_ext"]
    problems: list[str] = []
    for rec in manifest["shards"]:
        name = rec["name"]
        if not store.exists(name):
            problems.append(f"{name}: missing")
            continue
        data = store.read_bytes(name) or b""
        if len(data) != rec["bytes"]:
            problems.append(f"{name}: {len(data)} bytes, manifest says {rec['bytes']}")
        if hashlib.sha256(data).hexdigest() != rec["sha256"]:
            problems.append(f"{name}: sha256 mismatch (file changed or corrupt)")
        count = 0
        try:
            for sample in iter_samples(io.BytesIO(data)):
                try:
                    check_sample(sample, ext=ext, height=height, width=width)
                    count += 1
                except (ImageError, ValueError) as exc:
                    problems.append(f"{name}: {exc}")
        except TarFormatError as exc:
            problems.append(f"{name}: unreadable tar after {count} samples: {exc}")
        if count != rec["count"]:
            problems.append(f"{name}: {count} good samples, manifest says {rec['count']}")
    return problems


def inspect_shards(location: str | Path, *, preview: str | Path | None = None, num_preview: int = 64
                   ) -> dict[str, Any]:
    """Counts, attribute frequencies (from the stored labels) and an optional preview grid PNG."""
    manifest = load_manifest(location)
    store = open_store(location)
    height, width = manifest["resolution"]
    ext = manifest["image_ext"]
    attr_names = manifest["attr_names"]
    sums = np.zeros(len(attr_names), dtype=np.int64)
    n_attr = 0
    other: dict[str, dict[str, int]] = {}
    images: list[np.ndarray] = []
    for rec in manifest["shards"]:
        with store.open_read(rec["name"]) as f:
            for sample in iter_samples(f):
                labels = json.loads(sample.get("json", b"{}"))
                if "attrs" in labels and len(labels["attrs"]) == len(attr_names):
                    sums += np.asarray(labels["attrs"], dtype=np.int64) > 0
                    n_attr += 1
                for k in ("gender", "race"):
                    if k in labels:
                        bucket = other.setdefault(k, {})
                        bucket[str(labels[k])] = bucket.get(str(labels[k]), 0) + 1
                if preview and len(images) < num_preview and rec["split"] == "train" and ext in sample:
                    images.append(decode_chw(sample[ext], ext=ext, height=height, width=width).numpy())
    freqs = {name: float(s) / n_attr for name, s in zip(attr_names, sums)} if n_attr else {}
    report = {"counts": manifest["counts"], "resolution": manifest["resolution"],
              "num_skipped": manifest["num_skipped"], "rows_without_image": manifest["rows_without_image"],
              "attr_frequencies": freqs, "label_histograms": other}
    if preview and images:
        save_grid(np.stack(images), preview)
        report["preview"] = str(preview)
    return report


def save_grid(imgs_NCHW: np.ndarray, path: str | Path, *, nrow: int | None = None) -> None:
    """Tile uint8 NxCxHxW images into one PNG (2 px gaps)."""
    from PIL import Image

    n, c, h, w = imgs_NCHW.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol_rows = int(np.ceil(n / nrow))
    pad = 2
    grid = np.full((ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = \
            imgs_NCHW[i].transpose(1, 2, 0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
