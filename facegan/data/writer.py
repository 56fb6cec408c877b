"""Build, verify and inspect WebDataset shard sets.

    facegan shards build shards/celeba64.yaml --root ~/celeba --out /data/shards/celeba64
    facegan shards verify /data/shards/celeba64
    facegan shards inspect /data/shards/celeba64

Layout of DIR: `train-000000.tar ...`, `val-000000.tar ...`, `test-...`, and `manifest.json`,
which is the truth about the set: a .tar file it does not list is not part of the set (a rebuild
removes it, `verify` flags it). Each sample is `KEY.jpg|png|npy` plus `KEY.json` = the source's
labels, the image's `img_crc32` and the labels' own `labels_crc32`, so a reader can tell a
damaged sample from a good one without re-hashing whole shards.

How a build runs (the same steps locally and as Ray tasks, facegan.launch.shards):
  1. scan the source and plan shards; check the recipe against a sample of the inputs and the
     machine's memory; refuse before writing anything when nothing would be built;
  2. per chunk of a shard (`encode_chunk`): read, decode, crop, resize, encode, and lay the
     samples out as tar members; a shard is its chunks' members in order plus the end marker,
     so the bytes do not depend on which process encoded which chunk;
  3. write each shard under DIR/.partial/ with a record of its inputs (every source file's name,
     size and mtime, the labels and the recipe), so a rerun keeps exactly the shards whose inputs
     did not change;
  4. when every shard is done: write the new manifest, move the shards into place, remove
     the .tar files the manifest does not list. Until then an earlier set in DIR stays intact
     and loadable, whatever happens to this build (interrupt, disk full, bad input).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import gc
import hashlib
import io
import itertools
import json
import multiprocessing as mp
import os
import random
import re
import signal
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np

from facegan.data.foreign import foreign_labels
from facegan.data.imageio import (ImageError, check_source_size, crc32, crop_box, decode_chw, encode, prepare,
                                  read_file_stat, save_grid)
from facegan.data.limits import check_memory, human
from facegan.data.lock import LOCK_NAME, hold_lock
from facegan.data.recipe import IMAGE_EXT, ShardRecipe
from facegan.data.records import SPLITS, DataError, SourceItem, SourceScan, item_key
from facegan.data.store import FsspecStore, LocalStore, PipeStore, Store, open_store
from facegan.data.tario import TAR_END, TarFormatError, add_member, iter_samples

MANIFEST = "manifest.json"
PARTIAL = ".partial"
FORMAT_VERSION = 2
SHARD_NAME = re.compile(r"^(train|val|test)-\d{6}\.tar$")
# Memory a scanned item takes (key, path, labels; ~0.8 KiB measured for CelebA-like labels, x2.5
# for the plan's copies): what a synthetic `count` multiplies.
SCAN_BYTES_PER_ITEM = 2048
# Encoded samples a worker hands back at once: small enough to balance load across workers even
# when a set has fewer shards than workers, large enough to keep inter-process traffic negligible.
CHUNK = 32
CHUNK_BYTES = 64 << 20          # ... and at most this many raw pixel bytes per chunk (big resolutions)
SHARDS_PER_WORKER = 4           # at least this many shards per worker: workers build whole shards
PREFLIGHT_SAMPLES = 16          # source headers read before a build to catch a recipe that fits none


# ----------------------------------------------------------------------------- scanning

@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Cyclic garbage collection off while a scan or a plan makes its objects (several per image,
    none in a reference cycle): each collection CPython 3.11 runs on the way walks every object
    still alive, which at full CelebA size (202,599 images) was a quarter of the scan's time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def _gc_frozen() -> Iterator[None]:
    """The objects alive now (mostly the scan and the plan: several per image, made with the
    collector off and so all still in its youngest generation) left out of cyclic garbage
    collections until the end of the block: else this process's next collections, and those of
    every worker forked from it, walk them all (and copy the workers' inherited heap on write).
    Given back at the end, unless something else had frozen objects before."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def scan_source(recipe: ShardRecipe, *, root: str | Path | None) -> SourceScan:
    """List the recipe's source items (no pixels read)."""
    with _gc_paused():
        return _scan_source(recipe, root=root)


def _scan_source(recipe: ShardRecipe, *, root: str | Path | None) -> SourceScan:
    if recipe.source == "synthetic":
        from facegan.data.synthetic import scan_synthetic

        num = min(recipe.count, recipe.limit) if recipe.limit else recipe.count
        check_memory(num * SCAN_BYTES_PER_ITEM, what=f"count {recipe.count:,}",
                     hint="build fewer synthetic faces")
        scan = scan_synthetic(count=num, seed=recipe.seed,
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
            scan = sources.scan_folder(root=root, labels_csv=recipe.labels_csv, labels_json=recipe.labels_json,
                                       val_fraction=recipe.val_fraction,
                                       test_fraction=recipe.test_fraction, seed=recipe.seed)
    if recipe.limit:
        scan.items = scan.items[: recipe.limit]
    if recipe.train_limit:
        train = sorted((item for item in scan.items if item.split == "train"), key=item_key)
        random.Random(recipe.seed).shuffle(train)
        kept = {id(item) for item in train[: recipe.train_limit]}
        scan.items = [item for item in scan.items if item.split != "train" or id(item) in kept]
    return scan


@dataclass
class ShardJob:
    """One shard to build: its items in order, and hashes that say what it was built from."""

    name: str
    split: str
    items: list[SourceItem]
    keys_sha256: str = ""

    def __post_init__(self) -> None:
        # sha256 of every key followed by a newline (one update: the same digest as one per key)
        self.keys_sha256 = hashlib.sha256("".join([item.key + "\n" for item in self.items]).encode()).hexdigest()


def plan_shards(recipe: ShardRecipe, items: list[SourceItem]) -> list[ShardJob]:
    """Assign items to shards: per split, sorted by key; train shuffled with the recipe seed.

    CelebA files are identity-ordered (30 photos per person in the sample); without the shuffle a
    shard would hold few identities and a resampling reader would see them in long runs.
    """
    jobs: list[ShardJob] = []
    by_split: dict[str, list[SourceItem]] = {split: [] for split in SPLITS}
    with _gc_paused():
        for item in items:
            by_split[item.split].append(item)
        for split in SPLITS:
            part = sorted(by_split[split], key=item_key)
            if split == "train" and recipe.shuffle:
                random.Random(recipe.seed).shuffle(part)
            for i, start in enumerate(range(0, len(part), recipe.shard_size)):
                jobs.append(ShardJob(name=f"{split}-{i:06d}.tar", split=split,
                                     items=part[start:start + recipe.shard_size]))
    return jobs


# ----------------------------------------------------------------------------- the per-chunk work

def labels_json(labels_text: bytes, img_crc32: int) -> bytes:
    """A sample's .json from its labels' canonical JSON (`canonical_json(labels)`): the labels
    plus `img_crc32` (the image's) and `labels_crc32` (crc32 of `labels_text`), added last."""
    tail = b'"img_crc32": %d, "labels_crc32": %d}' % (img_crc32, crc32(labels_text))
    return labels_text[:-1] + (b", " + tail if labels_text != b"{}" else tail)


def canonical_json(labels: dict[str, Any]) -> bytes:
    return json.dumps(labels, sort_keys=True).encode()


_LABELS_TAIL = re.compile(rb'"img_crc32": ([0-9]+), "labels_crc32": ([0-9]+)\}\Z')


def _written_tail(raw: bytes) -> tuple[int, int] | None:
    """(img_crc32, labels_crc32) of a .json as `labels_json` writes it, once its labels' bytes
    pass labels_crc32 as they are (no re-serialising); ValueError if they do not; None for a
    .json not in that form."""
    at = raw.rfind(b'"img_crc32": ')
    tail = _LABELS_TAIL.match(raw, at) if at > 0 else None
    if tail is None or not (raw[at - 2:at] == b", " or at == 1):
        return None
    labels_crc = int(tail.group(2))
    text = memoryview(raw)[:at - 2] if at > 1 else b"{"
    if zlib.crc32(b"}", zlib.crc32(text)) != labels_crc:
        raise ValueError("labels do not match their crc32")
    return int(tail.group(1)), labels_crc


def parse_labels(raw: bytes, *, strict: bool = False) -> dict[str, Any]:
    """Labels of a sample's .json (with its `img_crc32`); ValueError if it is not JSON or fails
    its `labels_crc32` (over the canonical JSON of everything but the two checksums).

    strict (sets of format_version >= 2): both checksums must be there. Otherwise a flipped bit
    in the name "labels_crc32" or "img_crc32" would switch its check off and let a second
    flip through unseen.
    """
    written = _written_tail(raw)
    if written is not None:
        labels = json.loads(raw)
        if not isinstance(labels, dict) or labels.pop("labels_crc32", None) != written[1]:
            raise ValueError("labels are not the JSON object their checksum covers")
        return labels
    labels = json.loads(raw)
    if not isinstance(labels, dict):
        raise ValueError("labels are not a JSON object")
    stored = labels.pop("labels_crc32", None)
    img = labels.pop("img_crc32", None)
    if stored is None:
        if strict:
            raise ValueError("labels carry no labels_crc32")
    elif crc32(canonical_json(labels)) != stored:
        raise ValueError("labels do not match their crc32")
    if img is not None:
        labels["img_crc32"] = img
    elif strict:
        raise ValueError("labels carry no img_crc32")
    return labels


def sample_labels(sample: dict[str, Any], *, ext: str, strict: bool) -> dict[str, Any]:
    """The labels of a sample whose image and labels pass their crc32s; ValueError (ImageError for
    the image) saying why not. Cheap: nothing is decoded."""
    data = sample.get(ext)
    if data is None:
        raise ImageError(f"no .{ext} image")
    raw = sample.get("json")
    if raw is None:
        raise ValueError("no .json labels")
    labels = parse_labels(raw, strict=strict)
    if "img_crc32" in labels and crc32(data) != labels["img_crc32"]:
        raise ImageError("image bytes do not match their crc32")
    return labels


def samples_labels(samples: list[dict[str, Any]], *, ext: str, strict: bool) -> list[dict[str, Any] | ValueError]:
    """`sample_labels` of each sample (its labels, or the ValueError saying why not), with one JSON
    parse for all the samples whose .json is as `labels_json` writes it.

    Those are checked first, each on its own: the labels' crc32 over their bytes and the image's
    crc32 against the number in the tail, so a damaged sample fails alone. Then their texts are
    parsed as one JSON array (per-call overhead is most of a small parse). Anything unexpected
    there (a text that is not one JSON object, a checksum that does not read back) sends every one
    of them through `sample_labels` instead, which says which sample is wrong.
    """
    out: list[dict[str, Any] | ValueError | None] = [None] * len(samples)
    texts: list[bytes] = []
    where: list[tuple[int, int, int]] = []
    for i, sample in enumerate(samples):
        raw, data = sample.get("json"), sample.get(ext)
        try:
            written = _written_tail(raw) if raw is not None and data is not None else None
        except ValueError as exc:
            out[i] = exc
            continue
        if written is None:
            try:   # no image, no labels, or not as labels_json writes them: the general path
                out[i] = sample_labels(sample, ext=ext, strict=strict)
            except ValueError as exc:
                out[i] = exc
            continue
        img_crc, labels_crc = written
        if crc32(data) != img_crc:
            out[i] = ImageError("image bytes do not match their crc32")
        else:
            texts.append(raw)
            where.append((i, labels_crc, img_crc))
    if texts:
        try:
            parsed = json.loads(b"[" + b",".join(texts) + b"]")
        except ValueError:
            parsed = None
        if (isinstance(parsed, list) and len(parsed) == len(texts)
                and all(isinstance(lab, dict) and lab.pop("labels_crc32", None) == labels_crc
                        and lab.get("img_crc32") == img_crc
                        for lab, (_, labels_crc, img_crc) in zip(parsed, where))):
            for lab, (i, _, _) in zip(parsed, where):
                out[i] = lab
        else:
            for i, _, _ in where:
                try:
                    out[i] = sample_labels(samples[i], ext=ext, strict=strict)
                except ValueError as exc:
                    out[i] = exc
    return out  # type: ignore[return-value]


def strict_checks(manifest: dict[str, Any]) -> bool:
    """Whether a set's samples must carry both checksums (written by this version or later;
    never for an imported set, whose samples are as their writer made them)."""
    version = manifest.get("format_version", 1)
    return isinstance(version, int) and version >= 2 and "imported" not in manifest


LabelReader = Callable[[list[dict[str, Any]]], list[dict[str, Any] | ValueError]]


def labels_reader(manifest: dict[str, Any]) -> LabelReader:
    """How this set's samples turn into labels: `samples_labels` for a built set (checksums
    checked), the import's mapping for an imported one (facegan.data.foreign)."""
    ext = manifest["image_ext"]
    imported = manifest.get("imported")
    if isinstance(imported, dict):
        return functools.partial(foreign_labels, ext=ext, spec=dict(imported.get("labels", {})))
    return functools.partial(samples_labels, ext=ext, strict=strict_checks(manifest))


def shard_location(location: str | Path, manifest: dict[str, Any]) -> str:
    """Where a set's shards are: beside its manifest, or (an import written to --out) where the
    manifest's `shard_location` says."""
    return str(manifest.get("shard_location") or location)


def known_skipped(rec: dict[str, Any]) -> set[str]:
    """Keys of the samples an import found unusable in this shard (they stay in the tar: skipped by
    every reader, counted once in the manifest, not a new problem for `verify`)."""
    return {s["key"] for s in rec.get("skipped", []) if isinstance(s, dict) and "key" in s}


@dataclass
class Chunk:
    """Some consecutive samples of one shard, laid out as tar members (no end marker), and the
    digest of the inputs they were made from (see `chunk_inputs_digest`)."""

    members: bytes
    count: int
    skipped: list[dict[str, str]]
    seconds: dict[str, float]
    inputs_digest: bytes = b""


def chunk_size(recipe: ShardRecipe) -> int:
    per_image = recipe.height * recipe.width * 3
    return max(1, min(CHUNK, CHUNK_BYTES // per_image))


def chunks_of(items: list[SourceItem], recipe: ShardRecipe) -> list[list[SourceItem]]:
    n = chunk_size(recipe)
    return [items[i:i + n] for i in range(0, len(items), n)]


def worker_bytes(recipe: ShardRecipe) -> int:
    """Peak memory of one build worker: a chunk of output images in flight (raw pixels, encoded
    bytes and tar members) or, for synthetic faces, the 4x supersampled canvas it draws on."""
    pixels = recipe.height * recipe.width * 3
    if recipe.source == "synthetic":
        return 16 * pixels * 2 + 4 * pixels
    return chunk_size(recipe) * pixels * 4 + (256 << 20)   # + a decoded source image


def _describe(item: SourceItem, labels_text: bytes, stat: tuple[int, int] | None = None) -> bytes:
    """What a sample's bytes depend on besides the recipe: key, labels and the source file's
    path, size and mtime (synthetic items: their index). `stat`: (size, mtime_ns) if known."""
    if item.path is None:
        return b"%s\0%d\0%s\n" % (item.key.encode(), item.index, labels_text)
    if stat is None:
        try:
            st = os.stat(item.path)
            stat = (st.st_size, st.st_mtime_ns)
        except OSError:
            stat = (-1, -1)
    return b"%s\0%s\0%d\0%d\0%s\n" % (item.key.encode(), os.fsencode(item.path), stat[0], stat[1], labels_text)


def chunk_inputs_digest(items: list[SourceItem]) -> bytes:
    return hashlib.sha256(b"".join(_describe(it, canonical_json(it.labels)) for it in items)).digest()


def inputs_sha256(digests: Iterable[bytes], fingerprint: str) -> str:
    """A shard's inputs: the recipe's fingerprint and its chunks' input digests, in order. A
    changed, replaced or touched source file, or changed labels, change it."""
    h = hashlib.sha256(fingerprint.encode())
    for d in digests:
        h.update(d)
    return h.hexdigest()


def job_inputs_sha256(job: "ShardJob", recipe: ShardRecipe, fingerprint: str) -> str:
    """The inputs hash a build of `job` would record (computed without building it)."""
    return inputs_sha256((chunk_inputs_digest(c) for c in chunks_of(job.items, recipe)), fingerprint)


def encode_chunk(items: list[SourceItem], recipe: ShardRecipe) -> Chunk:
    """Read/render, crop, resize and encode items into tar members; unusable inputs are skipped.

    The inputs digest is taken here, each file's size and mtime just before it is read: a file
    that changes later gets a new digest on the next run, so it is never trusted stale.
    """
    ext = IMAGE_EXT[recipe.format]
    stats: dict[str, float] = {}
    described: list[bytes] = []
    skipped: list[dict[str, str]] = []
    perf = time.perf_counter
    # One stage at a time over the whole chunk (labels, pixels, encode, tar): each stage's code and
    # tables stay in the CPU caches, where alternating stages per image evicted each other's.
    t0 = perf()
    texts = [canonical_json(item.labels) for item in items]
    stats["labels"] = perf() - t0
    images: list[tuple[SourceItem, bytes, Any]] = []
    for item, labels_text in zip(items, texts):
        try:
            if item.path is None:
                from facegan.data.synthetic import render_face

                described.append(_describe(item, labels_text))
                t0 = perf()
                img: Any = render_face(seed=recipe.seed, index=item.index, height=recipe.height,
                                       width=recipe.width)
                stats["render"] = stats.get("render", 0.0) + perf() - t0
            else:
                stat = (-1, -1)   # unreadable: described as such, and skipped below
                try:
                    raw, stat = read_file_stat(item.path, stats=stats)
                finally:
                    described.append(_describe(item, labels_text, stat))
                img = prepare(raw, crop=recipe.crop_hw, out_h=recipe.height, out_w=recipe.width,
                              min_side=recipe.min_side, max_aspect=recipe.max_aspect, stats=stats)
        except ImageError as exc:
            skipped.append({"input": item.path or item.key, "reason": str(exc)})
            continue
        images.append((item, labels_text, img))
    t0 = perf()
    encoded = [encode(img, fmt=recipe.format, quality=recipe.quality) for _, _, img in images]
    t1 = perf()
    parts: list[bytes] = []
    for (item, labels_text, _), data in zip(images, encoded):
        add_member(parts, f"{item.key}.{ext}", data)
        add_member(parts, f"{item.key}.json", labels_json(labels_text, crc32(data)))
    stats["encode"] = t1 - t0
    stats["tar"] = perf() - t1
    count = len(images)
    return Chunk(members=b"".join(parts), count=count, skipped=skipped, seconds=stats,
                 inputs_digest=hashlib.sha256(b"".join(described)).digest())


def _encode_task(args: tuple[list[SourceItem], ShardRecipe]) -> Chunk:
    return encode_chunk(*args)


def _write_error(store: Store, name: str, exc: OSError) -> DataError:
    where = f"--out {store.location}"
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return DataError(f"{where}: disk full while writing {name}; the build stopped and any earlier "
                         "shard set there is unchanged (free space, then rerun to resume)")
    return DataError(f"{where}: cannot write {name}: {exc.strerror or exc}")


def write_shard(store: Store, name: str, chunks: Iterable[Chunk]) -> dict[str, Any]:
    """Write a shard from its chunks (in order) under `name`; a shard with no samples is not written.

    Returns count, bytes, sha256, skipped inputs and per-stage seconds (the chunks' + "write", "hash").
    """
    count = nbytes = 0
    sha = hashlib.sha256()
    skipped: list[dict[str, str]] = []
    digests: list[bytes] = []
    seconds: dict[str, float] = {}
    stack: Any = None
    f: BinaryIO | None = None
    try:
        for chunk in chunks:
            skipped += chunk.skipped
            digests.append(chunk.inputs_digest)
            for k, v in chunk.seconds.items():
                seconds[k] = seconds.get(k, 0.0) + v
            if not chunk.count:
                continue
            if f is None:
                stack = store.open_write(name)
                f = stack.__enter__()
            t0 = time.perf_counter()
            sha.update(chunk.members)
            t1 = time.perf_counter()
            f.write(chunk.members)
            seconds["hash"] = seconds.get("hash", 0.0) + t1 - t0
            seconds["write"] = seconds.get("write", 0.0) + time.perf_counter() - t1
            count += chunk.count
            nbytes += len(chunk.members)
        if f is not None:
            f.write(TAR_END)
            sha.update(TAR_END)
            nbytes += len(TAR_END)
            t0 = time.perf_counter()
            f, s = None, stack
            stack = None
            s.__exit__(None, None, None)   # flush, fsync and rename into place
            seconds["write"] = seconds.get("write", 0.0) + time.perf_counter() - t0
    except OSError as exc:
        if stack is not None:
            stack.__exit__(*sys.exc_info())
        raise _write_error(store, name, exc) from None
    except BaseException:
        if stack is not None:
            stack.__exit__(*sys.exc_info())
        raise
    return {"count": count, "bytes": nbytes, "sha256": sha.hexdigest() if count else None,
            "skipped": skipped, "seconds": seconds, "inputs_digests": digests}


def build_one_shard(job: ShardJob, recipe: ShardRecipe, location: str, name: str, *,
                    progress: Any = None) -> dict[str, Any]:
    """Build one whole shard into `location`/`name` (a Ray task's or a local worker's work; the
    same bytes as a build that joins chunks). `progress`: a shared counter (multiprocessing
    Value) that is advanced by the images of each chunk done."""
    store = open_store(location)

    def chunks() -> Iterator[Chunk]:
        for items in chunks_of(job.items, recipe):
            yield encode_chunk(items, recipe)
            if progress is not None:
                with progress.get_lock():
                    progress.value += len(items)

    return write_shard(store, name, chunks())


def _worker_init(counter: Any = None) -> None:
    # Forked workers inherit the parent's signal handlers: a Ray driver's SIGTERM handler would
    # run in a worker on pool.terminate() and tear down the connection the parent shares with
    # its raylet. Workers just die on SIGTERM and ignore Ctrl-C (the parent handles it).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _PROGRESS
    _PROGRESS = counter


def _ordered(pool: Any, tasks: Iterable[Any], window: int) -> Iterator[Chunk]:
    """Results of `_encode_task` over tasks, in order, with at most `window` tasks in flight (so
    memory stays bounded however far the workers could run ahead of the writer)."""
    if pool is None:
        yield from map(_encode_task, tasks)
        return
    it = iter(tasks)
    pending = collections.deque(pool.apply_async(_encode_task, (t,)) for t in itertools.islice(it, window))
    while pending:
        result = pending.popleft().get()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.apply_async(_encode_task, (nxt,)))
        yield result


# ----------------------------------------------------------------------------- a build

def _shard_record(job: ShardJob, rec: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    return {"name": job.name, "split": job.split, "count": rec["count"], "bytes": rec["bytes"],
            "sha256": rec["sha256"], "keys_sha256": job.keys_sha256,
            "inputs_sha256": inputs_sha256(rec["inputs_digests"], fingerprint), "skipped": rec["skipped"]}


@dataclass
class BuildResult:
    manifest: dict[str, Any]
    built: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)   # summed over all processes
    scan_seconds: float = 0.0                                        # scan + plan, in this process
    nodes: dict[str, int] = field(default_factory=dict)             # Ray builds: shards built per node


class ShardBuild:
    """One build of a shard set, from plan to manifest; `build_shards` drives it with local
    processes, facegan.launch.shards with Ray tasks.

        build = ShardBuild(recipe, root=root, out=out)   # checks everything, writes nothing
        with build.running():                            # cleans up if the body fails
            for job in build.todo:
                build.done(job, write_shard(build.store, build.staged_name(job.name), chunks))
            result = build.finish()
    """

    def __init__(self, recipe: ShardRecipe, *, root: str | Path | None, out: str | Path,
                 overwrite: bool = False) -> None:
        self.t0 = time.time()
        self.recipe, self.root, self.out = recipe, root, str(out)
        self.store = open_store(out)
        self.staging = self.store.readable
        self.fingerprint = recipe.fingerprint()
        self._check_out(overwrite=overwrite)
        t0 = time.perf_counter()
        self.scan = scan_source(recipe, root=root)
        self.jobs = plan_shards(recipe, self.scan.items)
        self.scan_seconds = time.perf_counter() - t0   # before any worker starts: serial
        if not self.jobs:
            raise DataError(f"no usable images in {root or 'the synthetic source'}: "
                            f"{len(self.scan.skipped)} inputs skipped")
        check_memory(worker_bytes(recipe) * max(1, recipe.num_workers), what=f"resolution {recipe.height}x{recipe.width}",
                     hint=f"{max(1, recipe.num_workers)} workers; use a smaller resolution or fewer --workers")
        self._preflight()
        self.records: dict[str, dict[str, Any]] = {}
        self.kept: list[str] = []
        self.todo: list[ShardJob] = []
        previous = self._previous_records()
        for job in self.jobs:
            rec = previous.get(job.name)
            if rec is not None and self._still_good(job, rec):
                self.records[job.name] = rec
                self.kept.append(job.name)
            else:
                self.todo.append(job)
        self.stage_seconds: dict[str, float] = {}
        self._created_out = False

    # -- checks before anything is written ---------------------------------------------------
    def _check_out(self, *, overwrite: bool) -> None:
        store, where = self.store, f"--out {self.out}"
        if isinstance(store, LocalStore):
            if store.root.exists() and not store.root.is_dir():
                raise DataError(f"{where}: is a file; expected a folder (new, empty, or an earlier shard set)")
            if not store.root.is_dir():
                return
            entries = sorted(p.name for p in store.root.iterdir() if p.name != LOCK_NAME)
        elif isinstance(store, FsspecStore):
            try:
                if store.fs.isfile(store.path):
                    raise DataError(f"{where}: is a file; expected a folder (new, empty, or an earlier shard set)")
                entries = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(store.path)) \
                    if store.fs.isdir(store.path) else []
            except OSError as exc:
                raise DataError(f"{where}: cannot list: {exc}") from None
        else:
            return
        ours = MANIFEST in entries or PARTIAL in entries
        if entries and not ours and not overwrite:
            raise DataError(f"{where}: folder is not empty and holds no shard set (no {MANIFEST}): "
                            f"{len(entries)} entries, e.g. {entries[0]!r}; choose a new folder or pass "
                            "--overwrite (its .tar files not in the new manifest are then removed)")

    def _preflight(self) -> None:
        """Read the headers of a few inputs: refuse a recipe that fits none of them (a crop larger
        than every image, a min_side above them all) before writing anything."""
        files = [it for it in self.scan.items if it.path is not None]
        if not files:
            return
        step = max(1, len(files) // PREFLIGHT_SAMPLES)
        sample = files[::step][:PREFLIGHT_SAMPLES]
        reasons: list[str] = []
        from PIL import Image

        r = self.recipe
        for item in sample:
            try:
                with Image.open(item.path) as img:  # type: ignore[arg-type]
                    w, h = img.size
            except Exception:  # noqa: BLE001  (unreadable files are the workers' business)
                return
            try:
                check_source_size(w, h, min_side=r.min_side, max_aspect=r.max_aspect)
                crop_box(w, h, r.crop_hw, r.height, r.width)
                return
            except ImageError as exc:
                reasons.append(f"{Path(item.path).name}: {exc}")  # type: ignore[arg-type]
        raise DataError(f"nothing would be built: the recipe fits none of the {len(sample)} inputs checked "
                        f"(of {len(files)}; crop {r.crop}, min_side {r.min_side}, max_aspect {r.max_aspect:g}), "
                        f"e.g. {reasons[0]}")

    # -- resume ---------------------------------------------------------------------------------
    def _previous_records(self) -> dict[str, dict[str, Any]]:
        """Shard records from an earlier (maybe interrupted) build into the same place."""
        if not self.staging:
            return {}
        records: dict[str, dict[str, Any]] = {}
        try:
            raw = self.store.read_bytes(MANIFEST)
            if raw:
                manifest = json.loads(raw)
                for rec in list(manifest.get("shards", [])) + list(manifest.get("empty_shards", [])):
                    records[rec["name"]] = dict(rec, staged=False)
            for name in self.store.listdir(PARTIAL):
                if name.endswith(".json") and not name.startswith("."):
                    rec = json.loads(self.store.read_bytes(f"{PARTIAL}/{name}") or b"{}")
                    records[rec["name"]] = dict(rec, staged=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return records  # an unreadable record means rebuilding, never trusting it
        return records

    def _still_good(self, job: ShardJob, rec: dict[str, Any]) -> bool:
        if rec.get("keys_sha256") != job.keys_sha256:
            return False
        if rec.get("inputs_sha256") != job_inputs_sha256(job, self.recipe, self.fingerprint):
            return False
        if rec.get("count") == 0:
            return True
        for staged in ((True, False) if rec.get("staged") else (False,)):
            name = f"{PARTIAL}/{job.name}" if staged else job.name
            if _sha256_of(self.store, name) == rec.get("sha256"):
                rec["staged"] = staged
                return True
        return False

    # -- running --------------------------------------------------------------------------------
    def staged_name(self, name: str) -> str:
        return f"{PARTIAL}/{name}" if self.staging else name

    def start(self) -> None:
        """Create the output folder (remembering whether this build made it)."""
        try:
            if isinstance(self.store, LocalStore):
                self._created_out = self._created_out or not self.store.root.exists()
                (self.store.root / PARTIAL).mkdir(parents=True, exist_ok=True)
                self.store.clean_temp()
        except OSError as exc:
            raise _write_error(self.store, PARTIAL, exc) from None

    def done(self, job: ShardJob, result: dict[str, Any]) -> None:
        """Record a finished shard (what a resumed build trusts)."""
        rec = _shard_record(job, result, self.fingerprint)
        for k, v in result.get("seconds", {}).items():
            self.stage_seconds[k] = self.stage_seconds.get(k, 0.0) + v
        if self.staging:
            try:
                self.store.write_bytes(f"{PARTIAL}/{job.name}.json", json.dumps(rec).encode())
            except OSError as exc:
                raise _write_error(self.store, f"{PARTIAL}/{job.name}.json", exc) from None
        self.records[job.name] = dict(rec, staged=self.staging)

    @contextlib.contextmanager
    def running(self) -> Iterator["ShardBuild"]:
        """Create the output folder and hold its lock (one build at a time per --out, see
        facegan.data.lock); on any failure (Ctrl-C included) clean up, then re-raise."""
        lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if isinstance(self.store, LocalStore):
            self._created_out = not self.store.root.exists()
            lock = hold_lock(self.store.root, what=f"--out {self.out}")
        with lock:
            self.start()
            try:
                yield self
            except BaseException:
                self.cleanup(failed=True)
                raise

    def cleanup(self, *, failed: bool) -> None:
        """After a failure: no temp files; finished shards stay in .partial/ for a rerun, and a
        folder this build created goes if nothing in it is worth resuming."""
        if not isinstance(self.store, LocalStore) or not self.store.root.is_dir():
            return
        self.store.clean_temp()
        partial = self.store.root / PARTIAL
        if partial.is_dir() and not any(partial.iterdir()):
            partial.rmdir()
        if failed and self._created_out and not [p for p in self.store.root.iterdir() if p.name != LOCK_NAME]:
            (self.store.root / LOCK_NAME).unlink(missing_ok=True)
            self.store.root.rmdir()

    def _discard_staged(self) -> None:
        for name in self.store.listdir(PARTIAL):
            self.store.remove(f"{PARTIAL}/{name}")
        if isinstance(self.store, LocalStore) and (self.store.root / PARTIAL).is_dir():
            (self.store.root / PARTIAL).rmdir()

    def finish(self) -> BuildResult:
        """Write the manifest and put the new set in place of any earlier one."""
        records = [self.records[j.name] for j in self.jobs]
        total = sum(r["count"] for r in records)
        if total == 0:
            skipped = list(self.scan.skipped) + [s for r in records for s in r["skipped"]]
            if self.staging:
                self._discard_staged()
            first = f"{skipped[0]['input']}: {skipped[0]['reason']}" if skipped else "n/a"
            raise DataError(f"no usable images in {self.root or 'the synthetic source'}: all "
                            f"{len(skipped)} inputs were skipped (first: {first})")
        manifest = make_manifest(self.recipe, self.scan, records, root=self.root)
        text = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
        store = self.store
        try:
            if not self.staging:
                store.write_bytes(MANIFEST, text)
            else:
                # The new manifest is complete on disk before any old shard is replaced: a full
                # disk or a crash up to here leaves the earlier set as it was.
                store.write_bytes(f"{PARTIAL}/{MANIFEST}", text)
                for rec in records:
                    if rec["count"] and rec.get("staged"):
                        store.rename(f"{PARTIAL}/{rec['name']}", rec["name"])
                store.rename(f"{PARTIAL}/{MANIFEST}", MANIFEST)
                listed = {r["name"] for r in records if r["count"]}
                for name in store.listdir():
                    if name.endswith(".tar") and name not in listed:
                        store.remove(name)   # the manifest is the truth: stale shards go
                self._discard_staged()
        except OSError as exc:
            raise _write_error(store, MANIFEST, exc) from None
        return BuildResult(manifest=manifest, built=[j.name for j in self.todo], kept=sorted(self.kept),
                           seconds=time.time() - self.t0, stage_seconds=dict(self.stage_seconds),
                           scan_seconds=self.scan_seconds)


def build_shards(recipe: ShardRecipe, *, root: str | Path | None, out: str | Path, progress: bool = True,
                 overwrite: bool = False, skipped: Iterable[dict[str, str]] = ()) -> BuildResult:
    """Scan the source, write shards with local worker processes, then manifest.json. Resumes.
    `skipped`: inputs a caller dropped before the scan ({"input", "reason"}), listed in the
    manifest with the build's own."""
    build = ShardBuild(recipe, root=root, out=out, overwrite=overwrite)
    build.scan.skipped = list(skipped) + list(build.scan.skipped)
    with build.running():
        _run_local(build, progress=progress)
        return build.finish()


def _pool_context() -> Any:
    """fork on Linux (fast start), except in a process connected to Ray: a forked child copies the
    driver's gRPC threads mid-flight, and after such a build a later Train run in the same driver
    waited forever for its controller. forkserver then (and spawn off Linux)."""
    if not sys.platform.startswith("linux"):
        return mp.get_context("spawn")
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return mp.get_context("forkserver")
    return mp.get_context("fork")


def _run_local(build: ShardBuild, *, progress: bool) -> None:
    """Build `build.todo` with local worker processes.

    With at least SHARDS_PER_WORKER shards per worker, each worker builds whole shards as a Ray
    task does (`build_one_shard`: encode, hash, write), biggest first so that no worker is left
    with a large shard at the end; this process only records them. With fewer shards (or an
    output only this process can see, such as memory://), workers encode chunks and this process
    joins them into shards in order, so that a set of one shard still keeps every worker busy.
    Both ways give the same bytes.
    """
    recipe = build.recipe
    total = sum(len(j.items) for j in build.todo)
    bar = make_progress(total=total, enabled=progress and total > 0)
    per_job = [chunks_of(job.items, recipe) for job in build.todo]
    workers = max(1, min(recipe.num_workers, sum(map(len, per_job))))
    whole = workers > 1 and len(build.todo) >= SHARDS_PER_WORKER * workers and build.store.shared
    context = _pool_context()
    counter = context.Value("q", 0) if whole else None
    order = sorted(build.todo, key=lambda j: -len(j.items)) if whole else []   # biggest first
    tasks = [(job, recipe, build.store.location, build.staged_name(job.name)) for job in order]
    # Forked workers find their tasks in memory (inherited) and are sent only an index: pickling
    # a shard's items costs both sides milliseconds per shard. Keyed per build, so that builds in
    # other threads, and a worker the pool forks later to replace a dead one, see the right list.
    token = next(_BUILD_TOKENS)
    by_index = context.get_start_method() == "fork"
    if by_index:
        _FORKED_TASKS[token] = tasks
    with _gc_frozen():
        pool = context.Pool(workers, initializer=_worker_init, initargs=(counter,)) if workers > 1 else None
        try:
            if whole:
                _run_whole_shards(build, pool, counter, bar, tasks, token=token if by_index else None)
            else:
                tasks = [(items, recipe) for chunks in per_job for items in chunks]
                # The ordered, bounded window keeps every worker busy while the tar stream stays
                # sequential and deterministic.
                results = _ordered(pool, tasks, window=2 * workers + 2)

                def take(num_chunks: int) -> Iterator[Chunk]:
                    for _ in range(num_chunks):
                        chunk = next(results)
                        bar.update(chunk.count + len(chunk.skipped))
                        yield chunk

                for job, chunks in zip(build.todo, per_job):
                    build.done(job, write_shard(build.store, build.staged_name(job.name), take(len(chunks))))
            if pool:
                pool.close()  # a normal exit: the workers finish on their own
        finally:
            _FORKED_TASKS.pop(token, None)
            if pool:
                pool.terminate()
                pool.join()
            bar.close()


def _run_whole_shards(build: ShardBuild, pool: Any, counter: Any, bar: Any,
                      tasks: list[tuple[ShardJob, ShardRecipe, str, str]], *, token: int | None) -> None:
    """Workers build `tasks` (whole shards); `token`: forked workers have them in _FORKED_TASKS."""
    order = [task[0] for task in tasks]
    results = pool.imap_unordered(_shard_task, [(i, (token, i) if token is not None else task)
                                                for i, task in enumerate(tasks)])
    shown = 0
    pending = len(tasks)
    while pending:
        try:
            index, result = results.next(timeout=0.25)
        except mp.TimeoutError:
            pass
        else:
            pending -= 1
            build.done(order[index], result)
        value = counter.value
        bar.update(value - shown)
        shown = value


_PROGRESS: Any = None   # in a local build's worker: images done, shared with the parent
_ShardTask = tuple[ShardJob, ShardRecipe, str, str]   # job, recipe, output location, file name
_FORKED_TASKS: dict[int, list[_ShardTask]] = {}       # per build: what forked workers inherit
_BUILD_TOKENS = itertools.count()


def _shard_task(arg: tuple[int, _ShardTask | tuple[int, int]]) -> tuple[int, dict[str, Any]]:
    """Build shard task `index`: given, or as (build token, index) inherited in _FORKED_TASKS."""
    index, task = arg
    if len(task) == 2:
        token, i = task   # type: ignore[misc]
        task = _FORKED_TASKS[token][i]
    job, recipe, location, name = task   # type: ignore[misc]
    return index, build_one_shard(job, recipe, location, name, progress=_PROGRESS)


def _sha256_of(store: Store, name: str) -> str | None:
    try:
        if not store.readable or not store.exists(name):
            return None
        h = hashlib.sha256()
        with store.open_read(name) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def make_manifest(recipe: ShardRecipe, scan: SourceScan, records: list[dict[str, Any]], *,
                  root: str | Path | None) -> dict[str, Any]:
    skipped = list(scan.skipped)
    for rec in records:
        skipped.extend(rec.get("skipped", []))
    counts = {split: 0 for split in SPLITS}
    shards_per_split = {split: 0 for split in SPLITS}
    for rec in records:
        if rec["count"]:
            counts[rec["split"]] += rec["count"]
            shards_per_split[rec["split"]] += 1
    partial = sorted(it.key for it in scan.items if it.labels.get("partial_name"))
    fields = ("name", "split", "count", "bytes", "sha256", "keys_sha256", "inputs_sha256", "skipped")
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
        "shards": [{k: rec[k] for k in fields} for rec in records if rec["count"]],
        # Shards whose every input was skipped: no file, but remembered so a rerun need not retry them.
        "empty_shards": [{k: rec[k] for k in fields if k not in ("bytes", "sha256")}
                         for rec in records if not rec["count"]],
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


def make_progress(*, total: int, enabled: bool) -> Any:
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="building shards", file=sys.stderr, smoothing=0.1)


# ----------------------------------------------------------------------------- reading back

def load_manifest(location: str | Path) -> dict[str, Any]:
    store = open_store(location)
    if not store.readable:
        raise DataError(f"{location}: cannot read a manifest from a pipe: destination")
    try:
        raw = store.read_bytes(MANIFEST)
    except OSError as exc:
        raise DataError(f"{store.url(MANIFEST)}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001  (remote filesystems raise their own: no credentials, ...)
        if not isinstance(store, FsspecStore):
            raise
        raise DataError(f"{store.url(MANIFEST)}: cannot read: {type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]}") from None
    if raw is None:
        raise DataError(f"{location}: no {MANIFEST} (is this a shard set built by `facegan shards build`? "
                        f"WebDataset tars written by another tool: `facegan shards import {location}`)")
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{store.url(MANIFEST)}: not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{store.url(MANIFEST)}: expected a JSON object")
    for key in ("shards", "resolution", "image_ext", "attr_names"):
        if key not in manifest:
            raise DataError(f"{store.url(MANIFEST)}: missing field {key!r}")
    return manifest


def check_sample(sample: dict[str, Any], *, ext: str, height: int, width: int, strict: bool = True,
                 read_labels: LabelReader | None = None) -> dict[str, Any]:
    """Validate one sample (checksums, then a full decode); returns its labels. Raises
    ImageError/ValueError naming the sample and the problem. `read_labels` (`labels_reader` of
    the set's manifest) replaces the built-set checks given by `strict`."""
    try:
        if read_labels is None:
            labels = sample_labels(sample, ext=ext, strict=strict)
        else:
            got = read_labels([sample])[0]
            if isinstance(got, ValueError):
                raise got
            labels = got
        decode_chw(sample[ext], ext=ext, height=height, width=width)
    except ValueError as exc:   # JSONDecodeError and UnicodeDecodeError included
        raise (ImageError if isinstance(exc, ImageError) else ValueError)(
            f"sample {sample.get('__key__')}: {exc}") from None
    return labels


class HashingReader(io.RawIOBase):
    """Read-through wrapper that hashes and counts what is read (verify streams shards once)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        data = self.f.read(n)
        self.sha.update(data)
        self.nbytes += len(data)
        return data

    def drain(self) -> None:
        for _ in iter(lambda: self.read(1 << 20), b""):
            pass


def unlisted_tars(store: Store, manifest: dict[str, Any]) -> list[str]:
    imported = manifest.get("imported")
    if isinstance(imported, dict) and imported.get("scope") != "folder":
        return []   # an import of chosen files: the folder's other tars are none of its business
    listed = {rec["name"] for rec in manifest["shards"]}
    listed.update(s.get("name") for s in manifest.get("skipped_shards", []) if isinstance(s, dict))
    try:
        return [n for n in store.listdir() if n.endswith(".tar") and n not in listed]
    except OSError:
        return []


def verify_shards(location: str | Path, *, progress: bool = False) -> list[str]:
    """Check every shard's size and sha256 and decode every sample; returns the problems found.

    Shards are streamed (hashed while parsed), never loaded whole. A .tar file beside the set
    that the manifest does not list is a problem too: it is not part of the set.
    """
    manifest = load_manifest(location)
    store = open_store(shard_location(location, manifest))
    height, width = manifest["resolution"]
    ext = manifest["image_ext"]
    read_labels = labels_reader(manifest)
    problems: list[str] = []
    for rec in manifest["shards"]:
        name = rec["name"]
        known = known_skipped(rec)
        if not store.exists(name):
            problems.append(f"{name}: missing")
            continue
        count = 0
        try:
            with store.open_read(name) as f:
                reader = HashingReader(f)
                try:
                    for sample in iter_samples(reader):
                        if sample.get("__key__") in known:
                            continue
                        try:
                            check_sample(sample, ext=ext, height=height, width=width, read_labels=read_labels)
                            count += 1
                        except (ImageError, ValueError) as exc:
                            problems.append(f"{name}: {exc}")
                except TarFormatError as exc:
                    problems.append(f"{name}: unreadable tar after {count} samples: {exc}")
                reader.drain()
        except OSError as exc:
            problems.append(f"{name}: cannot read: {exc.strerror or exc}")
            continue
        if reader.nbytes != rec["bytes"]:
            problems.append(f"{name}: {reader.nbytes} bytes, manifest says {rec['bytes']}")
        if reader.sha.hexdigest() != rec["sha256"]:
            problems.append(f"{name}: sha256 mismatch (file changed or corrupt)")
        if count != rec["count"]:
            problems.append(f"{name}: {count} good samples, manifest says {rec['count']}")
    for name in unlisted_tars(store, manifest):
        problems.append(f"{name}: not listed in {MANIFEST} (left from another build? not part of this set)")
    return problems


def inspect_shards(location: str | Path, *, preview: str | Path | None = None, num_preview: int = 64
                   ) -> dict[str, Any]:
    """Counts, attribute frequencies (from the stored labels) and an optional preview grid PNG.

    Frequencies are over the samples actually read and checked (crc32 of image and labels);
    `problems` lists every missing or truncated shard and every damaged sample, so a report of a
    damaged set says so instead of quietly counting less.
    """
    manifest = load_manifest(location)
    store = open_store(shard_location(location, manifest))
    height, width = manifest["resolution"]
    ext = manifest["image_ext"]
    attr_names = manifest["attr_names"]
    read_labels = labels_reader(manifest)
    sums = np.zeros(len(attr_names), dtype=np.int64)
    n_attr = 0
    n_read = 0
    other: dict[str, dict[str, int]] = {}
    images: list[np.ndarray] = []
    problems: list[str] = []
    for rec in manifest["shards"]:
        name = rec["name"]
        known = known_skipped(rec)
        good = 0
        try:
            with store.open_read(name) as f:
                for sample in iter_samples(f):
                    if sample.get("__key__") in known:
                        continue
                    labels = read_labels([sample])[0]
                    if isinstance(labels, ValueError):
                        problems.append(f"{name}: sample {sample.get('__key__')}: {labels}")
                        continue
                    good += 1
                    attrs = labels.get("attrs")
                    if isinstance(attrs, list) and len(attrs) == len(attr_names):
                        sums += np.asarray(attrs, dtype=np.float64) > 0
                        n_attr += 1
                    for k in ("gender", "race"):
                        if k in labels:
                            bucket = other.setdefault(k, {})
                            bucket[str(labels[k])] = bucket.get(str(labels[k]), 0) + 1
                    if preview and len(images) < num_preview and rec["split"] == "train":
                        try:
                            images.append(decode_chw(sample[ext], ext=ext, height=height, width=width).numpy())
                        except ImageError as exc:
                            problems.append(f"{name}: sample {sample.get('__key__')}: {exc}")
        except FileNotFoundError:
            problems.append(f"{name}: missing")
        except TarFormatError as exc:
            problems.append(f"{name}: truncated or corrupt after {good} of {rec['count']} samples ({exc})")
        except OSError as exc:
            problems.append(f"{name}: cannot read: {exc.strerror or exc}")
        n_read += good
    freqs = {name: float(s) / n_attr for name, s in zip(attr_names, sums)} if n_attr else {}
    report = {"counts": manifest["counts"], "resolution": manifest["resolution"],
              "num_skipped": manifest["num_skipped"], "rows_without_image": manifest["rows_without_image"],
              "samples_read": n_read, "attr_frequencies": freqs, "label_histograms": other,
              "problems": problems}
    if preview and images:
        save_grid(np.stack(images), preview)
        report["preview"] = str(preview)
    return report


__all__ = ["BuildResult", "ShardBuild", "ShardJob", "build_shards", "build_one_shard", "check_sample",
           "encode_chunk", "HashingReader", "inspect_shards", "labels_reader", "load_manifest", "make_manifest", "parse_labels", "plan_shards", "sample_labels", "samples_labels",
           "save_grid", "scan_source", "shard_location", "verify_shards", "write_shard", "human", "PipeStore"]
