"""Adopt WebDataset tars another tool wrote (webdataset's ShardWriter, img2dataset, tar itself)
as a facegan shard set, without touching a byte of them: `facegan shards import`.

    facegan shards import /data/wds/                          # every .tar/.tar.gz/.tgz in the folder
    facegan shards import 's3://bucket/faces/shard-{000000..000031}.tar' --out /data/faces-manifest
    facegan shards import /data/celeba-wds --attrs Smiling,Male --cls-as identity --val 'shard-0000[0-1]*'

What it writes is only a manifest.json (facegan.data.writer's layout) beside the tars, or in --out
when the shards' folder is read-only or shared; then `verify`, `stream`, `inspect` and `train`
read the set as a built one. Per shard: its sample count, bytes and sha256 (of the file as it is;
a .tar.gz is decompressed in the stream, never on disk). The image extension (jpg, jpeg or png)
and the resolution are what the samples hold: every image is decoded once here, and a set of
mixed sizes is refused (a facegan set has one resolution: rebuild it with `shards build`).

Labels come from each sample's `.json` (`--attrs` names the keys that become attributes, and
integer identity/partition/age/gender/race keys pass through), `.cls` or an integer `.txt`
(`--cls-as` names the field). Splits: a shard named train-/val-/test-... is that split, `--val` and
`--test` globs move others, the rest is `--split` (default train).

Bad input loses only itself and is counted in the manifest: a file that is not a tar, a shard cut
short (a crash while it was written) and a gzip stream that does not decompress are left out whole
(`skipped_shards`); a sample without a key, without an image or labels it can use, or whose image
does not decode stays in its tar, listed in its shard's `skipped` and passed over by every reader.
Nothing is written unless at least one sample is usable, and the manifest appears in one step.
"""

from __future__ import annotations

import fnmatch
import io
import json
import logging
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import simplejpeg
from braceexpand import braceexpand
from PIL import Image, UnidentifiedImageError

from facegan.data.foreign import IMAGE_EXTS, LABEL_FIELDS, foreign_sample_labels
from facegan.data.imageio import ImageError, decode_hwc
from facegan.data.records import SPLITS, DataError
from facegan.data.store import Store, open_store
from facegan.data.tario import TarFormatError, iter_samples
from facegan.data.writer import FORMAT_VERSION, MANIFEST, HashingReader, make_progress

log = logging.getLogger(__name__)

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_SHARDS = 100_000          # a brace pattern that expands past this is a typo, not a data set
_NAMED_SPLIT = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class ImportOptions:
    """How sample fields map onto facegan labels and shards onto splits (see the module docstring)."""

    attrs: tuple[str, ...] = ()
    cls_as: str | None = "identity"
    split: str = "train"
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise DataError(f"--split: expected one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.cls_as is not None and self.cls_as not in LABEL_FIELDS:
            raise DataError(f"--cls-as: expected one of {', '.join(LABEL_FIELDS)} or none, got {self.cls_as!r}")
        bad = [a for a in self.attrs if not a or "," in a]
        if bad or len(set(self.attrs)) != len(self.attrs):
            raise DataError(f"--attrs: expected distinct comma-separated .json keys, got {','.join(self.attrs)!r}")


def _is_shard(name: str) -> bool:
    return name.endswith(SHARD_SUFFIXES)


def _expand(source: str) -> tuple[str, list[str], bool]:
    """(folder, shard file names in it, whether that is the whole folder) of one DIR|URL|pattern."""
    if "{" in source:
        names = []
        for i, url in enumerate(braceexpand(source)):
            if i >= MAX_SHARDS:
                raise DataError(f"{source}: the pattern expands to more than {MAX_SHARDS} files")
            names.append(url)
        folders = {posixpath.dirname(u) for u in names}
        if len(folders) != 1 or "{" in next(iter(folders)):
            raise DataError(f"{source}: a brace pattern may vary the file name only, not the folder")
        return folders.pop(), [posixpath.basename(u) for u in names], False
    store = open_store(source)
    if not store.readable:
        raise DataError(f"{source}: cannot import from a pipe: source; give a folder, URL or brace pattern")
    try:
        entries = store.listdir()
    except OSError as exc:
        raise DataError(f"{source}: cannot list: {exc.strerror or exc}") from None
    if entries:
        shards = [n for n in entries if _is_shard(n)]
        if not shards:
            raise DataError(f"{source}: no .tar, .tar.gz or .tgz files in this folder")
        return source.rstrip("/"), shards, True
    folder, name = posixpath.split(source.rstrip("/"))
    if not _is_shard(name) or not open_store(folder or ".").exists(name):
        raise DataError(f"{source}: not a folder with shards, a shard file (.tar, .tar.gz, .tgz) or a brace pattern")
    return folder or ".", [name], False


def _split_of(name: str, opts: ImportOptions) -> str:
    for split, patterns in (("val", opts.val), ("test", opts.test)):
        if any(fnmatch.fnmatch(name, p) for p in patterns):
            return split
    return _NAMED_SPLIT.get(re.split(r"[-_.]", name, maxsplit=1)[0].lower(), opts.split)


def _image_ext(sample: dict[str, Any]) -> str | None:
    for ext in IMAGE_EXTS:
        if sample.get(ext) is not None:
            return ext
    return None


def _shape(data: bytes, ext: str) -> tuple[int, int]:
    """(height, width) of an image, the image fully decoded (ImageError if it does not)."""
    try:
        if ext in ("jpg", "jpeg"):
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        else:
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except (ValueError, OSError, UnidentifiedImageError) as exc:
        raise ImageError(f"cannot decode {ext}: {exc}") from None
    decode_hwc(data, ext=ext, height=h, width=w)
    return h, w


class _Scan:
    """What the shards hold, gathered shard by shard."""

    def __init__(self, opts: ImportOptions) -> None:
        self.opts = opts
        self.ext: str | None = None
        self.sizes: dict[tuple[int, int], int] = {}
        self.fields: set[str] = set()
        self.records: list[dict[str, Any]] = []
        self.skipped_shards: list[dict[str, Any]] = []

    def spec(self) -> dict[str, Any]:
        return {"attrs": list(self.opts.attrs), "cls_as": self.opts.cls_as, "fields": sorted(self.fields)}

    def sample(self, sample: dict[str, Any]) -> str | None:
        """None for a usable sample, else why not."""
        ext = self.ext or _image_ext(sample)
        if ext is None:
            return f"no image (.{', .'.join(IMAGE_EXTS)}) among {', '.join(k for k in sample if k != '__key__') or 'nothing'}"
        try:
            labels = foreign_sample_labels(sample, ext=ext, spec={**self.spec(), "fields": LABEL_FIELDS})
            size = _shape(sample[ext], ext)
        except ValueError as exc:
            return str(exc)
        self.ext = ext
        self.sizes[size] = self.sizes.get(size, 0) + 1
        self.fields.update(k for k in labels if k in LABEL_FIELDS)
        return None

    def shard(self, store: Store, name: str, bar: Any) -> None:
        count, skipped = 0, []
        try:
            with store.open_read(name) as f:
                reader = HashingReader(f)
                for sample in iter_samples(reader):
                    why = self.sample(sample)
                    if why is None:
                        count += 1
                    else:
                        skipped.append({"input": f"{name}/{sample.get('__key__')}", "key": sample.get("__key__"),
                                        "reason": why})
                    bar.update(1)
                reader.drain()
        except TarFormatError as exc:
            what = "not a tar" if count == 0 and not skipped else "cut short or damaged"
            self.skipped_shards.append({"name": name, "reason": f"{what}: {exc}", "samples_read": count})
            log.warning("import: leaving out %s: %s: %s", name, what, exc)
            return
        except OSError as exc:
            raise DataError(f"{store.url(name)}: cannot read: {exc.strerror or exc}") from None
        self.records.append({"name": name, "count": count, "bytes": reader.nbytes,
                             "sha256": reader.sha.hexdigest(), "skipped": skipped})


def import_shards(sources: list[str], *, out: str | None = None, opts: ImportOptions = ImportOptions(),
                  progress: bool = False) -> dict[str, Any]:
    """Scan the tars of `sources` (folders, URLs or brace patterns in one folder) and write their
    manifest beside them, or in `out`; returns the manifest."""
    if not sources:
        raise DataError("shards import: give at least one folder, shard URL or brace pattern")
    folder, names, whole = None, [], True
    for source in sources:
        where, found, all_of_it = _expand(source)
        if folder is not None and where != folder:
            raise DataError(f"{source}: every source must be in one folder ({folder}); import each folder on its own")
        folder, whole = where, whole and all_of_it and len(sources) == 1
        names.extend(n for n in found if n not in names)
    assert folder is not None
    src = open_store(folder)
    dest = open_store(out) if out else src
    if out and not dest.readable:
        raise DataError(f"--out {out}: a manifest cannot go to a pipe: destination")
    _check_dest(dest, out)
    scan = _Scan(opts)
    bar = make_progress(total=0, enabled=progress)
    try:
        for name in sorted(names):
            if not src.exists(name):
                raise DataError(f"{src.url(name)}: no such file")
            scan.shard(src, name, bar)
    finally:
        bar.close()
    manifest = _manifest(scan, folder=folder, out=out, whole=whole, sources=sources)
    text = json.dumps(manifest, indent=1).encode()
    try:
        dest.write_bytes(MANIFEST, text)
    except OSError as exc:
        hint = "" if out else "; pass --out DIR to write the manifest elsewhere"
        raise DataError(f"{dest.url(MANIFEST)}: cannot write: {exc.strerror or exc}{hint}") from None
    return manifest


def _check_dest(dest: Store, out: str | None) -> None:
    """Refuse to replace the manifest of a set `shards build` wrote (an earlier import's is fine)."""
    try:
        raw = dest.read_bytes(MANIFEST)
    except OSError:
        raw = None
    if raw is None:
        return
    try:
        previous = json.loads(raw)
    except ValueError:
        previous = None
    if not (isinstance(previous, dict) and "imported" in previous):
        raise DataError(f"{dest.url(MANIFEST)}: already holds a shard set's manifest that `shards import` did "
                        f"not write; {'choose another --out' if out else 'pass --out DIR for the imported one'}")


def _manifest(scan: _Scan, *, folder: str, out: str | None, whole: bool, sources: list[str]) -> dict[str, Any]:
    total = sum(r["count"] for r in scan.records)
    if total == 0:
        first = (scan.skipped_shards[0]["name"] + ": " + scan.skipped_shards[0]["reason"] if scan.skipped_shards
                 else next((s["input"] + ": " + s["reason"] for r in scan.records for s in r["skipped"]), "no samples"))
        raise DataError(f"{folder}: no usable sample in {len(scan.records) + len(scan.skipped_shards)} shard(s) "
                        f"(first problem: {first}); nothing written")
    if len(scan.sizes) > 1:
        sizes = ", ".join(f"{h}x{w} ({n})" for (h, w), n in sorted(scan.sizes.items(), key=lambda kv: -kv[1]))
        raise DataError(f"{folder}: images of several sizes ({sizes}); a facegan set has one resolution: "
                        "rebuild it with `facegan shards build --source folder`; nothing written")
    (height, width), = scan.sizes
    for rec in scan.records:
        rec["split"] = _split_of(rec["name"], scan.opts)
    counts = {s: sum(r["count"] for r in scan.records if r["split"] == s) for s in SPLITS}
    skipped = [s for r in scan.records for s in r["skipped"]]
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source": "import",
        "imported": {"sources": list(sources), "scope": "folder" if whole else "list", "labels": scan.spec()},
        "root": None,
        "recipe": {},
        "resolution": [height, width],
        "image_ext": scan.ext,
        "attr_names": list(scan.opts.attrs),
        "label_fields": sorted(scan.fields),
        "counts": dict(counts, total=total),
        "shards_per_split": {s: sum(1 for r in scan.records if r["split"] == s and r["count"]) for s in SPLITS},
        "shards": [{k: r[k] for k in ("name", "split", "count", "bytes", "sha256", "skipped")}
                   for r in scan.records if r["count"]],
        "empty_shards": [{"name": r["name"], "split": r["split"], "skipped": r["skipped"]}
                         for r in scan.records if not r["count"]],
        "skipped_shards": scan.skipped_shards,
        "num_skipped": len(skipped),
        "skipped": skipped,
        "rows_without_image": 0,
        "num_partial_labels": 0,
        "partial_labels": [],
    }
    if out and not _same(out, folder):
        manifest["shard_location"] = _absolute(folder)
    return manifest


def _absolute(location: str) -> str:
    return location if "://" in location else str(Path(location).expanduser().resolve())


def _same(a: str, b: str) -> bool:
    return _absolute(a).rstrip("/") == _absolute(b).rstrip("/")


__all__ = ["ImportOptions", "import_shards"]
